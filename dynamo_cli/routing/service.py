"""A router's live view of the workers and its decisions, shared by the router role and by a
frontend that embeds the router (router.replicas: 0).

What keeps the view current:
- discovery: workers joining and leaving (a worker that leaves has its index entries dropped);
- `dyn.<ns>.kv_events`: what each worker stores and evicts; a gap in a worker's event ids triggers a
  resync from the worker's `kv_state` endpoint;
- `dyn.<ns>.load`: each worker's published load (in every mode: the worker series export it);
- `dyn.<ns>.router.lifecycle`: first token and completion of routed requests (from frontends);
- `dyn.<ns>.router.decisions`: other router replicas' decisions, so that every replica counts every
  request's load. Replicas converge because they all consume the same event, load and lifecycle
  streams; a replica that starts late or misses messages is corrected by the published load and,
  for cached prefixes, by the next events of each worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import msgpack
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.engines import kv_block_size
from dynamo_cli.errors import RequestError
from dynamo_cli.routing.kv_router import Decision, KvRouter
from dynamo_cli.routing.policies import NoWorkersError, make_policy
from dynamo_cli.transport import protocol
from dynamo_cli.transport.discovery import Discovery, DiscoveryEvent
from dynamo_cli.transport.messaging import RequestPlane
from dynamo_cli.transport.wire import LoadMetrics
from dynamo_cli.transport.workers import InstanceSet

logger = logging.getLogger(__name__)

_DECISION_BUCKETS = (10e-6, 25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3)
_WORKER_SERIES = (
    ("kv_usage", "Share of the worker's KV cache blocks in use (0-1), from its load reports"),
    ("active_blocks", "KV cache blocks held by the worker's running requests"),
    ("total_blocks", "KV cache blocks of the worker"),
    ("running_requests", "Requests the worker's engine is running"),
    ("waiting_requests", "Requests waiting in the worker's engine queue"),
)


class _WorkerView:
    """Per-worker series read at scrape time: what the KV index holds of each worker, and each live
    worker's latest load report (a worker reports on change, so the last report is its state)."""

    def __init__(self, core: KvRouter, workers: InstanceSet, loads: dict[int, LoadMetrics]):
        self.core, self.workers, self.loads = core, workers, loads

    def collect(self) -> Iterator[GaugeMetricFamily]:
        blocks = GaugeMetricFamily(
            "dynamo_router_worker_blocks", "Blocks the KV index holds per worker", labels=["worker"]
        )
        for w in self.core.index.workers():
            blocks.add_metric([f"{w:x}"], self.core.index.blocks_of(w))
        yield blocks
        families = [
            GaugeMetricFamily(f"dynamo_worker_{name}", what, labels=["worker"])
            for name, what in _WORKER_SERIES
        ]
        for w, load in list(self.loads.items()):  # a copy: the router role scrapes from another thread
            if self.workers.get(w) is None:
                continue  # reported before discovery listed it, or after it left
            values = (load.kv_usage, load.active_blocks, load.total_blocks, load.running, load.waiting)
            for family, value in zip(families, values, strict=True):
                family.add_metric([f"{w:x}"], value)
        yield from families


class RouterMetrics:
    """The router's registry (served on the router's metrics URL, or on the frontend's /metrics when the
    router is embedded). docs/metrics.md lists every series."""

    def __init__(self, core: KvRouter, workers: InstanceSet) -> None:
        r = self.registry = CollectorRegistry()
        self.decisions = Counter("dynamo_router_decisions", "Routing decisions", ["mode"], registry=r)
        self.prompt_blocks = Counter("dynamo_router_prompt_blocks", "Full prompt blocks routed", registry=r)
        self.overlap_blocks = Counter(
            "dynamo_router_overlap_blocks", "Prompt blocks already cached on the chosen worker", registry=r
        )
        self.decision_seconds = Histogram(
            "dynamo_router_decision_seconds", "Time to pick a worker", buckets=_DECISION_BUCKETS, registry=r
        )
        self.events = Counter("dynamo_router_kv_events", "KV events applied", registry=r)
        self.resyncs = Counter(
            "dynamo_router_resyncs", "Worker states re-read after an event gap", registry=r
        )
        self.approximate = Gauge(
            "dynamo_router_approximate_workers",
            "Workers routed without KV events (approximate mode)",
            registry=r,
        )
        self.indexed_blocks = Gauge("dynamo_router_indexed_blocks", "Blocks in the KV index", registry=r)
        self.tracked = Gauge(
            "dynamo_router_tracked_requests",
            "In-flight requests this router counts (all replicas')",
            registry=r,
        )
        self.tracked.set_function(core.tracked_requests)
        self.indexed_blocks.set_function(lambda: len(core.index))
        self.loads: dict[int, LoadMetrics] = {}  # worker id -> its latest load report
        r.register(_WorkerView(core, workers, self.loads))


class RoutingService:
    def __init__(self, cfg: DynamoConfig, plane: RequestPlane, discovery: Discovery, *, origin: int):
        self.cfg = cfg
        self.plane = plane
        self.discovery = discovery
        self.origin = origin  # this router's id, to skip our own broadcast decisions
        self.mode = cfg.router.mode
        self.workers = InstanceSet()
        self.core = KvRouter(kv_block_size(cfg), cfg.router)
        self.metrics = RouterMetrics(self.core, self.workers)
        self.policy = (
            make_policy(self.mode, cfg.router.seed) if self.mode in ("round-robin", "random") else None
        )
        self._unsubs: list[Any] = []
        self._resyncing: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def uses_kv(self) -> bool:
        return self.mode == "kv"

    async def start(self) -> None:
        ns = self.cfg.namespace
        for inst in await self.discovery.watch(protocol.WORKER, self._on_worker):
            self._on_worker(DiscoveryEvent("put", inst))
        # Load reports in every mode: kv and least-loaded route on them, and all export them.
        self._unsubs.append(await self.plane.subscribe(protocol.load_subject(ns), self._on_load))
        if self.mode in ("kv", "least-loaded"):
            self._unsubs += [
                await self.plane.subscribe(protocol.lifecycle_subject(ns), self._on_lifecycle),
                await self.plane.subscribe(protocol.decisions_subject(ns), self._on_decision),
            ]
        if self.uses_kv:
            self._unsubs.append(
                await self.plane.subscribe(protocol.kv_events_subject(ns), self._on_kv_events)
            )

    async def close(self) -> None:
        for unsub in self._unsubs:
            try:
                await unsub()
            except Exception:
                logger.debug("unsubscribe failed", exc_info=True)
        for task in self._tasks:
            task.cancel()

    # ---- inputs -------------------------------------------------------------------------------------
    def _on_worker(self, event: DiscoveryEvent) -> None:
        inst = event.instance
        self.workers.on_event(event)
        if event.kind == "delete":
            self.core.remove_worker(inst.instance_id)
            for gone in [w for w in self.metrics.loads if self.workers.get(w) is None]:
                del self.metrics.loads[gone]  # this worker's, and any report that came after a leave
        else:
            events = bool(inst.data.get("kv_events", True))
            self.core.add_worker(inst.instance_id, publishes_events=events)
            size = inst.data.get("block_size")
            if size is not None and size != self.core.block_size:
                if len(self.core.index) == 0:  # the workers say how big their blocks are
                    self.core.block_size = int(size)
                elif self.uses_kv:
                    logger.error(
                        "worker %x uses KV block size %s but the router hashes %s-token blocks: "
                        "its cache hits will not be seen", inst.instance_id, size, self.core.block_size,
                    )  # fmt: skip
            if self.uses_kv and not events:
                logger.warning(
                    "APPROXIMATE ROUTING: worker %x publishes no KV cache events, so the router can only "
                    "guess what it caches from its own decisions (TTL %g s). Prefix hits will be missed "
                    "after evictions and restarts. Turn router.kv_events on for exact routing.",
                    inst.instance_id, self.cfg.router.approx_ttl_s,
                )  # fmt: skip
        self.metrics.approximate.set(sum(1 for w in self.workers.ids() if self.core.is_approximate(w)))

    async def _on_kv_events(self, data: bytes) -> None:
        worker, events = protocol.decode_kv_events(data)
        if self.workers.get(worker) is None:
            return  # not (or no longer) a worker we route to
        in_order = self.core.apply_events(worker, events)
        self.metrics.events.inc(len(events))
        if not in_order and worker not in self._resyncing:
            self._resyncing.add(worker)
            task = asyncio.create_task(self._resync(worker), name=f"resync:{worker:x}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _resync(self, worker: int) -> None:
        subject = protocol.endpoint_subject(self.cfg.namespace, protocol.WORKER, "kv_state", worker)
        try:
            stream = await self.plane.request(subject, b"", accept_timeout=2.0, idle_timeout=5.0)
            async for chunk in stream:
                hashes, last_id = msgpack.unpackb(chunk)
                self.core.resync(worker, hashes, last_id)
                self.metrics.resyncs.inc()
                logger.info(
                    "resynced worker %x: %d cached blocks as of event %d", worker, len(hashes), last_id
                )
        except RequestError as e:
            logger.warning(
                "could not resync worker %x (%s); it is routed on load until its next events", worker, e
            )
        finally:
            self._resyncing.discard(worker)

    async def _on_load(self, data: bytes) -> None:
        worker, load = protocol.decode_load(data)
        self.core.update_load(worker, load)
        self.metrics.loads[worker] = load  # exported while discovery lists the worker

    async def _on_lifecycle(self, data: bytes) -> None:
        rid, kind = msgpack.unpackb(data)
        if kind == protocol.FIRST_TOKEN:
            self.core.on_first_token(rid)
        else:
            self.core.on_complete(rid)

    async def _on_decision(self, data: bytes) -> None:
        origin, rid, worker, overlap, blocks, hashes = msgpack.unpackb(data)
        if origin != self.origin and self.workers.get(worker) is not None:
            self.core.on_routed(rid, Decision(worker, overlap, blocks, 0.0), hashes, time.monotonic())

    # ---- deciding -----------------------------------------------------------------------------------
    def route(
        self, model: str, n_tokens: int, hashes: list[int], exclude: list[int], request_id: str
    ) -> tuple[int, str, int]:
        """(worker id, its subject, overlap blocks) for a request."""
        candidates = (
            [w for w in self.workers.ids(model) if w not in exclude] if exclude else self.workers.ids(model)
        )
        if not candidates:
            raise NoWorkersError("no worker is available")
        t0 = time.perf_counter()
        overlap = 0
        if self.policy is not None:
            worker = self.policy.select(candidates)
        else:
            now = time.monotonic()
            decision = self.core.select(candidates, hashes if self.uses_kv else [], n_tokens, now)
            self.core.on_routed(request_id, decision, hashes if self.uses_kv else [], now)
            worker, overlap = decision.worker, decision.overlap_blocks
            approx = hashes if self.core.is_approximate(worker) else []
            payload = msgpack.packb(
                (self.origin, request_id, worker, overlap, decision.request_blocks, approx)
            )
            task = asyncio.ensure_future(
                self.plane.publish(protocol.decisions_subject(self.cfg.namespace), payload)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        m = self.metrics
        m.decision_seconds.observe(time.perf_counter() - t0)
        m.decisions.labels(self.mode).inc()
        m.prompt_blocks.inc(len(hashes))
        m.overlap_blocks.inc(overlap)
        inst = self.workers.get(worker)
        assert inst is not None
        return worker, inst.data["subject"], overlap

    def on_first_token(self, request_id: str) -> None:
        self.core.on_first_token(request_id)

    def on_complete(self, request_id: str) -> None:
        self.core.on_complete(request_id)
