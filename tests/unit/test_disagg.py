"""The decode worker's remote-prefill decision (seed 001's rule) and the start-up findings."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from dynamo_cli.config.checks import disagg_findings
from dynamo_cli.config.loader import load_config
from dynamo_cli.disagg import remote
from dynamo_cli.disagg.remote import CachedPrefixes, RemotePrefill, decode_peer, encode_peer
from dynamo_cli.kv.hashing import sequence_block_hashes
from dynamo_cli.transport.discovery import DiscoveryEvent, Instance
from dynamo_cli.transport.wire import EngineRequest, KvEvent, SamplingOptions
from tests.unit.helpers import until

BS = 16


class _Queue:
    def __init__(self, depth: int = 0, fail: bool = False):
        self._depth, self.fail, self.reads = depth, fail, 0

    async def depth(self) -> int:
        self.reads += 1
        if self.fail:
            raise OSError("JetStream is gone")
        return self._depth


def _remote(
    sets: list[str], *, prefill_workers: int = 1, depth: int = 0, fail: bool = False
) -> RemotePrefill:
    cfg = load_config(None, sets=["mocker.block_size=16", *sets])
    engine: Any = SimpleNamespace(block_size=BS)
    rp = RemotePrefill(cfg, None, SimpleNamespace(instance_id=7), engine, kv_bytes_per_token=8)  # type: ignore[arg-type]
    rp.queue = _Queue(depth, fail)  # type: ignore[assignment]
    for i in range(prefill_workers):  # mocker prefill workers: nothing to handshake with
        rp._on_prefill(DiscoveryEvent("put", Instance("prefill", 100 + i, {})))
    return rp


def _req(n: int, start: int = 0) -> EngineRequest:
    return EngineRequest("r", list(range(start, start + n)), SamplingOptions(max_tokens=4))


def _decide(rp: RemotePrefill, req: EngineRequest) -> tuple[str, str, int]:
    d = asyncio.run(rp.decide(req))
    return d.outcome, d.reason, d.uncached_tokens


ON = ["disagg.remote_prefill=true", "disagg.max_local_prefill_length=100", "disagg.max_prefill_queue_size=2"]


def test_remote_prefill_off_keeps_everything_local() -> None:
    assert _decide(_remote([]), _req(5000))[:2] == ("local", "remote_prefill_off")


def test_long_uncached_prompt_goes_remote_short_one_stays() -> None:
    rp = _remote(ON)
    assert _decide(rp, _req(101)) == ("remote", "long_uncached", 101)
    assert _decide(rp, _req(100)) == ("local", "short_prompt", 100)


def test_a_request_for_prompt_logprobs_is_prefilled_locally() -> None:
    # vLLM computes every prompt token itself when their logprobs are asked: a remote prefill is waste.
    req = _req(5000)
    req.sampling.prompt_logprobs = 1
    assert _decide(_remote(ON), req)[:2] == ("local", "prompt_logprobs")


def test_uncached_length_uses_the_workers_own_prefix_hits() -> None:
    rp = _remote(ON)
    req = _req(200)
    hashes = sequence_block_hashes(req.prompt_token_ids, BS)
    rp.cache.on_event(KvEvent(1, "stored", hashes[:8]))  # 128 of 200 tokens cached -> 72 uncached
    assert _decide(rp, req) == ("local", "prefix_cached", 72)
    rp.cache.on_event(KvEvent(2, "removed", hashes[4:8]))  # 64 cached -> 136 uncached
    assert _decide(rp, req) == ("remote", "long_uncached", 136)
    rp.cache.on_event(KvEvent(3, "cleared"))
    assert _decide(rp, req)[2] == 200


def test_full_queue_keeps_work_local_and_a_broken_one_falls_back() -> None:
    assert _decide(_remote(ON, depth=2), _req(500))[:2] == ("local", "queue_full")
    assert _decide(_remote(ON, depth=1), _req(500))[:2] == ("remote", "long_uncached")
    assert _decide(_remote(ON, fail=True), _req(500))[:2] == ("fallback", "queue_error")


def test_unconditional_disagg_sends_everything_remote_whatever_the_queue() -> None:
    rp = _remote([*ON, "disagg.conditional_disagg=false"], depth=50)
    assert _decide(rp, _req(3))[:2] == ("remote", "always_remote")
    assert rp.queue.reads == 0  # type: ignore[union-attr]


def test_no_prefill_worker_is_a_counted_fallback() -> None:
    assert _decide(_remote(ON, prefill_workers=0), _req(500))[:2] == ("fallback", "no_prefill_worker")


def test_remote_prefill_waits_for_a_handshake_with_every_live_prefill_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(remote, "HANDSHAKE_RETRY_S", 0)  # retry at once, not after half a second

    class Engine:
        block_size = BS

        def __init__(self) -> None:
            self.go = asyncio.Event()
            self.handshakes: list[dict] = []
            self.forgotten: list[dict] = []
            self.fail_first = True

        async def handshake(self, peer: dict) -> None:
            self.handshakes.append(peer)
            if self.fail_first:
                self.fail_first = False
                raise RuntimeError("side channel refused")
            await self.go.wait()

        async def forget(self, peer: dict) -> None:
            self.forgotten.append(peer)

    class Plane:
        def __init__(self) -> None:
            self.published: list[tuple[str, bytes]] = []

        async def publish(self, subject: str, data: bytes) -> None:
            self.published.append((subject, data))

    async def scenario() -> None:
        rp = _remote(ON, prefill_workers=1)  # a mocker prefill worker: no handshake needed
        engine, plane = Engine(), Plane()
        rp.engine, rp.plane = engine, plane  # type: ignore[assignment]
        peer = {"engine_id": "e-1", "host": "127.0.0.1", "port": 12345, "tp_size": 1}
        rp._on_prefill(DiscoveryEvent("put", Instance("prefill", 200, {"kv_peer": peer})))
        assert (await rp.decide(_req(500))).reason == "handshake"  # not with 200 yet: local
        await until(lambda: len(engine.handshakes) == 2)  # the first attempt failed; the retry waits
        assert len(engine.handshakes) == 2 and (await rp.decide(_req(500))).reason == "handshake"
        engine.go.set()
        await until(lambda: plane.published)  # the handshake went through and 200 was told
        assert (await rp.decide(_req(500))).outcome == "remote"
        assert plane.published == [("dyn.dynamo.prefill.handshake.c8", b"7")]  # told 200 (c8) it may pull
        rp._on_prefill(DiscoveryEvent("delete", Instance("prefill", 200, {"kv_peer": peer})))
        await asyncio.sleep(0)
        assert 200 not in rp.handshaken and engine.forgotten == [peer]

    asyncio.run(scenario())


def test_cached_prefixes_stop_at_the_first_gap() -> None:
    cache = CachedPrefixes(BS)
    tokens = list(range(64))
    h = sequence_block_hashes(tokens, BS)
    cache.on_event(KvEvent(1, "stored", [h[0], h[2], h[3]]))
    assert cache.hit_tokens(tokens) == 16


def test_transfer_metadata_survives_json_discovery() -> None:
    md = {"name": "a", "md": b"\x00\xffbytes", "port": 5}
    assert decode_peer(encode_peer(md)) == md


@pytest.mark.parametrize(
    ("sets", "key"),
    [
        (["prefill_workers.count=2"], "disagg.remote_prefill"),  # seed 001
        (["disagg.remote_prefill=true"], "prefill_workers.count"),
        (["disagg.remote_prefill=true", "prefill_workers.count=1", "disagg.max_prefill_queue_size=0"],
         "disagg.max_prefill_queue_size"),
        (["disagg.remote_prefill=true", "prefill_workers.count=1", "mocker.num_blocks=16",
          "mocker.block_size=16", "disagg.max_local_prefill_length=300"], "disagg.max_local_prefill_length"),
    ],
)  # fmt: skip
def test_findings_name_each_trap(sets: list[str], key: str) -> None:
    assert [f.key for f in disagg_findings(load_config(None, sets=sets))] == [key]


def test_a_sound_disagg_profile_has_no_findings() -> None:
    assert disagg_findings(load_config("disagg")) == []
    assert disagg_findings(load_config("agg")) == []


def test_seed_keys_with_hyphens_are_accepted() -> None:
    cfg = load_config(None, sets=["disagg.remote-prefill=true", "disagg.max-local-prefill-length=7"])
    assert cfg.disagg.remote_prefill and cfg.disagg.max_local_prefill_length == 7


class _Plane:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        self.published.append((subject, payload))


class _FailingTransfer:
    async def fetch(self, peer: dict, desc: dict, *, timeout: float) -> None:
        from dynamo_cli.kv.transfer import TransferError

        raise TransferError("peer gone")


def test_a_failed_transfer_prefills_locally_and_frees_the_staged_copy() -> None:
    rp = _remote(ON)
    rp.plane = _Plane()  # type: ignore[assignment]
    rp.transfer = _FailingTransfer()
    rp.prefills.on_event(DiscoveryEvent("put", Instance("prefill", 100, {"transfer": {"name": "p"}})))
    req = _req(500)
    result = {"ok": True, "peer": 100, "kv": {"remote_tokens": 499}, "desc": {}, "skip_tokens": 0}

    async def go() -> tuple[EngineRequest, Any]:
        async def enqueue(request: EngineRequest, cached: int) -> asyncio.Future:
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(result)
            return fut

        rp._enqueue = enqueue  # type: ignore[method-assign]
        return await rp.prepare(req)

    out, decision = asyncio.run(go())
    assert (decision.outcome, decision.reason) == ("fallback", "transfer_failed")
    assert out.kv_transfer_params is None  # the engine prefills it all
    assert [s for s, _ in rp.plane.published] == ["dyn.dynamo.prefill.release.64"]  # type: ignore[attr-defined]


def test_a_vllm_decode_that_could_not_pull_the_kv_is_a_counted_fallback() -> None:
    from dynamo_cli.roles.worker import _merge_reports

    remote = {"outcome": "remote", "reason": "long_uncached"}
    assert _merge_reports(remote, {"kv_transfer": "nixl", "kv_blocks": 3, "kv_bytes": 300}) == {
        **remote, "kv_bytes": 300, "kv_backend": "nixl"}  # fmt: skip
    assert _merge_reports(remote, {"kv_transfer": "local", "reason": "engine gone"})["outcome"] == "fallback"
    assert _merge_reports(remote, None) == remote
    stale = {"kv_transfer": "local", "cause": "kv_lease", "reason": "the lease was over"}
    assert _merge_reports(remote, stale) == {
        **remote,
        "outcome": "fallback",
        "reason": "kv_lease",
        "kv_bytes": 0,
    }


def test_each_fallback_cause_is_logged_once_then_at_most_once_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from dynamo_cli.kv import fallbacks

    now = [1000.0]
    monkeypatch.setattr(fallbacks.time, "monotonic", lambda: now[0])
    log = fallbacks.FallbackLog(logging.getLogger("test.fallbacks"))
    with caplog.at_level(logging.WARNING, "test.fallbacks"):
        for i in range(5):
            log.note("kv_lease", f"request r{i}")
            now[0] += 10
        log.note("handshake", "request h0")  # another cause: its own first line
        now[0] += 20
        log.note("kv_lease", "request r5")  # 60 s after the first line: the count since
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("prefilling locally (kv_lease): request r0")
    assert lines[1].startswith("prefilling locally (handshake): request h0")
    assert lines[2] == "prefilled locally 5 more time(s) (kv_lease) in the last 70 s; the latest: request r5"
