"""The worker role: an engine behind a request-plane endpoint, announced in discovery.

It takes token ids and streams token ids; it publishes its KV cache events and its load for routers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.disagg.remote import RemotePrefill
from dynamo_cli.engines import create_engine
from dynamo_cli.engines.base import Engine
from dynamo_cli.errors import RemoteError
from dynamo_cli.models.logprob_json import LogprobJson
from dynamo_cli.models.resolve import ResolvedModel, read_model_info
from dynamo_cli.models.tokenizer import ModelTokenizer
from dynamo_cli.roles.base import Role
from dynamo_cli.transport import protocol
from dynamo_cli.transport.messaging import Endpoint, RequestContext
from dynamo_cli.transport.wire import KvEvent, LoadMetrics

logger = logging.getLogger(__name__)

LOAD_INTERVAL_S = 0.1
# An unchanged load is sent again this often, so that a router or planner that started (or missed a
# message) after a worker went idle still learns of it.
LOAD_REFRESH_S = 2.0


class WorkerRole(Role):
    """An aggregated worker, or a decode worker when ``disagg.remote_prefill`` is on."""

    def __init__(self, cfg: DynamoConfig, model: ResolvedModel, index: int = 0, *, name: str = "worker"):
        super().__init__(cfg)
        self.name = f"{name}-{index}{self.at_host}"
        self.model = model
        self.index = index
        self.engine: Engine | None = None
        self.endpoint: Endpoint | None = None
        self.state_endpoint: Endpoint | None = None
        self._events: list[KvEvent] = []
        self._events_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._logprob_json: asyncio.Future[LogprobJson] | None = None  # loaded on first use
        self.remote: RemotePrefill | None = None
        # Prefill workers exist but remote prefill is off (seed 001): say so on every request.
        self._off_report: dict[str, Any] | None = (
            {"outcome": "local", "reason": "remote_prefill_off"}
            if cfg.disaggregated and not cfg.disagg.remote_prefill
            else None
        )

    async def start(self) -> dict[str, Any]:
        # The engine first: loading a model can block this process for a while, and a discovery
        # lease granted before that would expire unrefreshed.
        info = read_model_info(self.model.path)
        self.engine = create_engine(self.cfg, info, self.model.path, instance_seed=self.index)
        publish_events = self.cfg.router.kv_events
        disagg = self.cfg.disagg.remote_prefill
        wants_events = publish_events or disagg  # a decode worker needs its own prefix hits
        await self.engine.start(on_kv_event=self._on_kv_event if wants_events else None)
        await self.connect()
        assert self.plane is not None and self.discovery is not None
        iid = self.discovery.instance_id
        if disagg:
            self.remote = RemotePrefill(
                self.cfg, self.plane, self.discovery, self.engine, kv_bytes_per_token=info.kv_bytes_per_token
            )
            await self.remote.start(f"{self.name.partition('@')[0]}-{iid:x}")
        subject = protocol.endpoint_subject(self.cfg.namespace, protocol.WORKER, "generate", iid)
        self.endpoint = await self.plane.serve(subject, self._generate)
        state_subject = protocol.endpoint_subject(self.cfg.namespace, protocol.WORKER, "kv_state", iid)
        self.state_endpoint = await self.plane.serve(state_subject, self._kv_state)
        self._tasks = [
            asyncio.create_task(self._publish_events(), name="kv-events"),
            asyncio.create_task(self._publish_load(), name="load"),
            asyncio.create_task(self.fail_when_dead(self.engine), name="engine-health"),
        ]
        await self.discovery.register(
            protocol.WORKER,
            {
                "subject": subject,
                "model": self.model.name,
                "engine": self.cfg.engine,
                "block_size": self.engine.block_size,
                "kv_events": publish_events,
                "host": socket.gethostname(),
                "pid": os.getpid(),
            },
        )
        return {"instance": f"{iid:x}", "subject": subject}

    async def _generate(self, data: bytes, ctx: RequestContext) -> AsyncIterator[bytes]:
        assert self.engine is not None
        request, traceparent = protocol.decode_generate_traced(data)
        span = None
        if traceparent is not None and self.tracer.enabled:
            span = self.tracer.start("worker.generate", request.request_id, parent=traceparent)
            span.set_attribute("dynamo.prompt_tokens", len(request.prompt_token_ids))
        tokens = 0
        try:
            encode = protocol.encode_output
            report = self._off_report
            if self.remote is not None:
                request, decision = await self.remote.prepare(request)
                report = decision.report()
            writer = await self._logprob_writer() if request.sampling.logprobs_json else None
            async for out in self.engine.generate(request):
                if report is not None:
                    out.disagg, report = _merge_reports(report, out.disagg), None
                if writer is not None and out.logprobs:
                    out.logprobs_json, out.logprobs = writer.entries(out.token_ids, out.logprobs), None
                if span is not None:
                    if out.token_ids and not tokens:
                        span.add_event("first_token", {"dynamo.cached_tokens": out.cached_tokens or 0})
                    tokens += len(out.token_ids)
                    if out.finish_reason is not None:
                        span.set_attribute("dynamo.finish_reason", out.finish_reason)
                yield encode(out)
        finally:
            if span is not None:
                span.set_attribute("dynamo.completion_tokens", tokens)
                span.end()

    async def _logprob_writer(self) -> LogprobJson:
        """The model's tokens as chat-logprob JSON heads, built once in a thread (~0.2 s)."""
        if self._logprob_json is None:

            def build() -> LogprobJson:
                writer = LogprobJson(ModelTokenizer(self.model.path, fast_encode=False))
                writer.warm()
                return writer

            self._logprob_json = asyncio.ensure_future(asyncio.to_thread(build))
        return await asyncio.shield(self._logprob_json)

    async def _kv_state(self, data: bytes, ctx: RequestContext) -> AsyncIterator[bytes]:
        """Everything we cache, for a router that saw a gap in our event ids."""
        assert self.engine is not None
        state = self.engine.kv_state()
        if state is None:
            raise RemoteError("this engine cannot report its KV state", "unsupported")
        yield msgpack.packb(state)

    # ---- what routers learn from us -----------------------------------------------------------------
    def _on_kv_event(self, event: KvEvent) -> None:
        if self.remote is not None:
            self.remote.cache.on_event(event)
        if self.cfg.router.kv_events:
            self._events.append(event)
            self._events_ready.set()

    async def _publish_events(self) -> None:
        assert self.plane is not None and self.discovery is not None
        subject = protocol.kv_events_subject(self.cfg.namespace)
        iid = self.discovery.instance_id
        while True:
            await self._events_ready.wait()
            self._events_ready.clear()
            batch, self._events = self._events, []
            if batch:
                await self.plane.publish(subject, protocol.encode_kv_events(iid, batch))

    async def _publish_load(self) -> None:
        assert self.plane is not None and self.discovery is not None and self.engine is not None
        subject = protocol.load_subject(self.cfg.namespace)
        iid = self.discovery.instance_id
        last: LoadMetrics | None = None
        sent_at = 0.0
        while True:
            load = self.engine.load()
            now = time.monotonic()
            if load != last or now - sent_at >= LOAD_REFRESH_S:
                await self.plane.publish(subject, protocol.encode_load(iid, load))
                last, sent_at = load, now
            await asyncio.sleep(LOAD_INTERVAL_S)

    # ---- stopping -------------------------------------------------------------------------------------
    async def drain(self) -> None:
        # Order: vanish from discovery (no new routes), refuse stragglers, finish in-flight work.
        if self.discovery is not None:
            await self.discovery.deregister(protocol.WORKER)
        if self.endpoint is not None:
            await self.endpoint.stop_accepting()
            if self.endpoint.in_flight:
                logger.info("draining %d in-flight request(s)", self.endpoint.in_flight)
            await self.endpoint.drain(self.cfg.supervisor.stop_timeout_s)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.remote is not None:
            await self.remote.close()
        if self.engine is not None:
            with contextlib.suppress(Exception):
                await self.engine.close()
        await super().close()


def _merge_reports(worker: dict[str, Any], engine: dict[str, Any] | None) -> dict[str, Any]:
    """The worker's decision, and what the engine did with the KV (vLLM pulls it itself)."""
    if not engine:
        return worker
    if engine.get("kv_transfer") == "local" and worker.get("outcome") == "remote":
        # vLLM did not take the KV over (the prefill engine is gone, the lease was over...) and
        # prefilled the prompt itself; the cause is counted, and logged by the engine.
        return {
            **worker,
            "outcome": "fallback",
            "reason": engine.get("cause", "transfer_failed"),
            "kv_bytes": 0,
        }
    if engine.get("kv_transfer") == "nixl":
        return {**worker, "kv_bytes": engine.get("kv_bytes", 0), "kv_backend": "nixl"}
    return worker
