"""The KV-aware router in a real deployment: prefixes go where they are cached."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from dynamo_cli.runtime.handle import start

pytestmark = pytest.mark.e2e


def _cached_fractions(base_url: str, model: str, rounds: int = 3) -> list[float]:
    """4 long distinct prompts, each asked ``rounds`` times in turn: cached share of each repeat."""
    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=30)
    prompts = [f"Document {k}: " + " ".join(f"w{k}x{i}" for i in range(250)) for k in range(4)]
    out = []
    for r in range(rounds):
        for p in prompts:
            resp = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": p}], max_tokens=2
            )  # type: ignore[arg-type]
            assert resp.usage is not None and resp.usage.prompt_tokens_details is not None
            if r > 0:
                out.append(resp.usage.prompt_tokens_details.cached_tokens / resp.usage.prompt_tokens)
    return out


def test_kv_mode_sends_every_repeat_to_its_prefix(tmp_path: Path) -> None:
    dep = start(tmp_path, "agg", "--engine", "mocker", "--workers", "3", "--router-mode", "kv", "--speedup", "50",
                "--set", "router.replicas=0")  # fmt: skip
    try:
        fractions = _cached_fractions(dep.base_url, dep.model)
        assert min(fractions) > 0.9, fractions  # every repeat found its prefix
        metrics = httpx.get(dep.url + "/metrics", timeout=10).text
        values = {
            ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in metrics.splitlines() if ln and ln[0] != "#"
        }
        assert (
            values["dynamo_router_overlap_blocks_total"] / values["dynamo_router_prompt_blocks_total"] > 0.5
        )
        assert values["dynamo_router_kv_events_total"] > 0
        assert values["dynamo_router_approximate_workers"] == 0
    finally:
        dep.stop()


def test_round_robin_misses_what_kv_finds(tmp_path: Path) -> None:
    dep = start(
        tmp_path,
        "agg",
        "--engine",
        "mocker",
        "--workers",
        "3",
        "--router-mode",
        "round-robin",
        "--speedup",
        "50",
    )
    try:
        fractions = _cached_fractions(dep.base_url, dep.model)
        assert min(fractions) < 0.5, fractions  # 4 prompts over 3 workers: repeats land elsewhere
    finally:
        dep.stop()


def test_approximate_mode_warns_and_still_routes_to_the_prefix(tmp_path: Path) -> None:
    dep = start(tmp_path, "agg", "--engine", "mocker", "--workers", "3", "--router-mode", "kv", "--speedup", "50",
                "--set", "router.kv_events=false")  # fmt: skip
    try:
        fractions = _cached_fractions(dep.base_url, dep.model)
        assert min(fractions) > 0.9, fractions
        assert "APPROXIMATE ROUTING" in dep.log_text()
    finally:
        dep.stop()
