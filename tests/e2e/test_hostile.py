"""No single hostile request stalls or kills the deployment: each is refused (413 or 400, in OpenAI's
error shape, naming the offending field) while 8 ordinary streams carry on undisturbed.

The inputs and the lean streaming client are benchmarks.hostile's, which also times them; here a
stall fails only when it is as long as a timeout of the deployment's own (the 100 ms target is the
benchmark's to report)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from benchmarks.hostile import CHAT, INPUTS, Answer, Hostile, Stream, run_stream, send_hostile, stream_body
from dynamo_cli.config.models import FrontendConfig
from dynamo_cli.deployment.handle import Deployment, start

pytestmark = pytest.mark.e2e

# At speedup 1 a stream of 300 tokens lasts ~2 s; the hostile request is sent 0.1 s in. Each of the
# STREAMS lanes starts another stream when its stream ends before the answer came, so the lanes span the
# answer however long it takes on a busy machine, and any stall it causes shows in their gaps.
STREAMS, TOKENS = 8, 300
# No gap between two chunks of a lane may be this long. A wall-clock bound, so a generous one: the
# deployment's own, the silence after which the frontend takes a worker for dead (5 s by default).
STALL = FrontendConfig().stream_idle_timeout_s
SIXTY_FOUR_MIB = 64 << 20

# input -> (status, param, code); None: not checked. A refusal's param is the offending field.
EXPECTED: dict[str, tuple[int, str | None, str | None]] = {
    "chat 64MiB one word": (413, None, "request_too_large"),
    "chat 64MiB 'a b '": (413, None, "request_too_large"),
    "chat 64MiB chunked": (413, None, "request_too_large"),  # no Content-Length to refuse it by
    "chat 12MiB one word": (400, "messages", "context_length_exceeded"),
    "chat 12MiB 'a b '": (400, "messages", "context_length_exceeded"),
    "cmpl 10^6 token ids": (400, "prompt", None),
    "cmpl token id 10^9": (400, "prompt", None),
    "chat 10^5 messages": (400, "messages", None),
    "JSON nested 10^5 deep": (400, None, "invalid_json"),
    "JSON 5M empty arrays": (400, None, "limit_exceeded"),
    "chat 10^5 stop strings": (400, "stop", None),
    "chat logit_bias 10^5": (400, "logit_bias", None),
    "chat 10MB tools": (400, "tools", None),
    "cmpl prompt ''": (400, "prompt", None),
    "chat messages []": (400, "messages", None),
    "invalid UTF-8": (400, None, None),
    "lone surrogate": (400, None, None),
    "valid: tool_calls, no text": (200, None, None),
}


def _ordinary(dep: Deployment) -> int:
    """The status of a one-token chat (0 when the frontend does not answer)."""
    body = {"model": dep.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    try:
        return httpx.post(dep.base_url + "/chat/completions", json=body, timeout=30).status_code
    except httpx.HTTPError:
        return 0


class Shared:
    """The module's one deployment. An input that kills it or leaves it unwell has failed its own
    test already (a stall long enough to do that fails the gap check); the next input then gets a
    healthy deployment, a new one if need be, so that each input is judged on its own."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.dep = self._start()
        self.replaced = 0

    def _start(self) -> Deployment:
        return start(self.tmp, "agg", "--engine", "mocker", "--workers", "2")

    def healthy(self) -> Deployment:
        d = self.dep
        deadline = time.monotonic() + 20
        while d.proc.poll() is None:
            if _ordinary(d) == 200:
                return d
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        try:
            d.stop(timeout=20)
        except Exception:
            d.kill()
        self.dep = self._start()
        self.replaced += 1
        return self.dep


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    s = Shared(tmp_path_factory.mktemp("hostile"))
    try:
        yield s
    finally:
        s.dep.stop()


@pytest.fixture
def dep(shared: Shared) -> Deployment:
    return shared.healthy()


async def _round(url: str, model: str, hostile: Hostile) -> tuple[Answer, list[list[Stream]]]:
    """The lanes' streams, each run to its end, and the hostile request, sent once they all stream."""
    body = hostile.body(model)  # before the streams: it takes a while
    host, port_s = url.removeprefix("http://").rsplit(":", 1)
    port = int(port_s)
    lanes: list[list[Stream]] = [[] for _ in range(STREAMS)]
    answer: Answer | None = None

    async def lane(i: int) -> None:
        while True:
            s = Stream()
            lanes[i].append(s)
            await run_stream(host, port, CHAT, stream_body(model, TOKENS, i), s)
            if s.failed() or not s.done:
                return  # the test says so
            if answer is not None and s.times[-1] > answer.answered_at:
                return  # this lane streamed past the answer

    tasks = [asyncio.create_task(lane(i), name=f"lane-{i}") for i in range(STREAMS)]
    deadline = time.monotonic() + 30
    while not all(ln and (len(ln[0].times) >= 2 or ln[0].failed() or ln[0].done) for ln in lanes):
        if time.monotonic() > deadline:  # role chunk + first token: not yet streaming
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.1)
    answer = await send_hostile(host, port, hostile.path, body, chunked=hostile.chunked)
    await asyncio.gather(*tasks)
    return answer, lanes


def _gaps(lane: list[Stream]) -> list[float]:
    """Between consecutive chunks of the lane, from one stream into the next."""
    times = [t for s in lane for t in s.times]
    return [b - a for a, b in itertools.pairwise(times)]


def test_every_input_has_an_expectation() -> None:
    assert sorted(EXPECTED) == sorted(h.name for h in INPUTS)


@pytest.mark.parametrize("hostile", INPUTS, ids=[h.name for h in INPUTS])
def test_hostile_request_is_answered_while_others_stream(dep: Deployment, hostile: Hostile) -> None:
    status, param, code = EXPECTED[hostile.name]
    ans, lanes = asyncio.run(_round(dep.url, dep.model, hostile))
    worst = max((max(_gaps(lane), default=0.0) for lane in lanes), default=0.0)
    if worst >= STALL:  # a stall this long may cost the frontend its discovery lease a moment later:
        time.sleep(3)  # let that happen during this input's test, not the next one's
    assert ans.error is None and ans.status == status, (ans.status, ans.error, ans.body[:500])
    if status == 200:
        choice = ans.json()["choices"][0]
        assert choice["finish_reason"] in ("stop", "length") and choice["message"]["role"] == "assistant"
    else:
        err = ans.json()["error"]
        assert sorted(err) == ["code", "message", "param", "type"], err
        assert isinstance(err["message"], str) and err["message"], err
        if status == 400:
            assert err["type"] == "invalid_request_error", err
        if param is not None:  # the field itself, or a path inside it ("messages.3.content")
            assert err["param"] == param or str(err["param"]).startswith(param + "."), err
        if code is not None:
            assert err["code"] == code, err
    for s in (s for lane in lanes for s in lane):
        assert s.error is None and s.status == 200 and s.done, (s.status, s.error)
        assert s.finish_reason() == "length"
        assert (s.usage() or {}).get("completion_tokens") == TOKENS
        # One chunk a token, but for tokens that end mid-character: their text waits for the next.
        assert TOKENS * 0.95 <= s.content_chunks() <= TOKENS
    # Every lane was streaming before the hostile request went out and still after its answer came, so
    # a stall while it was handled would show in the lane's gaps.
    assert all(lane[0].times[0] < ans.sent_at and lane[-1].times[-1] > ans.answered_at for lane in lanes)
    assert worst < STALL, f"the other streams stalled for {worst:.1f} s"
    assert dep.proc.poll() is None
    assert _ordinary(dep) == 200  # right away: no worker was written off as dead meanwhile


def _huge_chat() -> list[dict[str, str]]:
    return [{"role": "user", "content": "a" * SIXTY_FOUR_MIB}]


def test_openai_client_gets_413_for_a_64mib_chat(dep: Deployment) -> None:
    client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=60)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model=dep.model, messages=_huge_chat())  # type: ignore[arg-type]
    assert e.value.status_code == 413
    assert e.value.code == "request_too_large", e.value.body


def test_httpx_gets_413_for_a_64mib_chat(dep: Deployment) -> None:
    r = httpx.post(
        dep.base_url + "/chat/completions",
        json={"model": dep.model, "messages": _huge_chat()},
        timeout=60,
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


def test_still_serving_afterwards(shared: Shared) -> None:
    dep = shared.dep
    assert shared.replaced == 0, "an input killed the deployment or left it unable to serve"
    assert dep.proc.poll() is None
    health = httpx.get(dep.url + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["workers"] == 2
    client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=30)
    r = client.chat.completions.create(
        model=dep.model,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
        extra_body={"ignore_eos": True},
    )  # type: ignore[arg-type]
    assert r.choices[0].finish_reason == "length" and r.usage is not None and r.usage.completion_tokens == 8
    assert "Traceback" not in dep.log_text()
