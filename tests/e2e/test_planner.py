"""The planner inside `dynamo run`: a load ramp with mocker workers, watched through the launcher's events."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.deployment.handle import Deployment, process_alive, start
from tests.e2e.helpers import scrape, wait_for

pytestmark = pytest.mark.e2e

INTERVAL_S = 0.5
OUTPUT_TOKENS = 48
PLANNER = [
    "--engine", "mocker", "--workers", "1", "--planner", "--speedup", "2",
    "--set", f"planner.interval_s={INTERVAL_S}", "--set", "planner.policy=load",
    "--set", "planner.workers.min=1", "--set", "planner.workers.max=3",
    "--set", "planner.load.hysteresis=2", "--set", "planner.load.cooldown_s=1",
    "--set", "planner.load.kv_high=0.6", "--set", "planner.load.kv_low=0.25",
    # A small KV cache, so a dozen concurrent requests fill most of one worker's.
    "--set", "mocker.num_blocks=96",
]  # fmt: skip


class Load:
    """``users`` clients in a loop, each one request after the other, in a thread of its own."""

    def __init__(self, dep: Deployment, users: int):
        self.dep, self.users = dep, users
        self.results: list[tuple[int, int]] = []  # (status, completion tokens)
        self.stop = threading.Event()
        self.ids = itertools.count()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(120)

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.dep.base_url, timeout=120) as client:

            async def user() -> None:
                while not self.stop.is_set():
                    body = {  # a prompt of its own: no shared prefix blocks, each request holds its KV
                        "model": self.dep.model,
                        "prompt": f"{next(self.ids)} Tell me a long story about the sea. " * 8,
                        "max_tokens": OUTPUT_TOKENS,
                        "ignore_eos": True,
                    }
                    try:
                        r = await client.post("/completions", json=body)
                        tokens = r.json().get("usage", {}).get("completion_tokens", 0) if r.is_success else 0
                        self.results.append((r.status_code, tokens))
                    except httpx.HTTPError as e:
                        self.results.append((0, repr(e)))  # type: ignore[arg-type]

            await asyncio.gather(*(user() for _ in range(self.users)))


def _replicas(dep: Deployment) -> list[dict[str, Any]]:
    return [e for e in list(dep.events) if e.get("event") == "replicas"]


def _ready(dep: Deployment) -> int:
    events = _replicas(dep)
    return events[-1]["ready"]["workers"] if events else 1


def test_load_ramp_scales_up_then_down_without_losing_a_request(tmp_path: Path) -> None:
    dep = start(tmp_path, "agg", *PLANNER)
    try:
        wait_for(lambda: bool(_replicas(dep)), 10, "the planner's first replica report")
        assert _ready(dep) == 1
        with Load(dep, users=20) as heavy:
            wait_for(lambda: _ready(dep) >= 2, 30, "a second worker under load")
            wait_for(lambda: _ready(dep) == 3, 40, "the third worker")
            time.sleep(6 * INTERVAL_S)  # at the upper bound under load: it must stay there
        assert _ready(dep) == 3
        # Light load: the planner removes workers while requests are in flight on them.
        with Load(dep, users=2) as light:
            wait_for(lambda: _ready(dep) == 1, 60, "back to one worker")
            time.sleep(6 * INTERVAL_S)  # at the lower bound: it must stay there
        assert _ready(dep) == 1
        results = heavy.results + light.results
        assert results and all(r == (200, OUTPUT_TOKENS) for r in results), [
            r for r in results if r != (200, OUTPUT_TOKENS)
        ][:5]
        scale = [e for e in dep.events if e.get("event") == "scale"]
        assert [(e["from"], e["to"]) for e in scale] == [(1, 2), (2, 3), (3, 2), (2, 1)], scale
        assert all("KV utilisation" in e["reason"] for e in scale)
        for e in _replicas(dep):  # bounds held at every moment
            assert 1 <= e["target"]["workers"] <= 3
            assert e["ready"]["workers"] + e["starting"].get("workers", 0) <= 3
        metrics = scrape(dep.url + "/metrics")
        assert metrics['dynamo_planner_decisions_total{direction="up",group="workers"}'] == 2
        assert metrics['dynamo_planner_decisions_total{direction="down",group="workers"}'] == 2
        assert metrics['dynamo_planner_target_replicas{group="workers"}'] == 1
        # The workers it removed are gone; the deployment still serves.
        started = {n: p for e in _replicas(dep) for n, p in e["processes"].items()}
        assert set(started) == {"worker-0", "worker-1", "worker-2"}
        assert [n for n, p in started.items() if process_alive(p)] == ["worker-0"]
        assert "exited unexpectedly" not in dep.log_text()
        assert "could not add" not in dep.log_text()  # every scale-up started its worker first time
    finally:
        code = dep.stop()
    assert code == 130


def test_planner_profile_measures_one_worker_and_writes_sla_settings(tmp_path: Path) -> None:
    out = tmp_path / "sla.yaml"
    argv = [
        sys.executable, "-m", "dynamo_cli", "planner", "profile", "agg", "--engine", "mocker",
        "--ttft-ms", "200", "--itl-ms", "20", "--isl", "300", "--osl", "32", "--set", "mocker.num_blocks=128",
        "--step-s", "1.5", "--max-rps", "8", "-o", str(out), "--json",
    ]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    decode = result["steps"]["decode"]
    # The decode sweep found its limit: a step missed the ITL target, and the capacity is the fastest
    # passing rate below it, times the output length.
    missed = [s for s in decode if not s["passed"]]
    assert missed and all(s["itl_p90_s"] > 0.020 or s["ttft_p90_s"] > 0.2 or s["failed"] for s in missed)
    best = max(
        (s for s in decode if s["passed"] and s["rate"] < min(m["rate"] for m in missed)),
        key=lambda s: s["rate"],
    )
    assert result["decode_tokens_per_s"] == pytest.approx(best["rate"] * 32, rel=1e-3)
    assert result["prefill_tokens_per_s"] > result["decode_tokens_per_s"]  # prefill is the cheap part
    assert all(s["prompt_tokens"] > 300 for s in result["steps"]["prefill"])
    # The written settings are a valid planner section.
    written = yaml.safe_load(out.read_text())
    cfg = DynamoConfig.model_validate({**written, "planner": {**written["planner"], "enabled": True}})
    assert cfg.planner.policy == "sla" and cfg.planner.sla.itl_ms == 20
    # A sweep that never missed says its figure is only a floor.
    capped = all(s["passed"] for s in result["steps"]["prefill"])
    assert ("every prefill step passed" in " ".join(r.stderr.split())) == capped


def test_prefill_queue_grows_and_shrinks_the_prefill_workers(tmp_path: Path) -> None:
    # Every prompt goes to the prefill workers (slow prefill: ~0.5 ms a token), decode is pinned at 1.
    dep = start(
        tmp_path, "disagg", "--engine", "mocker", "--planner", "--speedup", "1",
        "--set", "disagg.conditional_disagg=false", "--set", "disagg.max_prefill_queue_size=1000",
        "--set", "mocker.prefill_ms=[0,0.5,10]",
        "--set", f"planner.interval_s={INTERVAL_S}", "--set", "planner.load.cooldown_s=1",
        "--set", "planner.policy=load",
        "--set", "planner.workers.min=1", "--set", "planner.workers.max=1",
        "--set", "planner.prefill_workers.min=1", "--set", "planner.prefill_workers.max=2",
        "--set", "planner.load.queue_high=1", "--set", "planner.load.queue_low=0.2",
    )  # fmt: skip
    try:
        wait_for(lambda: bool(_replicas(dep)), 10, "the planner's first replica report")
        with Load(dep, users=12) as load:
            wait_for(
                lambda: _replicas(dep)[-1]["ready"].get("prefill_workers") == 2, 40, "a second prefill worker"
            )
        wait_for(lambda: _replicas(dep)[-1]["ready"].get("prefill_workers") == 1, 40, "back to one")
        assert load.results and all(r == (200, OUTPUT_TOKENS) for r in load.results)
        scale = [(e["group"], e["from"], e["to"]) for e in dep.events if e.get("event") == "scale"]
        assert scale == [("prefill_workers", 1, 2), ("prefill_workers", 2, 1)], scale
        reasons = [e["reason"] for e in dep.events if e.get("event") == "scale"]
        assert all("prefill queue" in r for r in reasons)
        metrics = scrape(dep.url + "/metrics")
        remote = 'dynamo_disagg_prefill_decisions_total{model="%s",outcome="remote",reason="always_remote"}'
        assert metrics.get(remote % dep.model, 0) > 0
    finally:
        dep.stop()
