"""KV-aware selection: send a request where the work it causes is smallest. Pure: no I/O, no clock
of its own (callers pass `now`), so every decision can be replayed in a test.

cost(worker) = overlap_weight * prefill_blocks + decode_blocks, lowest wins (ties at random;
softmax sampling over -cost/temperature when temperature > 0), where
  prefill_blocks = the request's blocks the worker does not hold + prefill work it already has queued
  decode_blocks  = blocks active on the worker (tracked requests, or its published load) + the request's
Prefill work is released at a request's first token, the rest at its completion.

A worker that publishes no KV events is routed in *approximate* mode: the router records its own
decisions as if the worker had stored the prompt's blocks, and forgets them after `approx_ttl_s`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from dynamo_cli.config.models import RouterConfig
from dynamo_cli.routing.index import KvIndex
from dynamo_cli.routing.policies import NoWorkersError
from dynamo_cli.transport.wire import KvEvent, LoadMetrics


@dataclass(slots=True)
class Decision:
    worker: int
    overlap_blocks: int
    request_blocks: int
    cost: float


@dataclass(slots=True)
class _Tracked:
    worker: int
    prefill_blocks: int  # released at the first token
    blocks: int  # released at completion


@dataclass
class _Worker:
    last_event_id: int = 0
    published: LoadMetrics | None = None
    prefill_blocks: int = 0
    active_blocks: int = 0
    approximate: bool = False
    # approximate mode: (expiry, block hashes) of recorded decisions, oldest first
    recorded: list[tuple[float, list[int]]] = field(default_factory=list)


class KvRouter:
    def __init__(self, block_size: int, cfg: RouterConfig):
        """``cfg``: its overlap_weight, temperature, approx_ttl_s and seed (the defaults live there)."""
        self.block_size = block_size
        self.overlap_weight = cfg.overlap_weight
        self.temperature = cfg.temperature
        self.approx_ttl_s = cfg.approx_ttl_s
        self.index = KvIndex()
        self._workers: dict[int, _Worker] = {}
        self._requests: dict[str, _Tracked] = {}
        self._rng = random.Random(cfg.seed)
        self.events_applied = 0

    # ---- membership ---------------------------------------------------------------------------------
    def add_worker(self, worker: int, *, publishes_events: bool = True) -> None:
        w = self._workers.setdefault(worker, _Worker())
        w.approximate = not publishes_events

    def remove_worker(self, worker: int) -> None:
        self._workers.pop(worker, None)
        self.index.clear(worker)
        for rid in [r for r, t in self._requests.items() if t.worker == worker]:
            del self._requests[rid]

    def is_approximate(self, worker: int) -> bool:
        w = self._workers.get(worker)
        return bool(w and w.approximate)

    # ---- what workers tell us -----------------------------------------------------------------------
    def apply_events(self, worker: int, events: Sequence[KvEvent]) -> bool:
        """Apply a worker's KV events in order. Returns False when ids show a gap or a restart: the
        worker's entries are then dropped and the caller should resync it (`resync`)."""
        w = self._workers.get(worker)
        if w is None:
            w = self._workers[worker] = _Worker()
        w.approximate = False
        ok = True
        for ev in events:
            if ev.event_id <= w.last_event_id and ev.event_id != 1:
                continue  # a duplicate delivery
            if ev.event_id != w.last_event_id + 1:
                # Ids jumped (lost events) or restarted at 1 (a restarted engine): what we hold for
                # this worker can no longer be trusted.
                self.index.clear(worker)
                ok = ev.event_id == 1  # a restart from 1 is a fresh, complete history
            w.last_event_id = ev.event_id
            if ev.kind == "stored":
                self.index.store(worker, ev.block_hashes)
            elif ev.kind == "removed":
                self.index.remove(worker, ev.block_hashes)
            else:
                self.index.clear(worker)
            self.events_applied += 1
        return ok

    def resync(self, worker: int, block_hashes: Sequence[int], last_event_id: int) -> None:
        """Replace what we know of a worker with its full state, as of ``last_event_id``."""
        w = self._workers.setdefault(worker, _Worker())
        self.index.clear(worker)
        self.index.store(worker, block_hashes)
        w.last_event_id = last_event_id

    def update_load(self, worker: int, load: LoadMetrics) -> None:
        w = self._workers.get(worker)
        if w is not None:
            w.published = load

    # ---- deciding -----------------------------------------------------------------------------------
    def select(
        self, candidates: Sequence[int], block_hashes: Sequence[int], n_tokens: int, now: float = 0.0
    ) -> Decision:
        if not candidates:
            raise NoWorkersError("no worker is available")
        self._expire(now)
        overlaps = self.index.overlaps(block_hashes)
        request_blocks = max(1, math.ceil(n_tokens / self.block_size))
        costs: list[tuple[float, int, int]] = []
        for worker in candidates:
            w = self._workers.get(worker) or _Worker()
            overlap = min(overlaps.get(worker, 0), request_blocks)
            prefill = request_blocks - overlap + w.prefill_blocks
            active = max(w.active_blocks, w.published.active_blocks if w.published else 0)
            decode = active + request_blocks
            costs.append((self.overlap_weight * prefill + decode, worker, overlap))
        if self.temperature > 0 and len(costs) > 1:
            best = min(c for c, _, _ in costs)
            weights = [math.exp(-(c - best) / (self.temperature * max(1.0, best))) for c, _, _ in costs]
            cost, worker, overlap = self._rng.choices(costs, weights=weights)[0]
        else:
            best = min(c for c, _, _ in costs)
            cost, worker, overlap = self._rng.choice([c for c in costs if c[0] == best])
        return Decision(worker, overlap, request_blocks, cost)

    # ---- what happens to routed requests ------------------------------------------------------------
    def on_routed(
        self, request_id: str, decision: Decision, block_hashes: Sequence[int], now: float = 0.0
    ) -> None:
        if request_id in self._requests:  # the same id routed again: release the earlier one first
            self.on_complete(request_id)
        w = self._workers.setdefault(decision.worker, _Worker())
        prefill = decision.request_blocks - decision.overlap_blocks
        self._requests[request_id] = _Tracked(decision.worker, prefill, decision.request_blocks)
        w.prefill_blocks += prefill
        w.active_blocks += decision.request_blocks
        if w.approximate and block_hashes:
            hashes = list(block_hashes)
            self.index.store(decision.worker, hashes)
            w.recorded.append((now + self.approx_ttl_s, hashes))

    def on_first_token(self, request_id: str) -> None:
        t = self._requests.get(request_id)
        if t is None or t.prefill_blocks == 0:
            return
        w = self._workers.get(t.worker)
        if w is not None:
            w.prefill_blocks -= t.prefill_blocks
        t.prefill_blocks = 0

    def on_complete(self, request_id: str) -> None:
        self.on_first_token(request_id)
        t = self._requests.pop(request_id, None)
        if t is None:
            return
        w = self._workers.get(t.worker)
        if w is not None:
            w.active_blocks -= t.blocks

    def tracked_requests(self) -> int:
        """Requests routed (by this router or a replica) that have not completed."""
        return len(self._requests)

    def in_flight(self, worker: int) -> tuple[int, int]:
        """(prefill blocks, active blocks) the router attributes to a worker."""
        w = self._workers.get(worker)
        return (w.prefill_blocks, w.active_blocks) if w else (0, 0)

    def _expire(self, now: float) -> None:
        for worker, w in self._workers.items():
            while w.recorded and w.recorded[0][0] <= now:
                _, hashes = w.recorded.pop(0)
                self.index.remove(worker, hashes)
