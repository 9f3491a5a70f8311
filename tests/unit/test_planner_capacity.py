"""What one worker serves within the targets, and how the planner learns it from the deployment."""

from __future__ import annotations

import pytest

from dynamo_cli.config.models import MockerConfig, PlannerSlaConfig
from dynamo_cli.planner.capacity import MockerCapacity, ProfiledCapacity, Refinement, Targets
from dynamo_cli.planner.policy import Bounds, Observation, SlaPolicy

TARGETS = Targets(ttft_s=0.4, itl_s=0.03)


def test_the_mocker_capacity_meets_the_targets_at_its_rate_and_misses_them_beyond() -> None:
    cap = MockerCapacity(MockerConfig(num_blocks=1024), TARGETS)
    rate = cap.max_rate(500, 128, "agg")
    assert rate > 0
    at = cap.latency(rate * 0.99, 500, 128, "agg")
    beyond = cap.latency(rate * 1.1, 500, 128, "agg")
    assert at is not None and at.itl_s <= TARGETS.itl_s and at.ttft_s <= TARGETS.ttft_s
    assert beyond is None or beyond.itl_s > TARGETS.itl_s or beyond.ttft_s > TARGETS.ttft_s


def test_the_mocker_capacity_follows_the_engine_settings_and_the_workload() -> None:
    base = MockerCapacity(MockerConfig(num_blocks=1024), TARGETS)
    faster = MockerCapacity(MockerConfig(num_blocks=1024, speedup_ratio=2.0), TARGETS)
    roomier = MockerCapacity(MockerConfig(num_blocks=8192), TARGETS)
    rate = base.max_rate(500, 128, "agg")
    assert faster.max_rate(500, 128, "agg") > rate * 1.5
    assert roomier.max_rate(500, 128, "agg") > rate  # less of the cache used: cheaper decode steps
    assert base.max_rate(2000, 128, "agg") < rate  # longer prompts: fewer requests
    assert base.max_rate(500, 512, "agg") < rate  # longer answers: fewer requests
    # A prefill worker does not decode, a decode worker does not prefill: each serves more alone.
    assert base.max_rate(500, 128, "prefill") > rate and base.max_rate(500, 128, "decode") > rate


def test_a_load_the_cache_cannot_hold_has_no_steady_state() -> None:
    tiny = MockerCapacity(MockerConfig(num_blocks=16), TARGETS)
    assert tiny.latency(50, 2000, 512, "agg") is None


def test_a_profile_adds_up_prefill_and_decode_time_for_an_aggregated_worker() -> None:
    cap = ProfiledCapacity(prefill_tokens_per_s=10_000, decode_tokens_per_s=1_000)
    assert cap.max_rate(1000, 100, "prefill") == pytest.approx(10)
    assert cap.max_rate(1000, 100, "decode") == pytest.approx(10)
    assert cap.max_rate(1000, 100, "agg") == pytest.approx(5)


# Recorded intervals of one worker: (requests/s it served, TTFT, ITL); the model said 4 req/s.
SLOWER_THAN_MODELLED = [(3.0, 0.2, 0.045), (3.0, 0.2, 0.044), (3.2, 0.25, 0.047), (3.1, 0.2, 0.046)]
FASTER_THAN_MODELLED = [(5.0, 0.1, 0.02), (5.5, 0.1, 0.021), (6.0, 0.12, 0.024), (6.0, 0.11, 0.022)]


def test_missing_the_targets_below_the_modelled_capacity_lowers_it() -> None:
    r = Refinement(TARGETS)
    for rate, ttft, itl in SLOWER_THAN_MODELLED:
        r.observe(rate, 4.0, ttft, itl)
    # ITL 1.5x the target at 3 req/s: the worker's real capacity is about 2 req/s, not 4
    assert 0.4 < r.factor < 0.65
    assert r.history == sorted(r.history, reverse=True)  # it only fell


def test_holding_the_targets_above_the_modelled_capacity_raises_it_slowly() -> None:
    r = Refinement(TARGETS)
    for rate, ttft, itl in FASTER_THAN_MODELLED:
        r.observe(rate, 4.0, ttft, itl)
    assert 1.1 < r.factor < 1.8


def test_quiet_or_unmeasured_intervals_teach_nothing_and_the_factor_is_bounded() -> None:
    r = Refinement(TARGETS)
    assert r.observe(0.0, 4.0, 5.0, 5.0) == 1.0
    assert r.observe(3.0, 4.0, None, None) == 1.0
    assert r.observe(2.0, 4.0, 0.1, 0.02) == 1.0  # within the targets, below capacity: as predicted
    for _ in range(50):
        r.observe(0.01, 4.0, 40.0, 3.0)
    assert r.factor == r.lowest


def _sla(hi: int = 4, **cfg: float) -> SlaPolicy:
    cap = ProfiledCapacity(prefill_tokens_per_s=100_000, decode_tokens_per_s=1_000)  # 10 req/s of 100 out
    sla = PlannerSlaConfig(headroom=1.0, ttft_ms=400, itl_ms=30, **cfg)
    return SlaPolicy(cap, {"workers": Bounds(1, hi)}, sla)


def test_a_step_in_the_load_adds_several_workers_at_once() -> None:
    p = _sla(hi=8)
    [d] = p.decide(Observation(0, {"workers": 1}, request_rate=35, avg_isl=10, avg_osl=100))
    assert (d.current, d.target) == (1, 4)  # 3.5 workers' worth, the step at once
    assert "observed 35.00 req/s" in d.reason and "want 4" in d.reason and "x1.00 learned" in d.reason


def test_a_breach_below_the_predicted_capacity_adds_a_worker() -> None:
    p = _sla()
    quiet = Observation(0, {"workers": 2}, request_rate=15, avg_isl=10, avg_osl=100, ttft_s=0.1, itl_s=0.02)
    assert p.decide(quiet) == []  # 1.5 workers' worth on 2: enough
    slow = Observation(1, {"workers": 2}, request_rate=15, avg_isl=10, avg_osl=100, ttft_s=0.1, itl_s=0.08)
    [d] = p.decide(slow)
    assert d.target == 3 and "ITL 80.0 ms" in d.reason


def test_scale_down_waits_for_lasting_headroom_and_goes_one_at_a_time() -> None:
    p = _sla(scale_down_intervals=3)
    seen = [
        p.decide(Observation(t, {"workers": 4}, request_rate=1, avg_isl=10, avg_osl=100)) for t in range(3)
    ]
    assert seen[0] == [] and seen[1] == []
    [d] = seen[2]
    assert (d.current, d.target) == (4, 3)
