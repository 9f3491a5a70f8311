"""WorkerClient retries and migrations, against a scripted request plane and an embedded router."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.errors import (
    NoRespondersError,
    RemoteError,
    RequestError,
    RequestTimeoutError,
    WorkerDiedError,
)
from dynamo_cli.frontend.client import WorkerClient, WorkerFailure
from dynamo_cli.kv.hashing import sequence_block_hashes
from dynamo_cli.routing.policies import NoWorkersError
from dynamo_cli.transport import protocol
from dynamo_cli.transport.messaging import Endpoint, Handler, RequestPlane
from dynamo_cli.transport.response_stream import ResponseStream
from dynamo_cli.transport.wire import EngineOutput, EngineRequest, SamplingOptions
from dynamo_cli.transport.workers import InstanceSet

MODEL = "tiny"
WORKER_IDS = [0xA, 0xB, 0xC, 0xD, 0xE]
PROMPT = [10, 11, 12, 13, 14]

# A script item that ends the stream without an error (the worker closed it).
END = object()


class FakeStream(ResponseStream):
    """A response stream fed from a script; once the script is used up it waits for ``fail()``."""

    def __init__(self, script: list[Any], waiting: asyncio.Event):
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        for item in script:
            self.queue.put_nowait(item)
        self.waiting = waiting  # set while the reader waits on an empty script
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            if self.queue.empty():
                self.waiting.set()
            item = await self.queue.get()
            self.waiting.clear()
            if item is END:
                return
            if isinstance(item, BaseException):
                raise item
            yield protocol.encode_output(item)

    async def cancel(self) -> None:
        self.cancelled = True

    def fail(self, exc: BaseException) -> None:
        self.queue.put_nowait(exc)


@dataclass
class Sent:
    subject: str
    request: EngineRequest
    stream: FakeStream


class FakePlane(RequestPlane):
    """Answers the n-th request with the n-th script; records what was sent and published."""

    def __init__(self, scripts: list[list[Any]]):
        self.scripts = list(scripts)
        self.sent: list[Sent] = []
        self.published: list[tuple[str, Any]] = []
        self.waiting = asyncio.Event()  # a reader waits on a stream whose script is used up

    async def request(
        self, subject: str, payload: bytes, *, accept_timeout: float, idle_timeout: float
    ) -> ResponseStream:
        assert self.scripts, f"unexpected request {len(self.sent) + 1} to {subject}"
        stream = FakeStream(self.scripts.pop(0), self.waiting)
        self.sent.append(Sent(subject, protocol.decode_generate(payload), stream))
        return stream

    async def publish(self, subject: str, payload: bytes) -> None:
        self.published.append((subject, msgpack.unpackb(payload)))

    async def serve(self, subject: str, handler: Handler) -> Endpoint:
        raise NotImplementedError

    async def subscribe(
        self, subject: str, callback: Callable[[bytes], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        raise NotImplementedError

    async def close(self) -> None:
        pass


@dataclass
class Routed:
    n_tokens: int
    hashes: list[int]
    avoid: list[int]
    routing_id: str


@dataclass
class FakeService:
    """The embedded router: the first worker not avoided, in WORKER_IDS order."""

    calls: list[Routed] = field(default_factory=list)

    def route(
        self, model: str, n_tokens: int, hashes: list[int], avoid: list[int], routing_id: str
    ) -> tuple[int, str, int]:
        assert model == MODEL
        self.calls.append(Routed(n_tokens, list(hashes), list(avoid), routing_id))
        for iid in WORKER_IDS:
            if iid not in avoid:
                return iid, subject(iid), 0
        raise NoWorkersError("no worker is available")


def subject(iid: int) -> str:
    return f"worker.{iid:x}"


@dataclass
class Harness:
    client: WorkerClient
    plane: FakePlane
    service: FakeService
    workers: InstanceSet
    retries: list[None] = field(default_factory=list)
    migrations: list[str] = field(default_factory=list)
    migrated: list[str] = field(default_factory=list)


def harness(scripts: list[list[Any]], config: dict[str, Any] | None = None, **frontend: Any) -> Harness:
    cfg = DynamoConfig.model_validate({**(config or {}), "frontend": frontend})
    plane, service, workers = FakePlane(scripts), FakeService(), InstanceSet()
    client = WorkerClient(plane, cfg, workers, service=service)  # type: ignore[arg-type]
    h = Harness(client, plane, service, workers)
    client.on_retry = lambda: h.retries.append(None)
    client.on_migration = h.migrations.append
    client.on_migrated = h.migrated.append
    return h


def make_request(max_tokens: int = 8, **sampling: Any) -> EngineRequest:
    return EngineRequest("req-1", list(PROMPT), SamplingOptions(max_tokens=max_tokens, **sampling))


async def collect(client: WorkerClient, request: EngineRequest) -> list[EngineOutput]:
    async def run() -> list[EngineOutput]:
        return [out async for out in client.generate(MODEL, request)]

    return await asyncio.wait_for(run(), 5)


async def collect_until_error(
    client: WorkerClient, request: EngineRequest, error: type[BaseException]
) -> tuple[list[EngineOutput], BaseException]:
    """The outputs seen before ``generate`` raised ``error``, and the error."""
    outs: list[EngineOutput] = []

    async def run() -> None:
        async for out in client.generate(MODEL, request):
            outs.append(out)

    with pytest.raises(error) as info:
        await asyncio.wait_for(run(), 5)
    return outs, info.value


def tokens(outs: list[EngineOutput]) -> list[int]:
    return [t for out in outs for t in out.token_ids]


# ---- migration after tokens -------------------------------------------------------------------------


async def test_idle_timeout_mid_stream_migrates_with_the_tokens_so_far() -> None:
    h = harness(
        [
            [
                EngineOutput([1, 2], cached_tokens=4),
                EngineOutput([3]),
                RequestTimeoutError("the instance went silent for 5 s"),
            ],
            [EngineOutput([4, 5], cached_tokens=7), EngineOutput([6, 7, 8], finish_reason="length")],
        ]
    )
    request = make_request(
        8, min_tokens=5, temperature=0.5, top_p=0.9, seed=7, stop_token_ids=[99], prompt_logprobs=1
    )
    outs = await collect(h.client, request)

    assert tokens(outs) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [o.finish_reason for o in outs] == [None, None, None, "length"]
    # Only the first worker's cache hits stand.
    assert [o.cached_tokens for o in outs] == [4, None, None, None]

    first, second = h.plane.sent
    assert first.subject == subject(0xA) and second.subject == subject(0xB)
    assert first.request == request
    moved = second.request
    assert moved.request_id == "req-1-m1"
    assert moved.prompt_token_ids == [*PROMPT, 1, 2, 3]
    assert moved.sampling.max_tokens == 5
    assert moved.sampling.min_tokens == 2
    assert moved.sampling.prompt_logprobs is None
    s = moved.sampling
    assert (s.temperature, s.top_p, s.seed, s.stop_token_ids) == (0.5, 0.9, 7, [99])

    # The silent worker is avoided by the next routing and suspected until discovery confirms it.
    assert [set(c.avoid) for c in h.service.calls] == [set(), {0xA}]
    assert h.service.calls[1].n_tokens == len(PROMPT) + 3
    assert 0xA in h.workers.suspected()
    assert h.migrations == ["idle_timeout"]
    assert h.migrated == ["finished"]
    assert h.retries == []
    assert not first.stream.cancelled and not second.stream.cancelled


async def test_migrated_outputs_drop_the_second_workers_prompt_logprobs() -> None:
    h = harness(
        [
            [EngineOutput([1], prompt_logprobs=[None, (-0.5, [11], [-0.5])]), NoRespondersError("gone")],
            [EngineOutput([2], finish_reason="stop", cached_tokens=3, prompt_logprobs=[None])],
        ]
    )
    outs = await collect(h.client, make_request(4, prompt_logprobs=1))
    assert outs[0].prompt_logprobs == [None, [-0.5, [11], [-0.5]]]
    assert outs[1].prompt_logprobs is None and outs[1].cached_tokens is None
    assert tokens(outs) == [1, 2]
    assert h.migrations == ["no_responders"]
    assert 0xA in h.workers.suspected()


@pytest.mark.parametrize(
    ("failure", "reason", "suspected"),
    [
        (NoRespondersError("nobody listens"), "no_responders", True),
        (RequestTimeoutError("silent"), "idle_timeout", True),
        (WorkerDiedError("worker a died"), "worker_died", True),
        (RemoteError("draining", "unavailable"), "unavailable", False),
        (RemoteError("lease gone", "lease_lost"), "lease_lost", False),
        (END, "stream_ended", False),
    ],
    ids=["no_responders", "idle_timeout", "worker_died", "unavailable", "lease_lost", "stream_ended"],
)
async def test_each_movable_failure_migrates_with_its_reason(
    failure: Any, reason: str, suspected: bool
) -> None:
    h = harness([[EngineOutput([1, 2]), failure], [EngineOutput([3], finish_reason="stop")]])
    outs = await collect(h.client, make_request(6))
    assert tokens(outs) == [1, 2, 3]
    assert outs[-1].finish_reason == "stop"
    assert h.migrations == [reason]
    assert h.migrated == ["finished"]
    assert set(h.service.calls[1].avoid) == {0xA}
    assert (0xA in h.workers.suspected()) is suspected
    assert h.plane.sent[1].request.prompt_token_ids == [*PROMPT, 1, 2]


async def test_abort_with_tokens_passes_them_on_then_migrates() -> None:
    h = harness(
        [
            [EngineOutput([1]), EngineOutput([2, 3], finish_reason="abort")],
            [EngineOutput([4], finish_reason="stop")],
        ]
    )
    outs = await collect(h.client, make_request(8, min_tokens=2))
    assert [(o.token_ids, o.finish_reason) for o in outs] == [([1], None), ([2, 3], None), ([4], "stop")]
    moved = h.plane.sent[1].request
    assert moved.request_id == "req-1-m1"
    assert moved.prompt_token_ids == [*PROMPT, 1, 2, 3]
    assert (moved.sampling.max_tokens, moved.sampling.min_tokens) == (5, 0)
    assert h.migrations == ["aborted"]
    assert h.migrated == ["finished"]
    # A draining worker is avoided but not suspected: it is alive.
    assert set(h.service.calls[1].avoid) == {0xA}
    assert 0xA not in h.workers.suspected()
    assert not h.plane.sent[0].stream.cancelled


async def test_second_migration_counts_every_token_and_numbers_the_request() -> None:
    h = harness(
        [
            [EngineOutput([1, 2]), RequestTimeoutError("silent")],
            [EngineOutput([3]), NoRespondersError("gone")],
            [EngineOutput([4, 5], finish_reason="length")],
        ]
    )
    outs = await collect(h.client, make_request(5, min_tokens=4))
    assert tokens(outs) == [1, 2, 3, 4, 5]
    second, third = h.plane.sent[1].request, h.plane.sent[2].request
    assert (second.request_id, third.request_id) == ("req-1-m1", "req-1-m2")
    assert third.prompt_token_ids == [*PROMPT, 1, 2, 3]
    assert (third.sampling.max_tokens, third.sampling.min_tokens) == (2, 1)
    assert [set(c.avoid) for c in h.service.calls] == [set(), {0xA}, {0xA, 0xB}]
    assert h.migrations == ["idle_timeout", "no_responders"]
    assert h.migrated == ["finished"]


async def test_kv_mode_routes_the_continuation_by_its_own_prefix_and_closes_each_attempt() -> None:
    h = harness(
        [[EngineOutput([1, 2, 3]), RequestTimeoutError("silent")], [EngineOutput([4], finish_reason="stop")]],
        config={"router": {"mode": "kv"}, "mocker": {"block_size": 4}},
    )
    outs = await collect(h.client, make_request(6))
    assert tokens(outs) == [1, 2, 3, 4]
    first, second = h.service.calls
    assert first.hashes == sequence_block_hashes(PROMPT, 4)
    assert second.hashes == sequence_block_hashes([*PROMPT, 1, 2, 3], 4)
    assert (first.routing_id, second.routing_id) == ("req-1", "req-1#1")
    lifecycle = protocol.lifecycle_subject(h.client.cfg.namespace)
    assert h.plane.published == [
        (lifecycle, ["req-1", protocol.FIRST_TOKEN]),
        (lifecycle, ["req-1", protocol.COMPLETE]),
        (lifecycle, ["req-1#1", protocol.FIRST_TOKEN]),
        (lifecycle, ["req-1#1", protocol.COMPLETE]),
    ]


# ---- retries before the first token ------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        NoRespondersError("nobody listens"),
        RequestTimeoutError("did not accept"),
        RemoteError("draining", "unavailable"),
        RemoteError("lease gone", "lease_lost"),
        WorkerDiedError("died"),
        END,
        EngineOutput([], finish_reason="abort"),
    ],
    ids=["no_responders", "timeout", "unavailable", "lease_lost", "worker_died", "stream_ended", "abort"],
)
async def test_failure_before_any_token_retries_the_same_request(failure: Any) -> None:
    h = harness([[failure], [EngineOutput([1, 2], finish_reason="stop", cached_tokens=3)]])
    request = make_request(4, min_tokens=1)
    outs = await collect(h.client, request)
    assert [(o.token_ids, o.finish_reason, o.cached_tokens) for o in outs] == [([1, 2], "stop", 3)]
    assert [s.request for s in h.plane.sent] == [request, request]
    assert [s.subject for s in h.plane.sent] == [subject(0xA), subject(0xB)]
    assert 0xA in h.service.calls[1].avoid
    assert h.service.calls[1].n_tokens == len(PROMPT)
    assert h.retries == [None]
    assert h.migrations == [] and h.migrated == []


async def test_retries_run_out_as_no_workers() -> None:
    h = harness([[NoRespondersError("gone")], [RequestTimeoutError("silent")]], max_retries=1)
    outs, err = await collect_until_error(h.client, make_request(), NoWorkersError)
    assert outs == []
    assert "2 attempts" in str(err)
    assert len(h.plane.sent) == 2
    assert h.retries == [None]
    assert h.migrations == []


async def test_empty_output_before_tokens_still_counts_as_before_any_token() -> None:
    h = harness(
        [
            [EngineOutput([], cached_tokens=2), NoRespondersError("gone")],
            [EngineOutput([5], finish_reason="stop")],
        ]
    )
    outs = await collect(h.client, make_request(4))
    assert tokens(outs) == [5]
    assert h.plane.sent[1].request.request_id == "req-1"
    assert h.retries == [None] and h.migrations == []


# ---- requests that cannot move ----------------------------------------------------------------------


async def test_migration_limit_reached_is_a_worker_failure() -> None:
    h = harness(
        [
            [EngineOutput([1]), RequestTimeoutError("silent")],
            [EngineOutput([2]), NoRespondersError("gone")],
            [EngineOutput([3]), WorkerDiedError("died")],
        ],
        migration_limit=2,
    )
    outs, err = await collect_until_error(h.client, make_request(8), WorkerFailure)
    assert tokens(outs) == [1, 2, 3]
    assert "frontend.migration_limit" in str(err)
    assert len(h.plane.sent) == 3
    assert h.migrations == ["idle_timeout", "no_responders"]
    assert h.migrated == ["failed"]


async def test_migration_limit_zero_fails_on_the_first_mid_stream_failure() -> None:
    h = harness([[EngineOutput([1, 2]), RequestTimeoutError("silent")]], migration_limit=0)
    outs, err = await collect_until_error(h.client, make_request(8), WorkerFailure)
    assert tokens(outs) == [1, 2]
    assert "frontend.migration_limit" in str(err)
    assert len(h.plane.sent) == 1
    assert h.migrations == [] and h.migrated == []


async def test_migration_limit_zero_still_retries_before_the_first_token() -> None:
    h = harness([[NoRespondersError("gone")], [EngineOutput([1], finish_reason="stop")]], migration_limit=0)
    outs = await collect(h.client, make_request(4))
    assert tokens(outs) == [1]
    assert h.retries == [None]


async def test_structured_request_is_not_migrated_between_vllm_workers() -> None:
    h = harness(
        [[EngineOutput([1]), RequestTimeoutError("silent")], [EngineOutput([2], finish_reason="stop")]],
        {"engine": "vllm"},
    )
    request = make_request(8, structured={"regex": "a+"})
    outs, err = await collect_until_error(h.client, request, WorkerFailure)
    assert tokens(outs) == [1]
    assert "grammar" in str(err)
    assert len(h.plane.sent) == 1
    assert h.migrations == [] and h.migrated == []


async def test_structured_request_migrates_between_mocker_workers_with_its_grammar_replayed() -> None:
    h = harness(
        [[EngineOutput([1, 2]), RequestTimeoutError("silent")], [EngineOutput([3], finish_reason="stop")]],
        {"engine": "mocker"},
    )
    outs = await collect(h.client, make_request(8, structured={"regex": "a+"}))
    assert tokens(outs) == [1, 2, 3]
    moved = h.plane.sent[1].request
    assert moved.prompt_token_ids == [*PROMPT, 1, 2] and moved.sampling.structured_replay == 2


async def test_structured_request_is_retried_before_the_first_token() -> None:
    h = harness([[NoRespondersError("gone")], [EngineOutput([1], finish_reason="stop")]])
    request = make_request(8, structured={"regex": "a+"})
    outs = await collect(h.client, request)
    assert tokens(outs) == [1]
    assert h.plane.sent[1].request == request
    assert h.retries == [None]


@pytest.mark.parametrize("tokens_first", [True, False], ids=["mid_stream", "before_tokens"])
async def test_internal_remote_error_fails_at_once(tokens_first: bool) -> None:
    script: list[Any] = [EngineOutput([1])] if tokens_first else []
    h = harness(
        [[*script, RemoteError("engine crashed", "internal")], [EngineOutput([2], finish_reason="stop")]]
    )
    outs, err = await collect_until_error(h.client, make_request(8), WorkerFailure)
    assert tokens(outs) == ([1] if tokens_first else [])
    assert "engine crashed" in str(err)
    assert len(h.plane.sent) == 1
    assert h.retries == [] and h.migrations == [] and h.migrated == []


# ---- a worker known dead --------------------------------------------------------------------------


async def test_worker_died_moves_a_waiting_stream_at_once() -> None:
    h = harness([[EngineOutput([1, 2])], [EngineOutput([3, 4], finish_reason="length")]])
    outs: list[EngineOutput] = []

    async def run() -> None:
        async for out in h.client.generate(MODEL, make_request(4, min_tokens=3)):
            outs.append(out)

    task = asyncio.create_task(run())
    try:
        # The first worker sent two tokens and then went quiet: the reader waits on it.
        await asyncio.wait_for(h.plane.waiting.wait(), 5)
        assert tokens(outs) == [1, 2]
        h.client.worker_died(0xB, "another worker")  # no stream of this request lives there
        h.client.worker_died(0xA, "exited with 137")
        await asyncio.wait_for(task, 5)
    finally:
        task.cancel()

    assert tokens(outs) == [1, 2, 3, 4]
    assert outs[-1].finish_reason == "length"
    moved = h.plane.sent[1].request
    assert moved.prompt_token_ids == [*PROMPT, 1, 2]
    assert (moved.sampling.max_tokens, moved.sampling.min_tokens) == (2, 1)
    assert h.plane.sent[1].subject == subject(0xC)  # 0xB was suspected by its own death notice
    assert set(h.service.calls[1].avoid) == {0xA, 0xB}
    assert {0xA, 0xB} <= set(h.workers.suspected())
    assert h.migrations == ["worker_died"]
    assert h.migrated == ["finished"]
    # Nothing is left registered: a later death notice fails no stream.
    h.client.worker_died(0xA, "again")
    assert h.plane.sent[0].stream.queue.empty()


async def test_worker_died_before_any_token_is_a_retry() -> None:
    h = harness([[], [EngineOutput([1], finish_reason="stop")]])

    async def run() -> list[EngineOutput]:
        return [out async for out in h.client.generate(MODEL, make_request(4))]

    task = asyncio.create_task(run())
    try:
        await asyncio.wait_for(h.plane.waiting.wait(), 5)
        h.client.worker_died(0xA, "exited")
        outs = await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
    assert tokens(outs) == [1]
    assert h.plane.sent[1].request.request_id == "req-1"
    assert h.retries == [None] and h.migrations == []


# ---- only the finish was lost ---------------------------------------------------------------------


async def test_only_the_finish_lost_ends_with_length_and_no_second_request() -> None:
    h = harness([[EngineOutput([1, 2]), EngineOutput([3]), END]])
    outs = await collect(h.client, make_request(3))
    assert tokens(outs) == [1, 2, 3]
    assert outs[-1] == EngineOutput([], finish_reason="length")
    assert len(h.plane.sent) == 1
    assert len(h.service.calls) == 1


async def test_abort_on_the_last_token_ends_with_length() -> None:
    h = harness([[EngineOutput([1]), EngineOutput([2], finish_reason="abort")]])
    outs = await collect(h.client, make_request(2))
    assert [(o.token_ids, o.finish_reason) for o in outs] == [([1], None), ([2], None), ([], "length")]
    assert len(h.plane.sent) == 1


# ---- the caller stops early -----------------------------------------------------------------------


async def test_caller_closing_the_stream_cancels_the_worker() -> None:
    h = harness([[EngineOutput([1]), EngineOutput([2])]])
    gen = h.client.generate(MODEL, make_request(8))
    first = await asyncio.wait_for(gen.__anext__(), 5)
    assert first.token_ids == [1]
    await gen.aclose()
    assert h.plane.sent[0].stream.cancelled
    h.client.worker_died(0xA, "exited")  # the closed stream is no longer registered
    assert h.plane.sent[0].stream.queue.qsize() == 1


# ---- edge cases found in review ----------------------------------------------------------------
async def test_only_the_finish_lost_ends_with_length_even_without_migration():
    h = harness([[EngineOutput([1, 2, 3]), END]], migration_limit=0)
    outs = await collect(h.client, make_request(3))
    assert outs[-1] == EngineOutput([], finish_reason="length")


async def test_only_the_finish_lost_ends_with_length_for_a_structured_request():
    h = harness([[EngineOutput([1, 2, 3]), END]])
    outs = await collect(h.client, make_request(3, structured={"regex": "a+"}))
    assert outs[-1] == EngineOutput([], finish_reason="length")


async def test_an_internal_error_after_a_migration_counts_as_failed():
    h = harness(
        [[EngineOutput([1]), RequestTimeoutError("s")], [EngineOutput([2]), RemoteError("x", "internal")]]
    )
    await collect_until_error(h.client, make_request(8), WorkerFailure)
    assert h.migrated == ["failed"]


async def test_no_worker_left_after_tokens_is_a_worker_failure_counted_failed():
    WORKER_IDS[:] = [0xA, 0xB]
    try:
        h = harness(
            [[EngineOutput([1]), RequestTimeoutError("s")], [EngineOutput([2]), RequestTimeoutError("s")]]
        )
        _outs, err = await collect_until_error(h.client, make_request(8), Exception)
        assert isinstance(err, WorkerFailure) and h.migrated == ["failed"]
    finally:
        WORKER_IDS[:] = [0xA, 0xB, 0xC, 0xD, 0xE]


async def test_only_the_finish_lost_after_a_migration_is_not_another_migration():
    h = harness([[EngineOutput([1]), RequestTimeoutError("s")], [EngineOutput([2]), END]])
    await collect(h.client, make_request(2))
    assert h.migrations == ["idle_timeout"] and h.migrated == ["finished"]


async def test_a_request_that_could_not_be_sent_is_retried():
    h = harness([[EngineOutput([1], finish_reason="stop")]])
    real = h.plane.request
    calls = []

    async def request(subject, payload, **kw):
        calls.append(subject)
        if len(calls) == 1:
            raise RequestError("cannot send request: closed")
        return await real(subject, payload, **kw)

    h.plane.request = request
    outs = await collect(h.client, make_request(2))
    assert tokens(outs) == [1]
