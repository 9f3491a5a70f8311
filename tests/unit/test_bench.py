"""dynamo bench's workload and report (the load's pacing, on the real clock, is in
tests/integration/test_bench_pacing.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynamo_cli.bench.multi_round import LoadResult, LoadSpec, Record
from dynamo_cli.bench.report import compare_rows, pct, summarize, summary_block
from dynamo_cli.bench.workload import Workload, iter_sharegpt


def _workload(rounds: int = 3, answer: int = 4) -> Workload:
    return Workload(num_rounds=rounds, shared_system_prompt=50, user_history_prompt=30, answer_len=answer)


def test_summary_follows_production_stack_definitions() -> None:
    spec = LoadSpec("http://x/v1", "m", num_users=2, num_rounds=1, qps=2.0)
    res = LoadResult(spec, epoch=1000.0)
    res.records = [
        Record(
            0,
            0,
            launch=0.0,
            finish=2.0,
            ttft=0.5,
            generation_time=1.0,
            prompt_tokens=100,
            generation_tokens=10,
            itls=[0.1] * 9,
        ),
        Record(
            1,
            0,
            launch=1.0,
            finish=4.0,
            ttft=1.5,
            generation_time=0.5,
            prompt_tokens=300,
            generation_tokens=20,
            itls=[0.025] * 19,
        ),
        Record(1, 1, launch=2.0, finish=2.5, error="HTTP 500: boom"),
    ]
    s = summarize(res)
    # 2 finished over the time from the first launch to the last finish
    assert s["duration_s"] == 4.0 and s["processing_speed"] == 0.5
    assert s["input_tokens_per_s"] == 100 and s["output_tokens_per_s"] == 7.5
    assert s["avg_generation_throughput"] == (10 / 1.0 + 20 / 0.5) / 2
    assert s["avg_ttft_s"] == 1.0 and s["failed"] == 1 and s["qps_sent"] == 1.0
    assert s["itl_p50_ms"] == pytest.approx(25) and s["itl_p99_ms"] == pytest.approx(100)
    assert s["time_range"] == [1000.0, 1004.0]
    block = summary_block(s)
    for line in (
        "QPS: 2.0000 reqs/s (configured; measured sending rate 1.0000 reqs/s)",
        "Processing speed: 0.5000 reqs/s",
        "Requests on-the-fly: 0",
        "Input tokens per second: 100.0000 tokens/s",
        "Output tokens per second: 7.5000 tokens/s",
        "Average generation throughput (per request): 25.0000 tokens/req/s",
        "Average TTFT: 1.0000s",
        "Time range: 1000.0 - 1004.0 (4.00s)",
    ):
        assert line in block


def test_percentiles_are_nearest_rank() -> None:
    assert pct([], 0.5) is None
    assert pct([3.0, 1.0, 2.0], 0.5) == 2.0
    assert pct(list(range(1, 101)), 0.99) == 99 and pct(list(range(1, 101)), 0.9) == 90


def test_compare_rows_show_each_run_relative_to_the_first() -> None:
    a = {"qps": 2.0, "itl_p50_ms": 10.0, "requests": 8}
    b = {"qps": 2.0, "itl_p50_ms": 5.0, "requests": 8}
    rows = {r[0]: r for r in compare_rows({"agg": a, "disagg": b})}
    assert rows["ITL p50 (ms)"] == ["ITL p50 (ms)", "10.00", "5.00", "0.50x"]
    assert rows["TTFT p50 (ms)"][1:] == ["n/a", "n/a", "n/a"]


def test_workload_is_deterministic_and_sized_in_tokens() -> None:
    w = _workload(rounds=2)
    assert w.script(7) == w.script(7) and w.script(7) != w.script(8)
    s = w.script(7)
    assert len(s.opening[0]["content"].split()) == 50 + 5  # "You are a helpful assistant." + 50 filler words
    assert [r.max_tokens for r in s.rounds] == [4, 4]


def test_sharegpt_reader_stops_at_the_truncated_record(tmp_path: Path) -> None:
    convo = {
        "id": "a",
        "conversations": [
            {"from": "human", "value": "q1"},
            {"from": "gpt", "value": "one two three"},
            {"from": "human", "value": "q2"},
            {"from": "gpt", "value": "four five six seven eight nine"},
        ],
    }
    single = {"id": "b", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    text = "[" + json.dumps(convo) + ", " + json.dumps(single) + ", " + json.dumps(convo)[:40]
    (tmp_path / "sg.json").write_text(text)
    assert list(iter_sharegpt(tmp_path / "sg.json")) == [[("q1", 4), ("q2", 8)]]  # single-round one skipped
    w = Workload(
        num_rounds=5,
        shared_system_prompt=0,
        user_history_prompt=0,
        answer_len=6,
        sharegpt=[[("q1", 4), ("q2", 8)]],
    )
    assert [(r.question, r.max_tokens) for r in w.script(3).rounds] == [("q1", 4), ("q2", 6)]
