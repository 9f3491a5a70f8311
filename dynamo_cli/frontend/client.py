"""The frontend's path to workers: pick one (through a router role or embedded), send, stream back.

A request that could not start on a worker (it is gone, refused, or did not answer) is retried on
another one (``frontend.max_retries``). A request whose worker dies, goes silent, or stops it after
tokens have come back migrates (``frontend.migration_limit``): another worker gets the prompt plus
the tokens so far, prefers one holding that prefix, and the client sees one uninterrupted stream.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace

import msgpack

from dynamo_cli import tracing
from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.engines import kv_block_size
from dynamo_cli.errors import (
    NoRespondersError,
    RemoteError,
    RequestError,
    RequestTimeoutError,
    WorkerDiedError,
)
from dynamo_cli.kv.hashing import sequence_block_hashes
from dynamo_cli.routing.policies import NoWorkersError
from dynamo_cli.routing.service import RoutingService
from dynamo_cli.transport import protocol
from dynamo_cli.transport.messaging import RequestPlane
from dynamo_cli.transport.response_stream import ResponseStream
from dynamo_cli.transport.wire import EngineOutput, EngineRequest
from dynamo_cli.transport.workers import InstanceSet

logger = logging.getLogger(__name__)


class WorkerFailure(Exception):
    """A worker failed a request after it had started; the message says how."""


@dataclass
class Attempt:
    instance_id: int
    subject: str


class WorkerClient:
    def __init__(
        self,
        plane: RequestPlane,
        cfg: DynamoConfig,
        workers: InstanceSet,
        *,
        service: RoutingService | None = None,
        routers: InstanceSet | None = None,
    ):
        self.plane = plane
        self.cfg = cfg
        self.fcfg = cfg.frontend
        self._guessed_block_size = kv_block_size(cfg)  # until a worker advertises its own
        self.workers = workers
        self.service = service  # embedded router (router.replicas: 0)
        self.routers = routers
        self._router_rr = itertools.count()
        self._suspect_s = float(cfg.infra.lease_ttl_s)
        self._hashes = cfg.router.mode == "kv"
        self._tracks_load = cfg.router.mode in ("kv", "least-loaded")
        self._lifecycle = protocol.lifecycle_subject(cfg.namespace)
        self.on_retry: Callable[[], None] | None = None
        self.on_migration: Callable[[str], None] | None = None  # a request moves: why
        self.on_migrated: Callable[[str], None] | None = None  # a migrated request: finished or failed
        self._live: dict[int, set[ResponseStream]] = {}  # streams open on each worker
        self.tracer = tracing.tracer(protocol.FRONTEND)  # DISABLED unless this process set it up

    async def _route(
        self,
        model: str,
        request: EngineRequest,
        routing_id: str,
        hashes: list[int],
        exclude: list[int],
        traceparent: str | None = None,
    ) -> Attempt:
        n = len(request.prompt_token_ids)
        avoid = exclude + self.workers.suspected()
        if self.service is not None:
            iid, subject, _ = self.service.route(model, n, hashes, avoid, routing_id)
            return Attempt(iid, subject)
        assert self.routers is not None
        router_ids = self.routers.ids()
        if not router_ids:
            raise NoWorkersError("no router is available (is the router role running?)")
        for k in range(len(router_ids)):
            rid = router_ids[(next(self._router_rr) + k) % len(router_ids)]
            router = self.routers.get(rid)
            if router is None:
                continue
            try:
                stream = await self.plane.request(
                    router.data["subject"],
                    protocol.encode_route(model, n, avoid, routing_id, hashes, traceparent),
                    accept_timeout=self.fcfg.first_response_timeout_s,
                    idle_timeout=self.fcfg.first_response_timeout_s,
                )
                async for chunk in stream:
                    iid, subject, _overlap = msgpack.unpackb(chunk)
                    return Attempt(iid, subject)
            except RemoteError as e:
                if e.code == "no_workers":
                    raise NoWorkersError(str(e)) from e
                logger.warning("router %x failed (%s); trying another", rid, e)
            except RequestError as e:
                self.routers.suspect(rid, self._suspect_s)
                logger.warning("router %x unreachable (%s); trying another", rid, e)
        raise NoWorkersError("no router answered")

    def _block_size(self) -> int:
        """The workers' KV block size (they advertise it); the config's until one is known."""
        for iid in self.workers.ids():
            inst = self.workers.get(iid)
            if inst is not None and inst.data.get("block_size"):
                return int(inst.data["block_size"])
        return self._guessed_block_size

    async def _tell_routers(self, request_id: str, kind: int) -> None:
        if self._tracks_load:
            await self.plane.publish(self._lifecycle, msgpack.packb((request_id, kind)))

    def worker_died(self, instance_id: int, why: str) -> None:
        """A worker is known dead (its launcher saw it exit): its streams move at once, without
        waiting for the idle timeout, and no request is routed to it until discovery drops it."""
        self.workers.suspect(instance_id, self._suspect_s)
        for stream in list(self._live.get(instance_id, ())):
            stream.fail(WorkerDiedError(f"worker {instance_id:x} died ({why})"))

    def generate(self, model: str, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        """Stream ``request``'s outputs from a worker. Before any token has come back, a worker that
        cannot take the request is replaced (``max_retries``); after, the request migrates
        (``migration_limit``): another worker continues it from the prompt and the tokens so far, and
        the caller sees one stream. With tracing on, in a span whose traceparent the router and the
        workers get."""
        if self.tracer.enabled:
            return self._traced(model, request)
        return self._generate(model, request, None)

    async def _traced(self, model: str, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        span = self.tracer.start("frontend.generate", request.request_id)
        span.set_attribute("dynamo.prompt_tokens", len(request.prompt_token_ids))
        tokens = 0
        try:
            async with contextlib.aclosing(self._generate(model, request, tracing.traceparent(span))) as outs:
                async for out in outs:
                    if out.token_ids and not tokens:
                        span.add_event("first_token")
                    tokens += len(out.token_ids)
                    if out.finish_reason is not None:
                        span.set_attribute("dynamo.finish_reason", out.finish_reason)
                    yield out
        except Exception as e:
            span.record_exception(e)
            span.set_attribute("error.type", type(e).__name__)
            raise
        finally:
            span.set_attribute("dynamo.completion_tokens", tokens)
            span.end()

    async def _generate(
        self, model: str, request: EngineRequest, traceparent: str | None
    ) -> AsyncGenerator[EngineOutput, None]:
        current, payload = request, protocol.encode_generate(request, traceparent)
        hashes = self._prompt_hashes(current)
        sent: list[int] = []  # token ids passed on, over every attempt
        exclude: list[int] = []
        retries = migrations = 0
        for attempt_no in itertools.count():
            # Each attempt is its own routed request, so a retry never mixes up two workers' load.
            routing_id = request.request_id if attempt_no == 0 else f"{request.request_id}#{attempt_no}"
            try:
                attempt = await self._route(model, current, routing_id, hashes, exclude, traceparent)
            except NoWorkersError as e:
                if not sent:
                    raise
                self._migrated(migrations, "failed")
                raise WorkerFailure(f"no worker is left to continue the request ({e})") from e
            try:
                async with contextlib.aclosing(
                    self._attempt(attempt, payload, routing_id, migrations)
                ) as outs:
                    async for out in outs:
                        sent += out.token_ids
                        if out.finish_reason is not None:
                            self._migrated(migrations, "finished")  # before the yield: the caller stops
                        yield out
                        if out.finish_reason is not None:
                            return
                raise _Moved("stream_ended", "the worker ended the stream without finishing it")
            except RequestError as e:
                reason = _movable(e)
                if reason is None:
                    self._migrated(migrations, "failed")
                    raise WorkerFailure(f"worker {attempt.instance_id:x} failed the request: {e}") from e
                if reason in ("no_responders", "idle_timeout", "worker_died"):
                    self.workers.suspect(attempt.instance_id, self._suspect_s)
                exclude.append(attempt.instance_id)
                if not sent:
                    if retries >= self.fcfg.max_retries:
                        raise NoWorkersError(
                            f"no worker could take the request after {retries + 1} attempts ({e})"
                        ) from e
                    retries += 1
                    logger.warning(
                        "worker %x could not take request %s (%s); trying another (%d/%d)",
                        attempt.instance_id, request.request_id, e, retries, self.fcfg.max_retries,
                    )  # fmt: skip
                    if self.on_retry is not None:
                        self.on_retry()
                    continue
                moved = _continuation(request, sent, migrations + 1)
                if moved is None:  # every token was sent; only the finish was lost
                    self._migrated(migrations, "finished")
                    yield EngineOutput([], finish_reason="length")
                    return
                refusal = self._cannot_migrate(request, migrations)
                if refusal is not None:
                    self._migrated(migrations, "failed")
                    raise WorkerFailure(
                        f"worker {attempt.instance_id:x} failed mid-request ({e}); {refusal}"
                    ) from e
                migrations += 1
                logger.warning(
                    "worker %x lost request %s after %d tokens (%s); migrating (%d/%d)",
                    attempt.instance_id, request.request_id, len(sent), e, migrations,
                    self.fcfg.migration_limit,
                )  # fmt: skip
                if self.on_migration is not None:
                    self.on_migration(reason)
                current = moved
                payload = protocol.encode_generate(current, traceparent)
                hashes = self._prompt_hashes(current)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, attempt: Attempt, payload: bytes, routing_id: str, migrated: int
    ) -> AsyncGenerator[EngineOutput, None]:
        """One worker's outputs for one attempt. Ends at the output that finishes the request; raises
        RequestError when the worker fails, goes silent, dies or stops the request (``_Moved``)."""
        decode = protocol.decode_output
        stream = await self.plane.request(
            attempt.subject,
            payload,
            accept_timeout=self.fcfg.first_response_timeout_s,
            idle_timeout=self.fcfg.stream_idle_timeout_s,
        )
        live = self._live.setdefault(attempt.instance_id, set())
        live.add(stream)
        finished = produced = False
        try:
            async for chunk in stream:
                out = decode(chunk)
                aborted = out.finish_reason == "abort"
                if aborted:  # the worker stopped it (draining): its tokens stand, the rest moves
                    out.finish_reason = None
                if migrated:  # the first worker's answers stand: prompt logprobs, cache hits
                    out.cached_tokens, out.prompt_logprobs = None, None
                if not produced and out.token_ids:
                    produced = True
                    await self._tell_routers(routing_id, protocol.FIRST_TOKEN)
                finished = aborted or out.finish_reason is not None
                if out.token_ids or not aborted:
                    yield out
                if aborted:
                    raise _Moved("aborted", "the worker stopped the request (draining?)")
                if finished:
                    return
            finished = True
        except RequestError:
            finished = True  # the remote side is gone or refused; nothing to cancel
            raise
        finally:
            live.discard(stream)
            if not live:
                self._live.pop(attempt.instance_id, None)
            if not finished:
                await stream.cancel()
            await self._tell_routers(routing_id, protocol.COMPLETE)

    def _migrated(self, migrations: int, outcome: str) -> None:
        """Count how a request that migrated ended (nothing for one that never did)."""
        if migrations and self.on_migrated is not None:
            self.on_migrated(outcome)

    def _prompt_hashes(self, request: EngineRequest) -> list[int]:
        if not self._hashes:
            return []
        return sequence_block_hashes(request.prompt_token_ids, self._block_size())

    def _cannot_migrate(self, request: EngineRequest, migrations: int) -> str | None:
        """Why a started request cannot move to another worker, if it cannot."""
        if migrations >= self.fcfg.migration_limit:
            limit = self.fcfg.migration_limit
            return f"it was migrated {migrations} times (frontend.migration_limit: {limit})"
        if request.sampling.structured is not None and self.cfg.engine != "mocker":
            return "vLLM cannot resume a structured-output request's grammar on another worker"
        return None


class _Moved(RequestError):
    """A worker's stream ended without finishing its request; ``reason`` labels the migration."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _movable(e: RequestError) -> str | None:
    """The migration reason for a failed stream, or None when another worker would fail it too."""
    if isinstance(e, _Moved):
        return e.reason
    if isinstance(e, WorkerDiedError):
        return "worker_died"
    if isinstance(e, NoRespondersError):
        return "no_responders"
    if isinstance(e, RequestTimeoutError):
        return "idle_timeout"
    if isinstance(e, RemoteError) and e.code in ("unavailable", "lease_lost"):
        return e.code
    if type(e) is RequestError:  # the request could not be sent (the connection to NATS failed)
        return "send_failed"
    return None


def _continuation(request: EngineRequest, sent: list[int], n: int) -> EngineRequest | None:
    """``request`` re-sent with its output so far appended to the prompt, for the tokens still due;
    None when none are."""
    s = request.sampling
    left = s.max_tokens - len(sent)
    if left <= 0:
        return None
    sampling = replace(
        s,
        max_tokens=left,
        min_tokens=max(0, s.min_tokens - len(sent)),
        prompt_logprobs=None,
        structured_replay=len(sent) if s.structured is not None else 0,  # the grammar resumes after them
    )
    return EngineRequest(f"{request.request_id}-m{n}", request.prompt_token_ids + sent, sampling)
