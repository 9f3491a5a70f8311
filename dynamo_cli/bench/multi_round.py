"""Multi-round QA load, paced as production-stack's benchmark paces it.

Each of ``num_users`` active users sends one request every ``num_users / qps`` seconds, so together they
send ``qps`` requests a second; a user's next round waits for its previous answer, and a user whose
answer comes later than its next round was due cannot keep its share of the QPS (it is reported).

Two ways to run:
- finite (no ``duration``): exactly ``num_users`` users, each asking all its rounds, their first requests
  staggered over one gap; the run ends when the last answer is in.
- steady state (``duration`` seconds): the run starts ramped up, as production-stack's does: the users
  are spread over their sessions as if the benchmark had been running for a while (earlier rounds are
  in their histories), and a new user joins every ``num_rounds / qps`` seconds as old ones finish. No
  request is launched after ``duration``; requests still in flight then are counted as on the fly and
  waited for (up to the request timeout).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dynamo_cli.bench.http import REQUEST_TIMEOUT_S, Connection, Endpoint, HttpError
from dynamo_cli.bench.workload import Script, Workload

LAG_TOLERANCE = 0.1  # a round sent this share of a gap late still counts as on time


@dataclass(frozen=True)
class LoadSpec:
    base_url: str
    model: str
    num_users: int
    num_rounds: int
    qps: float
    duration: float | None = None
    init_user_id: int = 0
    request_with_user_id: bool = False
    ignore_eos: bool = False
    api_key: str | None = None
    timeout: float = REQUEST_TIMEOUT_S

    @property
    def user_gap(self) -> float:
        """Seconds between two requests of one user."""
        return self.num_users / self.qps

    @property
    def join_gap(self) -> float:
        """Seconds between two users joining, in steady state."""
        return self.num_rounds / self.qps


@dataclass
class Record:
    """One request. Times are seconds on the run's clock (0 = the run's start)."""

    user_id: int
    question_id: int
    launch: float
    finish: float
    ttft: float | None = None
    generation_time: float = 0.0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    itls: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class LoadResult:
    spec: LoadSpec
    epoch: float  # wall-clock time (time.time()) of the run's start
    records: list[Record] = field(default_factory=list)
    launched: int = 0
    in_flight: int = 0
    on_the_fly_at_stop: int = 0
    users_started: int = 0
    late_rounds: dict[int, int] = field(default_factory=dict)  # user id -> rounds sent late
    server_usage: bool = True  # the server reported token counts (else they are counted from chunks)
    elapsed: float = 0.0

    @property
    def finished(self) -> list[Record]:
        return [r for r in self.records if r.error is None]

    @property
    def failed(self) -> list[Record]:
        return [r for r in self.records if r.error is not None]


class MultiRoundLoad:
    def __init__(self, spec: LoadSpec, workload: Workload) -> None:
        if spec.num_users < 1 or spec.num_rounds < 1 or spec.qps <= 0:
            raise ValueError("num_users and num_rounds must be >= 1 and qps > 0")
        self.spec = spec
        self.workload = workload
        self.endpoint = Endpoint.parse(spec.base_url)
        self.result = LoadResult(spec, time.time())
        self._t0 = time.perf_counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_record: Callable[[Record], None] | None = None

    def now(self) -> float:
        return time.perf_counter() - self._t0

    async def run(self, on_record: Callable[[Record], None] | None = None) -> LoadResult:
        self._on_record = on_record
        self.result.epoch = time.time()
        self._t0 = time.perf_counter()
        spec = self.spec
        if spec.duration is None:
            for k in range(spec.num_users):
                self._spawn(spec.init_user_id + k, 0, k / spec.qps)
        else:
            # Ramped up: user k has been in its session for k join gaps, so its earlier rounds are done.
            for k in range(spec.num_users):
                elapsed = k * spec.join_gap
                done = math.ceil(elapsed / spec.user_gap - 1e-9)  # rounds sent before the run
                if done < spec.num_rounds:
                    self._spawn(spec.init_user_id + k, done, done * spec.user_gap - elapsed)
            self._spawn_joiner(spec.init_user_id + spec.num_users)
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        self.result.elapsed = self.now()
        return self.result

    def _spawn(self, user_id: int, rounds_done: int, first_due: float) -> None:
        task = asyncio.create_task(self._user(user_id, rounds_done, first_due), name=f"bench-user-{user_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.result.users_started += 1

    def _spawn_joiner(self, next_id: int) -> None:
        async def joiner() -> None:
            assert self.spec.duration is not None
            uid, due = next_id, self.spec.join_gap
            while due < self.spec.duration:
                await asyncio.sleep(max(0.0, due - self.now()))
                self._spawn(uid, 0, due)
                uid, due = uid + 1, due + self.spec.join_gap

        task = asyncio.create_task(joiner(), name="bench-joiner")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _user(self, user_id: int, rounds_done: int, first_due: float) -> None:
        spec, script = self.spec, self.workload.script(user_id)
        messages = list(script.opening)
        for i in range(rounds_done):  # the rounds it had before the run (ramp-up)
            messages.append({"role": "user", "content": script.rounds[i].question})
            messages.append({"role": "assistant", "content": self.workload.stand_in_answer(user_id, i)})
        conn = Connection(self.endpoint, spec.api_key, spec.timeout)
        try:
            for i in range(rounds_done, len(script.rounds)):
                due = first_due + (i - rounds_done) * spec.user_gap
                if spec.duration is not None and due >= spec.duration:
                    break
                wait = due - self.now()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif -wait > LAG_TOLERANCE * spec.user_gap:
                    self.result.late_rounds[user_id] = self.result.late_rounds.get(user_id, 0) + 1
                if spec.duration is not None and self.now() >= spec.duration:
                    break
                messages.append({"role": "user", "content": script.rounds[i].question})
                rec, text = await self._ask(conn, script, i, messages)
                if rec.error:
                    text = self.workload.stand_in_answer(user_id, i)
                messages.append({"role": "assistant", "content": text})
        finally:
            conn.close()

    async def _ask(
        self, conn: Connection, script: Script, i: int, messages: list[dict[str, str]]
    ) -> tuple[Record, str]:
        spec = self.spec
        body: dict[str, Any] = {
            "model": spec.model,
            "messages": messages,
            "max_tokens": script.rounds[i].max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
        }
        if spec.request_with_user_id:
            body["user"] = f"user-{script.user_id}"
        if spec.ignore_eos:
            body["ignore_eos"] = True
        rec = Record(script.user_id, i, self.now(), 0.0)
        self.result.launched += 1
        self.result.in_flight += 1
        text = ""
        try:
            got = await conn.chat_stream(body)
        except HttpError as e:
            rec.error = str(e)
        else:
            self._fill(rec, got.launch, got.token_times, got.prompt_tokens, got.completion_tokens)
            text = got.text
        finally:
            self.result.in_flight -= 1
            if spec.duration is not None and rec.launch < spec.duration <= self.now():
                self.result.on_the_fly_at_stop += 1
        rec.finish = self.now()
        self.result.records.append(rec)
        if self._on_record is not None:
            self._on_record(rec)
        return rec, text

    def _fill(
        self, rec: Record, launch: float, times: list[float], prompt: int | None, gen: int | None
    ) -> None:
        if not times:
            rec.error = "the stream ended without a token"
            return
        rec.ttft = times[0] - launch
        rec.generation_time = times[-1] - times[0]
        rec.itls = [b - a for a, b in itertools.pairwise(times)]
        if prompt is None or gen is None:
            self.result.server_usage = False
        rec.prompt_tokens = prompt or 0
        rec.generation_tokens = gen if gen is not None else len(times)


async def served_model(base_url: str, api_key: str | None = None) -> str:
    """The first model the endpoint lists at /v1/models."""
    conn = Connection(Endpoint.parse(base_url), api_key, timeout=10)
    try:
        data = await asyncio.wait_for(conn.get_json("/models"), 10)
    except (OSError, asyncio.IncompleteReadError) as e:
        raise HttpError(f"cannot reach {base_url}: {e}") from None
    finally:
        conn.close()
    models = [m.get("id") for m in data.get("data", []) if m.get("id")]
    if not models:
        raise HttpError(f"{base_url}/models lists no model")
    return str(models[0])
