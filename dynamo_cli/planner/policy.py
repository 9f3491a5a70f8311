"""Scaling policies: from what one interval showed to how many workers each group should have.

Pure functions of their inputs (no I/O, no clock), so every decision can be replayed in a test.

- ``LoadPolicy`` (Dynamo's load-based planner): thresholds on the prefill queue depth per prefill worker
  and on the decode workers' KV-cache utilisation. A threshold must be crossed for ``hysteresis``
  intervals in a row before a group moves, by one worker at most, and a group that moved waits
  ``cooldown_s`` before it moves again.
- ``SlaPolicy`` (Dynamo's SLA planner): the workers each group needs next interval, from a prediction of
  the next interval's load and what one worker sustains within the TTFT and ITL targets (a Capacity:
  a profile, or the mocker's own timing model), refined by the latency each interval got. Up by as
  many workers as the gap calls for (``max_step``), down by one once the lower need has lasted.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from dynamo_cli.config.models import DynamoConfig, Group, PlannerLoadConfig, PlannerSlaConfig
from dynamo_cli.errors import UsageError
from dynamo_cli.planner.capacity import Capacity, Kind, MockerCapacity, ProfiledCapacity, Refinement, Targets


@dataclass(frozen=True)
class Bounds:
    """A group's worker count limits (``planner.workers`` / ``planner.prefill_workers`` in the config)."""

    min: int
    max: int

    def clamp(self, n: int) -> int:
        return max(self.min, min(self.max, n))


@dataclass(frozen=True)
class Observation:
    """One interval of the deployment, as the planner's inputs saw it."""

    at: float  # seconds, any monotonic clock
    replicas: dict[Group, int]
    request_rate: float = 0.0  # requests/s that arrived in the interval
    avg_isl: float = 0.0  # prompt tokens per request
    avg_osl: float = 0.0  # output tokens per request
    ttft_s: float | None = None  # mean time to first token in the interval
    itl_s: float | None = None  # mean inter-token latency in the interval
    prefill_queue_depth: float = 0.0  # prefills queued or running (disaggregated only)
    kv_utilization: float = 0.0  # mean KV-cache use of the decode (or aggregated) workers, 0..1


@dataclass(frozen=True)
class Decision:
    group: Group
    current: int
    target: int
    reason: str

    @property
    def change(self) -> int:
        return self.target - self.current


@dataclass
class LoadPolicy:
    config: PlannerLoadConfig
    bounds: dict[Group, Bounds]
    _streak: dict[tuple[Group, int], int] = field(default_factory=dict)
    _last_change: dict[Group, float] = field(default_factory=dict)

    def decide(self, obs: Observation) -> list[Decision]:
        c, out = self.config, []
        for group, current in obs.replicas.items():
            if group not in self.bounds:
                continue
            if group == "prefill_workers":
                per = obs.prefill_queue_depth / max(1, current)
                up, down = per > c.queue_high, per < c.queue_low
                what = f"prefill queue {obs.prefill_queue_depth:.1f} ({per:.2f} per worker)"
                limits = f"{c.queue_low:g}..{c.queue_high:g}"
            else:
                up, down = obs.kv_utilization > c.kv_high, obs.kv_utilization < c.kv_low
                what = f"KV utilisation {obs.kv_utilization:.0%}"
                limits = f"{c.kv_low:.0%}..{c.kv_high:.0%}"
            step = 1 if up else -1 if down else 0
            for s in (1, -1):  # a streak breaks as soon as its side is not crossed
                self._streak[(group, s)] = self._streak.get((group, s), 0) + 1 if step == s else 0
            decision = self._move(group, current, step, obs.at, f"{what} outside {limits}")
            if decision is not None:
                out.append(decision)
        return out

    def _move(self, group: Group, current: int, step: int, now: float, why: str) -> Decision | None:
        b = self.bounds[group]
        if current < b.min or current > b.max:  # out of bounds (someone else scaled it): come back first
            return self._record(group, current, b.clamp(current), now, f"outside bounds {b.min}..{b.max}")
        if step == 0 or self._streak[(group, step)] < self.config.hysteresis:
            return None
        if now - self._last_change.get(group, -math.inf) < self.config.cooldown_s:
            return None
        target = b.clamp(current + step)
        if target == current:
            return None
        n = self._streak[(group, step)]
        return self._record(group, current, target, now, f"{why} for {n} intervals")

    def _record(self, group: Group, current: int, target: int, now: float, reason: str) -> Decision:
        self._last_change[group] = now
        self._streak[(group, 1)] = self._streak[(group, -1)] = 0
        return Decision(group, current, target, reason)


class Predictor:
    """Next interval's value: a moving average plus the recent linear trend (never below zero)."""

    def __init__(self, window: int) -> None:
        self.values: deque[float] = deque(maxlen=window)

    def add(self, value: float) -> None:
        self.values.append(value)

    def predict(self) -> float:
        v = list(self.values)
        if not v:
            return 0.0
        if len(v) < 3:
            return v[-1]
        n = len(v)
        mean_x, mean_y = (n - 1) / 2, sum(v) / n
        slope = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(v)) / sum(
            (i - mean_x) ** 2 for i in range(n)
        )
        return max(0.0, mean_y + slope * (n - mean_x))  # the line, one step past the last point


# Down only when one worker fewer would still run at most this share of its (headroomed) capacity:
# between scaling up at 100% and down at 80%, a load near a boundary does not flap.
DOWN_MARGIN = 0.8


@dataclass
class SlaPolicy:
    """Workers from the targets: each group gets the workers its predicted load needs at what one
    worker serves within the targets (a Capacity, refined by what the deployment observed)."""

    capacity: Capacity
    bounds: dict[Group, Bounds]
    config: PlannerSlaConfig  # targets, headroom, max_step, the predictor's window, scale_down_intervals
    _down: dict[Group, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = self.config
        self.targets = Targets(c.ttft_ms / 1000, c.itl_ms / 1000)
        self.headroom = c.headroom  # plan each worker at this share of its capacity
        self.max_step = c.max_step  # workers a group may gain per interval (it loses one at most)
        self.down_after = c.scale_down_intervals  # intervals in a row wanting fewer before one goes
        self.rate, self.isl, self.osl = (Predictor(c.window) for _ in range(3))
        self.learned = {g: Refinement(self.targets) for g in self.bounds}

    def decide(self, obs: Observation) -> list[Decision]:
        self.rate.add(obs.request_rate)
        if obs.request_rate > 0:
            self.isl.add(obs.avg_isl)
            self.osl.add(obs.avg_osl)
        # Up at once: a step in the load counts before the trend has seen it.
        rate = max(self.rate.predict(), obs.request_rate)
        isl, osl = self.isl.predict(), self.osl.predict()
        disagg = "prefill_workers" in obs.replicas and "prefill_workers" in self.bounds
        kinds: dict[Group, Kind] = (
            {"prefill_workers": "prefill", "workers": "decode"} if disagg else {"workers": "agg"}
        )
        out = []
        for group, kind in kinds.items():
            if group not in self.bounds or group not in obs.replicas:
                continue
            current = obs.replicas[group]
            model = self.capacity.max_rate(isl, osl, kind)
            ttft = obs.ttft_s if kind != "decode" else None  # what each kind of worker answers for
            itl = obs.itl_s if kind != "prefill" else None
            if obs.request_rate > 0 and current > 0:
                self.learned[group].observe(obs.request_rate / current, model, ttft, itl)
            factor = self.learned[group].factor
            per_worker = model * factor * self.headroom
            need = rate / per_worker if per_worker > 0 else float(self.bounds[group].max)
            b = self.bounds[group]
            wanted = b.clamp(math.ceil(need - 1e-9))
            if wanted < current and need > (current - 1) * DOWN_MARGIN:
                wanted = current  # one fewer would run above DOWN_MARGIN of its capacity: not yet
            self._down[group] = self._down.get(group, 0) + 1 if wanted < current else 0
            if wanted < current and self._down[group] < self.down_after and current <= b.max:
                continue  # a dip of a few intervals is noise: shrink only when it lasts
            step = min(self.max_step, wanted - current) if wanted > current else -1
            target = b.clamp(current + step) if wanted != current else current
            if current > b.max:
                target = b.max
            if target == current:
                continue
            seen = _seen(obs, ttft, itl)
            why = (
                f"{seen}; predicted {rate:.2f} req/s x ({isl:.0f} in, {osl:.0f} out); a {kind} worker "
                f"serves {per_worker:.2f} req/s ({self.capacity.describe()}, x{factor:.2f} learned, "
                f"x{self.headroom:g} headroom): {need:.2f} workers' worth, want {wanted}"
            )
            out.append(Decision(group, current, target, why))
        return out


def _seen(obs: Observation, ttft: float | None, itl: float | None) -> str:
    parts = [f"observed {obs.request_rate:.2f} req/s"]
    if ttft is not None:
        parts.append(f"TTFT {ttft * 1000:.0f} ms")
    if itl is not None:
        parts.append(f"ITL {itl * 1000:.1f} ms")
    return ", ".join(parts)


Policy = LoadPolicy | SlaPolicy


def planned_groups(cfg: DynamoConfig) -> dict[Group, Bounds]:
    """The groups the planner scales, with their bounds: prefill workers only when disaggregated."""
    p = cfg.planner
    out: dict[Group, Bounds] = {"workers": Bounds(p.workers.min, p.workers.max)}
    if cfg.disaggregated:
        out["prefill_workers"] = Bounds(p.prefill_workers.min, p.prefill_workers.max)
    return out


def capacity_of(cfg: DynamoConfig) -> Capacity | None:
    """What one worker serves within the targets: the profile given, or the mocker's own timing model;
    None for an engine without a profile."""
    s = cfg.planner.sla
    if s.prefill_tokens_per_s and s.decode_tokens_per_s:
        return ProfiledCapacity(s.prefill_tokens_per_s, s.decode_tokens_per_s)
    if cfg.engine == "mocker":
        return MockerCapacity(cfg.mocker, Targets(s.ttft_ms / 1000, s.itl_ms / 1000))
    return None


def make_policy(cfg: DynamoConfig) -> Policy:
    p = cfg.planner
    bounds = planned_groups(cfg)
    capacity = capacity_of(cfg)
    if p.policy == "load" or (p.policy == "auto" and capacity is None):
        return LoadPolicy(p.load, bounds)
    if capacity is None:
        raise UsageError(
            "the sla policy needs planner.sla.prefill_tokens_per_s and decode_tokens_per_s for this engine",
            hint="measure them with `dynamo planner profile PROFILE`",
        )
    return SlaPolicy(capacity, bounds, p.sla)
