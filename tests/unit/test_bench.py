"""dynamo bench's workload, pacing and report, with a fake endpoint (no network)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from dynamo_cli.bench import multi_round
from dynamo_cli.bench.http import HttpError, Streamed
from dynamo_cli.bench.multi_round import LoadResult, LoadSpec, MultiRoundLoad, Record
from dynamo_cli.bench.report import compare_rows, pct, summarize, summary_block
from dynamo_cli.bench.workload import Workload, iter_sharegpt


class FakeConnection:
    """Answers every chat after ``delay`` seconds with ``tokens`` tokens; records what it was sent."""

    sent: list[tuple[float, dict[str, Any]]] = []
    delay = 0.0
    tokens = 4
    fail_model: str | None = None

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    async def chat_stream(self, body: dict[str, Any]) -> Streamed:
        t0 = time.perf_counter()
        FakeConnection.sent.append((t0, json.loads(json.dumps(body))))
        if body["model"] == self.fail_model:
            raise HttpError("HTTP 404: no such model")
        await asyncio.sleep(self.delay)
        prompt = sum(len(m["content"].split()) for m in body["messages"])
        now = time.perf_counter()
        times = [now + i * 0.001 for i in range(self.tokens)]
        return Streamed("answer " * self.tokens, t0, times, prompt, self.tokens)

    def close(self) -> None:
        pass


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeConnection]:
    FakeConnection.sent = []
    FakeConnection.delay = 0.0
    FakeConnection.fail_model = None
    monkeypatch.setattr(multi_round, "Connection", FakeConnection)
    return FakeConnection


def _workload(rounds: int = 3, answer: int = 4) -> Workload:
    return Workload(num_rounds=rounds, shared_system_prompt=50, user_history_prompt=30, answer_len=answer)


def _run(spec: LoadSpec, workload: Workload) -> LoadResult:
    return asyncio.run(MultiRoundLoad(spec, workload).run())


def test_finite_run_asks_every_round_of_every_user_at_the_configured_rate(fake: type[FakeConnection]) -> None:
    spec = LoadSpec("http://127.0.0.1:1/v1", "m", num_users=4, num_rounds=3, qps=40)
    res = _run(spec, _workload())
    assert len(res.finished) == 12 and not res.failed and res.users_started == 4
    launches = sorted(r.launch for r in res.records)
    # 40 req/s: one launch every 25 ms on average (users staggered by 1/qps, each every users/qps)
    assert (len(launches) - 1) / (launches[-1] - launches[0]) == pytest.approx(40, rel=0.15)
    assert {(r.user_id, r.question_id) for r in res.records} == {(u, q) for u in range(4) for q in range(3)}
    assert not res.late_rounds


def test_each_round_carries_the_history_and_the_answers_so_far(fake: type[FakeConnection]) -> None:
    spec = LoadSpec(
        "http://x/v1", "m", num_users=2, num_rounds=3, qps=100, request_with_user_id=True, ignore_eos=True
    )
    _run(spec, _workload())
    by_user: dict[str, list[dict[str, Any]]] = {}
    for _, body in sorted(fake.sent, key=lambda s: s[0]):
        by_user.setdefault(body["user"], []).append(body)
    assert set(by_user) == {"user-0", "user-1"}
    for bodies in by_user.values():
        lengths = [len(b["messages"]) for b in bodies]
        assert lengths == [4, 6, 8]  # system, history, ack, then question (+answer) per round
        assert bodies[2]["messages"][4]["content"] == "answer " * 4  # the answer it got is in its history
        assert all(b["ignore_eos"] and b["stream"] and b["max_tokens"] == 4 for b in bodies)
    # the system prompt is shared, each user's history is its own
    a, b = by_user["user-0"][0]["messages"], by_user["user-1"][0]["messages"]
    assert a[0] == b[0] and a[1] != b[1]


def test_a_user_whose_answers_come_late_is_reported(fake: type[FakeConnection]) -> None:
    fake.delay = 0.08  # each answer takes longer than the user's 20 ms gap
    res = _run(LoadSpec("http://x/v1", "m", num_users=1, num_rounds=4, qps=50), _workload(rounds=4))
    assert res.late_rounds == {0: 3}
    assert summarize(res)["users_behind"] == 1


def test_steady_state_starts_ramped_up_and_stops_launching_at_the_time(fake: type[FakeConnection]) -> None:
    spec = LoadSpec("http://x/v1", "m", num_users=4, num_rounds=4, qps=40, duration=0.6, init_user_id=100)
    res = _run(spec, _workload(rounds=4))
    assert all(r.launch < 0.6 for r in res.records)
    assert len(res.records) == pytest.approx(24, abs=3)
    first_round = {}
    for r in sorted(res.records, key=lambda r: r.launch):
        first_round.setdefault(r.user_id, r.question_id)
    # ramped up: the first users are mid-conversation (history filled in); later ones join at round 0
    assert sorted(first_round[u] for u in range(100, 104) if u in first_round)[-1] >= 2
    assert res.users_started > 4 and min(first_round) == 100
    assert all(first_round[u] == 0 for u in first_round if u >= 104)


def test_failed_requests_are_counted_not_fatal(fake: type[FakeConnection]) -> None:
    fake.fail_model = "bad"
    res = _run(LoadSpec("http://x/v1", "bad", num_users=2, num_rounds=2, qps=100), _workload(rounds=2))
    assert len(res.failed) == 4 and not res.finished
    assert res.failed[0].error == "HTTP 404: no such model"
    assert summarize(res)["failed"] == 4


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
