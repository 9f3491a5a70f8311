"""The planner's inputs, its profile section, and the local connector (against a stand-in supervisor)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from dynamo_cli.config.loader import load_config
from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.deployment.scaling import LocalConnector, worker_groups
from dynamo_cli.deployment.supervisor import Child, ProcessSpec
from dynamo_cli.errors import StartupError, UsageError
from dynamo_cli.frontend.metrics import FrontendMetrics
from dynamo_cli.planner.capacity import MockerCapacity, ProfiledCapacity
from dynamo_cli.planner.inputs import FrontendSample, Inputs, WorkerLoads, observation_json, parse_metrics
from dynamo_cli.planner.policy import LoadPolicy, SlaPolicy, make_policy, planned_groups
from dynamo_cli.transport.wire import LoadMetrics
from tests.unit.helpers import until


# ---- inputs -------------------------------------------------------------------------------------------
def test_parse_reads_what_the_frontend_exports() -> None:
    m = FrontendMetrics("m")
    for _ in range(3):
        m.count("chat", 200)
    m.count("completions", 400)
    m.inflight.inc()
    m.input_tokens.inc(300)
    m.output_tokens.inc(90)
    for v in (0.1, 0.3):
        m.ttft.observe(v)
    m.itl.observe(0.02)
    m.prefill_queue_depth.set(4)
    s = parse_metrics(generate_latest(m.registry).decode())
    assert s == FrontendSample(
        finished=4,
        inflight=1,
        input_tokens=300,
        output_tokens=90,
        ttft_sum=pytest.approx(0.4),
        ttft_count=2,
        itl_sum=pytest.approx(0.02),
        itl_count=1,
        prefill_queue=4,
    )


def test_an_interval_is_the_difference_of_two_scrapes() -> None:
    inputs = Inputs()
    first = inputs.observe(FrontendSample(finished=10, inflight=2), 100.0, {"workers": 2}, [])
    assert first.request_rate == 0 and first.ttft_s is None  # the first scrape only primes
    later = FrontendSample(
        finished=30,
        inflight=4,
        input_tokens=4400,
        output_tokens=2000,
        ttft_sum=4.4,
        ttft_count=22,
        itl_sum=1.0,
        itl_count=100,
    )
    obs = inputs.observe(later, 110.0, {"workers": 2}, [])
    assert obs.request_rate == pytest.approx(2.2)  # 20 finished + 2 more in flight, over 10 s
    assert obs.avg_isl == pytest.approx(200) and obs.avg_osl == pytest.approx(100)
    assert obs.ttft_s == pytest.approx(0.2) and obs.itl_s == pytest.approx(0.01)
    assert observation_json(obs)["request_rate"] == 2.2
    # A restarted frontend (counters went back) is a fresh start, not a negative rate.
    again = inputs.observe(FrontendSample(finished=1), 120.0, {"workers": 2}, [])
    assert again.request_rate == 0


def test_kv_utilisation_is_the_mean_over_live_workers() -> None:
    loads = WorkerLoads()
    loads.update(1, LoadMetrics(running=3, waiting=0, active_blocks=80, total_blocks=100))
    loads.update(2, LoadMetrics(running=1, waiting=2, active_blocks=20, total_blocks=100))
    loads.update(3, LoadMetrics(running=9, waiting=9, active_blocks=100, total_blocks=100))  # gone
    inputs = Inputs(loads)
    obs = inputs.observe(FrontendSample(), 1.0, {"workers": 3}, [1, 2, 4])  # 4: not heard from yet
    assert obs.kv_utilization == pytest.approx((0.8 + 0.2 + 0) / 3)
    assert 3 not in loads.latest  # a departed worker is forgotten


# ---- profile ------------------------------------------------------------------------------------------
def test_planner_section_is_checked() -> None:
    with pytest.raises(ValidationError, match="min \\(3\\) is above max \\(2\\)"):
        DynamoConfig.model_validate({"planner": {"workers": {"min": 3, "max": 2}}})
    with pytest.raises(ValidationError, match="kv_low must be below kv_high"):
        DynamoConfig.model_validate({"planner": {"load": {"kv_low": 0.8, "kv_high": 0.7}}})
    with pytest.raises(ValidationError, match="dynamo planner profile"):
        DynamoConfig.model_validate({"engine": "vllm", "planner": {"enabled": True, "policy": "sla"}})
    # The mocker needs no profile: its capacity comes from its own timing model.
    DynamoConfig.model_validate({"engine": "mocker", "planner": {"enabled": True, "policy": "sla"}})
    with pytest.raises(ValidationError, match="workers starts with 6 worker\\(s\\), outside"):
        DynamoConfig.model_validate({"planner": {"enabled": True}, "workers": {"count": 6}})
    # Off, the section is not held against the profile.
    assert DynamoConfig.model_validate({"workers": {"count": 6}}).workers.count == 6


def test_policies_and_groups_come_from_the_profile() -> None:
    agg = load_config("agg", flags={"planner.enabled": True, "planner.workers.max": 5})
    assert set(planned_groups(agg)) == {"workers"} and planned_groups(agg)["workers"].max == 5
    assert isinstance(make_policy(agg), LoadPolicy)  # agg's engine (vLLM) has no profile: auto is load
    mocked = load_config("agg", flags={"planner.enabled": True, "engine": "mocker"})
    policy = make_policy(mocked)
    assert isinstance(policy, SlaPolicy) and isinstance(policy.capacity, MockerCapacity)
    dis = load_config(
        "disagg",
        flags={
            "planner.enabled": True,
            "planner.policy": "sla",
            "planner.sla.prefill_tokens_per_s": 8000,
            "planner.sla.decode_tokens_per_s": 900,
        },
    )
    assert set(planned_groups(dis)) == {"workers", "prefill_workers"}
    policy = make_policy(dis)
    assert isinstance(policy, SlaPolicy) and isinstance(policy.capacity, ProfiledCapacity)
    assert policy.capacity.decode_tokens_per_s == 900


def test_groups_get_a_slot_per_worker_they_may_ever_have(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    cfg = load_config("agg", flags={"engine": "vllm", "workers.count": 1, "planner.enabled": True})
    [g] = worker_groups(cfg)
    assert (g.key, g.role, g.initial, len(g.slots)) == ("workers", "worker", 1, 4)
    assert [s["VLLM_CPU_OMP_THREADS_BIND"] for s in g.slots] == ["0-1", "2-3", "4-5", "6-7"]
    gpu = load_config(
        "agg",
        flags={
            "engine": "vllm",
            "workers.gpus": "0-3",
            "workers.tensor_parallel_size": 2,
            "planner.enabled": True,
            "planner.workers.max": 4,
        },
    )
    monkeypatch.setattr("dynamo_cli.deployment.placement.gpu_count", lambda: 4)
    with pytest.raises(UsageError, match="room for 2 worker"):
        worker_groups(gpu)


# ---- the local connector ------------------------------------------------------------------------------
class FakeSupervisor:
    """Starts and stops nothing; records what the connector asked, in order. A gated one holds each
    start until the test opens the gate."""

    def __init__(self, fail: set[str] | None = None, gated: bool = False):
        self.calls: list[str] = []
        self.fail = fail or set()
        self.gate = asyncio.Event() if gated else None

    async def add(self, spec: ProcessSpec, timeout: float) -> Child:
        self.calls.append(f"add {spec.name}")
        if self.gate is not None:
            await self.gate.wait()
        if spec.name in self.fail:
            raise StartupError(f"{spec.name} exited during start-up")
        return Child(spec, "cyan")

    async def remove(self, child: Child) -> None:
        self.calls.append(f"remove {child.spec.name}")


def _connector(tmp_path: Path, sup: FakeSupervisor, *, initial: int = 1) -> LocalConnector:
    cfg = load_config("agg", flags={"workers.count": initial, "planner.enabled": True})
    [g] = worker_groups(cfg)
    c = LocalConnector(sup, {"workers": g}, tmp_path / "c.yaml", tmp_path, 10.0)  # type: ignore[arg-type]
    c.adopt("workers", [Child(g.spec(i, c.config_path, tmp_path), "cyan") for i in range(initial)])
    return c


def test_scale_up_fills_the_lowest_free_slots_and_down_removes_the_highest(tmp_path: Path) -> None:
    async def go() -> list[Any]:
        sup = FakeSupervisor()
        c = _connector(tmp_path, sup)
        await c.scale("workers", 3, "load")
        await c.settle()
        up = (await c.replicas(), sorted(c.running["workers"]))
        await c.scale("workers", 1, "quiet")
        await c.settle()
        await c.scale("workers", 2, "load again")
        await c.settle()
        return [up, sup.calls, sorted(c.running["workers"])]

    up, calls, after = asyncio.run(go())
    assert up == ({"workers": 3}, [0, 1, 2])
    assert calls == ["add worker-1", "add worker-2", "remove worker-2", "remove worker-1", "add worker-1"]
    assert after == [0, 1]


def test_a_worker_that_cannot_start_lowers_the_target(tmp_path: Path) -> None:
    async def go() -> tuple[dict[str, int], list[str]]:
        sup = FakeSupervisor(fail={"worker-2"})
        c = _connector(tmp_path, sup)
        await c.scale("workers", 3, "load")
        await c.settle()
        return dict(await c.replicas()), sup.calls

    replicas, calls = asyncio.run(go())
    assert replicas == {"workers": 2} and calls == ["add worker-1", "add worker-2"]


def test_asked_down_while_starting(tmp_path: Path) -> None:
    async def go() -> tuple[list[str], list[int]]:
        sup = FakeSupervisor(gated=True)
        c = _connector(tmp_path, sup)
        await c.scale("workers", 3, "load")
        await until(lambda: "add worker-1" in sup.calls)  # worker-1 is starting
        await c.scale("workers", 1, "quiet")
        assert sup.gate is not None
        sup.gate.set()
        await c.settle()
        return sup.calls, sorted(c.running["workers"])

    calls, left = asyncio.run(go())
    assert left == [0]
    assert calls == ["add worker-1", "add worker-2", "remove worker-2", "remove worker-1"]


def test_several_workers_start_side_by_side(tmp_path: Path) -> None:
    async def go() -> tuple[dict[str, int], list[int], dict[str, int]]:
        sup = FakeSupervisor(gated=True)
        c = _connector(tmp_path, sup)
        await c.scale("workers", 4, "step")
        await until(lambda: len(sup.calls) == 3)  # all three asked for before any is ready
        starting = dict(c.starting)
        assert sup.gate is not None
        sup.gate.set()
        await c.settle()
        return starting, sorted(c.running["workers"]), dict(c.starting)

    starting, running, after = asyncio.run(go())
    assert starting == {"workers": 3} and running == [0, 1, 2, 3] and after == {"workers": 0}


def test_scale_outside_the_slots_is_refused(tmp_path: Path) -> None:
    c = _connector(tmp_path, FakeSupervisor())
    with pytest.raises(UsageError, match=r"0\.\.4 workers, not 5"):
        asyncio.run(c.scale("workers", 5, "too many"))
    with pytest.raises(UsageError, match="no prefill_workers"):
        asyncio.run(c.scale("prefill_workers", 1, "not here"))


def test_frontend_counts_the_planners_decisions() -> None:
    m = FrontendMetrics("m")
    m.count_decision({"group": "workers", "current": 1, "target": 2, "reason": "r"})
    m.count_decision({"group": "workers", "current": 2, "target": 3, "reason": "r"})
    m.count_decision({"group": "prefill_workers", "current": 2, "target": 1, "reason": "r"})
    text = generate_latest(m.registry).decode()
    assert 'dynamo_planner_decisions_total{direction="up",group="workers"} 2.0' in text
    assert 'dynamo_planner_decisions_total{direction="down",group="prefill_workers"} 1.0' in text
    assert 'dynamo_planner_target_replicas{group="workers"} 3.0' in text
