"""The planner on its defaults: only the targets, the bounds and the engine's own settings are set.

Open-loop loads (arrivals do not wait for answers) sized from the mocker's capacity at the targets:
a ramp, a step, and a disaggregated deployment whose prefill work alone grows."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynamo_cli.config.models import MockerConfig
from dynamo_cli.deployment.handle import Deployment, start
from dynamo_cli.planner.capacity import MockerCapacity, Targets
from tests.e2e.helpers import wait_for

pytestmark = pytest.mark.e2e

TTFT_MS, ITL_MS = 400, 30
BLOCKS = 1024
TARGETS = ["--set", f"planner.sla.ttft_ms={TTFT_MS}", "--set", f"planner.sla.itl_ms={ITL_MS}"]
SENTENCE = "Tell me a long story about the sea. "  # ~10 tokens


class OpenLoop:
    """Requests at ``rate(t)`` a second (t: seconds since the start), each on its own, in a thread."""

    def __init__(
        self, dep: Deployment, rate: Callable[[float], float], body: Callable[[int], dict[str, Any]]
    ):
        self.dep, self.rate, self.body = dep, rate, body
        self.statuses: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> OpenLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(180)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=400)
        async with httpx.AsyncClient(base_url=self.dep.base_url, timeout=120, limits=limits) as client:
            tasks: set[asyncio.Task[None]] = set()

            async def one(i: int) -> None:
                try:
                    r = await client.post("/completions", json=self.body(i))
                    self.statuses.append(r.status_code)
                except httpx.HTTPError:
                    self.statuses.append(0)

            t0, next_at = time.monotonic(), 0.0
            for i in itertools.count():
                if self.stop.is_set():
                    break
                rate = self.rate(time.monotonic() - t0)
                if rate <= 0:
                    await asyncio.sleep(0.05)
                    next_at = time.monotonic() - t0
                    continue
                await asyncio.sleep(max(0.0, t0 + next_at - time.monotonic()))
                task = asyncio.create_task(one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += 1.0 / rate
            await asyncio.gather(*tasks)


def _events(dep: Deployment, name: str) -> list[dict[str, Any]]:
    return [e for e in list(dep.events) if e.get("event") == name]


def _ready(dep: Deployment, group: str = "workers") -> int:
    reps = _events(dep, "replicas")
    return int(reps[-1]["ready"].get(group, 0)) if reps else 1


def _agg_body(model: str) -> Callable[[int], dict[str, Any]]:
    return lambda i: {
        "model": model,
        "prompt": f"{i} " + SENTENCE * 30,
        "max_tokens": 128,
        "ignore_eos": True,
    }


def _capacity() -> float:
    """One worker's requests/s at the targets for the agg workload, as the planner itself computes it."""
    cap = MockerCapacity(MockerConfig(num_blocks=BLOCKS), Targets(TTFT_MS / 1000, ITL_MS / 1000))
    return cap.max_rate(310, 128, "agg")


def _agg_planner(tmp_path: Path) -> Deployment:
    """One mocker worker and the planner (bounds 1..4) on its defaults, once it has reported."""
    dep = start(
        tmp_path, "agg", "--engine", "mocker", "--workers", "1", "--planner", *TARGETS,
        "--set", f"mocker.num_blocks={BLOCKS}", "--set", "planner.workers.max=4",
    )  # fmt: skip
    try:
        wait_for(lambda: bool(_events(dep, "replicas")), 15, "the planner's first replica report")
    except AssertionError:
        dep.stop()
        raise
    return dep


def _longest_miss(dep: Deployment) -> int:
    """The most intervals in a row whose mean TTFT or ITL missed its target."""
    longest = run = 0
    for obs in _events(dep, "observation"):
        missed = (obs["ttft_s"] or 0) > TTFT_MS / 1000 or (obs["itl_s"] or 0) > ITL_MS / 1000
        run = run + 1 if missed else 0
        longest = max(longest, run)
    return longest


def test_a_ramp_on_the_defaults_scales_up_in_time_and_back_down(tmp_path: Path) -> None:
    cap = _capacity()

    def ramp(t: float) -> float:  # 0.3x to 3x capacity over 20 s, held 10 s, down over 20 s, then idle
        up, hold, down = 20.0, 10.0, 20.0
        lo, hi = 0.3 * cap, 3.0 * cap
        if t < up:
            return lo + (hi - lo) * t / up
        if t < up + hold:
            return hi
        if t < up + hold + down:
            return hi - (hi - lo) * (t - up - hold) / down
        return 0.0

    dep = _agg_planner(tmp_path)
    try:
        with OpenLoop(dep, ramp, _agg_body(dep.model)) as load:
            wait_for(lambda: _ready(dep) >= 3, 40, "three workers or more at the ramp's top")
            time.sleep(32)  # the rest of the ramp
        wait_for(lambda: _ready(dep) == 1, 90, "back to one worker once the load is gone")
        assert load.statuses and set(load.statuses) == {200}
        scale = _events(dep, "scale")
        ups = [e for e in scale if e["to"] > e["from"]]
        downs = [e for e in scale if e["to"] < e["from"]]
        assert ups and downs
        assert all(e["from"] - e["to"] == 1 for e in downs)  # careful down: one at a time
        assert all("predicted" in e["reason"] and "learned" in e["reason"] for e in scale)  # explained
        assert _longest_miss(dep) <= 2, _events(dep, "observation")
    finally:
        dep.stop()


def test_a_step_in_the_load_adds_several_workers_at_once(tmp_path: Path) -> None:
    cap = _capacity()
    dep = _agg_planner(tmp_path)
    try:
        with OpenLoop(dep, lambda t: 2.5 * cap, _agg_body(dep.model)) as load:
            wait_for(lambda: _ready(dep) >= 3, 30, "the workers it asked for")
        ups = [e for e in _events(dep, "scale") if e["to"] > e["from"]]
        # The first interval saw part of the step; by the second decision the gap is closed, several
        # workers at once.
        assert ups[1]["to"] >= 3 if len(ups) > 1 else ups[0]["to"] >= 3, ups
        assert max(e["to"] - e["from"] for e in ups) >= 2, ups
        assert set(load.statuses) == {200}
    finally:
        dep.stop()


def test_rising_prefill_work_grows_only_the_prefill_workers(tmp_path: Path) -> None:
    """Long prompts, one output token each: the prefill side's work rises, the decode side's does not."""
    dep = start(
        tmp_path, "disagg", "--engine", "mocker", "--planner", *TARGETS,
        "--set", "disagg.conditional_disagg=false", "--set", "mocker.prefill_ms=[0,0.1,10]",
        "--set", "planner.workers.max=3", "--set", "planner.prefill_workers.max=3",
    )  # fmt: skip
    try:
        wait_for(lambda: bool(_events(dep, "replicas")), 15, "the planner's first replica report")
        body = lambda i: {  # noqa: E731
            "model": dep.model, "prompt": f"{i} " + SENTENCE * 150, "max_tokens": 1, "ignore_eos": True
        }  # fmt: skip
        cap = MockerCapacity(
            MockerConfig(prefill_ms=(0, 0.1, 10)), Targets(TTFT_MS / 1000, ITL_MS / 1000)
        ).max_rate(1500, 1, "prefill")
        with OpenLoop(dep, lambda t: min(3.0, 0.5 + t / 10) * cap, body) as load:
            wait_for(lambda: _ready(dep, "prefill_workers") >= 2, 40, "a second prefill worker")
        scale = _events(dep, "scale")
        assert {e["group"] for e in scale} == {"prefill_workers"}, scale
        assert _ready(dep, "workers") == 1
        assert set(load.statuses) == {200}
    finally:
        dep.stop()
