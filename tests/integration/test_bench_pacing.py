"""dynamo bench's load against a fake endpoint (no network): its pacing runs on the real clock, so
these tests wait (a few tenths of a second each)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from dynamo_cli.bench import multi_round
from dynamo_cli.bench.http import HttpError, Streamed
from dynamo_cli.bench.multi_round import LoadResult, LoadSpec, MultiRoundLoad
from dynamo_cli.bench.report import summarize
from dynamo_cli.bench.workload import Workload

pytestmark = pytest.mark.integration


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
