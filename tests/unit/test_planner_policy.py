"""The planner's scaling policies, replayed over made-up intervals."""

from __future__ import annotations

import pytest

from dynamo_cli.config.models import PlannerLoadConfig, PlannerSlaConfig
from dynamo_cli.planner.capacity import ProfiledCapacity
from dynamo_cli.planner.policy import (
    Bounds,
    LoadPolicy,
    Observation,
    Predictor,
    SlaPolicy,
)


def _load(hysteresis: int = 2, cooldown: float = 30, lo: int = 1, hi: int = 4) -> LoadPolicy:
    cfg = PlannerLoadConfig(hysteresis=hysteresis, cooldown_s=cooldown)
    return LoadPolicy(cfg, {"workers": Bounds(lo, hi), "prefill_workers": Bounds(lo, hi)})


def test_kv_pressure_adds_a_decode_worker_only_after_the_hysteresis() -> None:
    p = _load(hysteresis=3)
    seen = [p.decide(Observation(t * 10, {"workers": 2}, kv_utilization=0.9)) for t in range(3)]
    assert seen[0] == [] and seen[1] == []
    [d] = seen[2]
    assert (d.group, d.current, d.target) == ("workers", 2, 3)
    assert "KV utilisation 90%" in d.reason and "for 3 intervals" in d.reason


def test_a_streak_breaks_when_the_signal_comes_back_inside_the_band() -> None:
    p = _load(hysteresis=2)
    assert p.decide(Observation(0, {"workers": 2}, kv_utilization=0.9)) == []
    assert p.decide(Observation(10, {"workers": 2}, kv_utilization=0.5)) == []  # back in band
    assert p.decide(Observation(20, {"workers": 2}, kv_utilization=0.9)) == []
    assert len(p.decide(Observation(30, {"workers": 2}, kv_utilization=0.9))) == 1


def test_cooldown_and_one_worker_per_interval() -> None:
    p = _load(hysteresis=1, cooldown=30)
    [d] = p.decide(Observation(0, {"workers": 1}, kv_utilization=0.99))
    assert d.change == 1
    assert p.decide(Observation(10, {"workers": 2}, kv_utilization=0.99)) == []  # cooling down
    assert p.decide(Observation(20, {"workers": 2}, kv_utilization=0.99)) == []
    [d] = p.decide(Observation(31, {"workers": 2}, kv_utilization=0.99))
    assert (d.current, d.target) == (2, 3)


def test_bounds_are_honoured_both_ways() -> None:
    p = _load(hysteresis=1, cooldown=0, lo=1, hi=2)
    assert p.decide(Observation(0, {"workers": 2}, kv_utilization=0.99)) == []  # at max
    assert p.decide(Observation(1, {"workers": 1}, kv_utilization=0.0)) == []  # at min
    [d] = p.decide(Observation(2, {"workers": 5}, kv_utilization=0.5))  # scaled past max by someone else
    assert (d.target, d.reason) == (2, "outside bounds 1..2")


def test_prefill_queue_depth_per_worker_scales_prefill_workers() -> None:
    p = _load(hysteresis=2, cooldown=0)
    obs = Observation(0, {"workers": 1, "prefill_workers": 2}, prefill_queue_depth=6, kv_utilization=0.5)
    assert p.decide(obs) == []
    [d] = p.decide(Observation(1, obs.replicas, prefill_queue_depth=6, kv_utilization=0.5))
    assert (d.group, d.target) == ("prefill_workers", 3) and "3.00 per worker" in d.reason
    for t in (2, 3):
        out = p.decide(Observation(t, {"workers": 1, "prefill_workers": 3}, kv_utilization=0.5))
    assert [(d.group, d.target) for d in out] == [("prefill_workers", 2)]


def test_predictor_follows_a_trend_and_never_goes_negative() -> None:
    pr = Predictor(window=4)
    assert pr.predict() == 0
    for v in (1, 2, 3, 4):
        pr.add(v)
    assert pr.predict() == pytest.approx(5)
    for v in (3, 2, 1, 0):
        pr.add(v)
    assert pr.predict() == 0


def test_sla_policy_sizes_groups_from_the_profile_one_step_at_a_time() -> None:
    prof = ProfiledCapacity(prefill_tokens_per_s=10_000, decode_tokens_per_s=1_000)
    p = SlaPolicy(
        prof,
        {"workers": Bounds(1, 8), "prefill_workers": Bounds(1, 8)},
        PlannerSlaConfig(headroom=1.0, max_step=1),
    )
    reps = {"workers": 1, "prefill_workers": 1}
    # 10 req/s x 3000 prompt tokens = 3 prefill workers; x 200 output tokens = 2 decode workers
    [a, b] = p.decide(Observation(0, reps, request_rate=10, avg_isl=3000, avg_osl=200))
    assert (a.group, a.target, b.group, b.target) == ("prefill_workers", 2, "workers", 2)
    assert "want 3" in a.reason and "want 2" in b.reason
    [a] = p.decide(Observation(1, {"workers": 2, "prefill_workers": 2}, request_rate=10, avg_isl=3000,
                               avg_osl=200))  # fmt: skip
    assert (a.group, a.target) == ("prefill_workers", 3)


def test_sla_policy_for_aggregated_workers_adds_prefill_and_decode_time() -> None:
    prof = ProfiledCapacity(prefill_tokens_per_s=10_000, decode_tokens_per_s=1_000)
    p = SlaPolicy(prof, {"workers": Bounds(1, 3)}, PlannerSlaConfig(headroom=1.0, max_step=8))
    [d] = p.decide(Observation(0, {"workers": 1}, request_rate=5, avg_isl=2000, avg_osl=100))
    assert d.target == 2  # 1.0 + 0.5 workers' worth
    [d] = p.decide(Observation(1, {"workers": 2}, request_rate=50, avg_isl=2000, avg_osl=100))
    assert d.target == 3  # capped by the bounds
    quiet = SlaPolicy(prof, {"workers": Bounds(1, 3)}, PlannerSlaConfig(max_step=8, scale_down_intervals=1))
    [d] = quiet.decide(Observation(0, {"workers": 3}, request_rate=0))
    assert d.target == 2  # down one at a time


def test_sla_policy_shrinks_only_when_the_lower_need_lasts() -> None:
    prof = ProfiledCapacity(prefill_tokens_per_s=10_000, decode_tokens_per_s=1_000)
    p = SlaPolicy(prof, {"workers": Bounds(1, 4)}, PlannerSlaConfig(headroom=1.0, scale_down_intervals=3))
    idle = [p.decide(Observation(t, {"workers": 3}, request_rate=0)) for t in range(3)]
    assert idle[0] == [] and idle[1] == []
    [d] = idle[2]
    assert (d.current, d.target) == (3, 2)
    # Above the upper bound (someone scaled it by hand): back at once.
    [d] = p.decide(Observation(9, {"workers": 6}, request_rate=0))
    assert (d.current, d.target) == (6, 4)
