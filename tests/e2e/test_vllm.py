"""`dynamo run agg` with real vLLM engines on CPU: a tiny random Llama (fast) and SmolLM2 (a real answer)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from dynamo_cli.deployment.handle import Deployment, start
from dynamo_cli.transport import protocol
from dynamo_cli.transport.messaging import NatsRequestPlane
from tests.e2e.helpers import child_pids, scrape

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="the vLLM engine is not installed"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    from dynamo_cli.models.tiny import build_tiny_llama

    model = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")
    d = start(tmp_path_factory.mktemp("vllm"), "agg", "--engine", "vllm", "--model", str(model), "--workers", "1",
              "--router-mode", "kv", "--set", "router.replicas=0", "--set", "vllm.max_model_len=2048",
              timeout=240)  # fmt: skip
    yield d
    d.stop()


@pytest.fixture(scope="module")
def client(tiny: Deployment) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny.base_url, api_key="x", max_retries=0, timeout=60)


def test_streaming_shape_and_token_counts(client: openai.OpenAI, tiny: Deployment) -> None:
    chunks = list(
        client.chat.completions.create(
            model=tiny.model, messages=[{"role": "user", "content": "Hello there"}], max_tokens=16, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}, temperature=0,
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "length"
    ]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 16 and usage.prompt_tokens > 5
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 8  # streamed, not one blob


def test_greedy_is_deterministic(client: openai.OpenAI, tiny: Deployment) -> None:
    def ask() -> str:
        r = client.completions.create(model=tiny.model, prompt="one two three", max_tokens=24, temperature=0,
                                      extra_body={"ignore_eos": True})  # fmt: skip
        return r.choices[0].text

    first = ask()
    assert first and all(ask() == first for _ in range(3))


def test_models_report_the_engines_context(client: openai.OpenAI, tiny: Deployment) -> None:
    # vllm.max_model_len, not the tiny Llama's 4096 positions: the frontend refuses what the engine would
    assert client.models.list().data[0].model_extra == {"max_model_len": 2048}
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=tiny.model, prompt="word " * 2100, max_tokens=4)
    assert err.value.code == "context_length_exceeded"


def test_penalties_and_logit_bias_reach_vllm(client: openai.OpenAI, tiny: Deployment) -> None:
    """The unsharpened tiny model repeats one token whatever the context: a frequency or repetition
    penalty must make it vary, a +100 logit bias must pick the token."""

    def ask(**extra: object) -> str:
        r = client.completions.create(model=tiny.model, prompt="one two three", max_tokens=12, temperature=0,
                                      extra_body={"ignore_eos": True, **extra})  # fmt: skip
        return r.choices[0].text

    plain = ask()
    assert ask(frequency_penalty=2.0) != plain
    assert ask(repetition_penalty=5.0) != plain
    assert ask(presence_penalty=2.0) != plain
    forced = ask(logit_bias={"300": 100})
    assert forced == forced[: len(forced) // 12] * 12  # one token, twelve times
    assert ask(logit_bias={"301": 100}) not in (forced, plain)
    assert ask(min_p=1.0) == plain  # only the greedy token survives: nothing changes


def test_prefix_cache_and_kv_events_reach_the_router(client: openai.OpenAI, tiny: Deployment) -> None:
    long = [{"role": "user", "content": "Remember this. " * 120}]  # > 2 blocks of 128 tokens
    first = client.chat.completions.create(model=tiny.model, messages=long, max_tokens=2)  # type: ignore[arg-type]
    time.sleep(0.5)  # let the events travel
    second = client.chat.completions.create(model=tiny.model, messages=long, max_tokens=2)  # type: ignore[arg-type]
    assert (
        first.usage is not None
        and second.usage is not None
        and second.usage.prompt_tokens_details is not None
    )
    assert second.usage.prompt_tokens_details.cached_tokens >= 256
    m = scrape(tiny.url + "/metrics")
    assert m["dynamo_router_kv_events_total"] > 0
    assert m["dynamo_router_overlap_blocks_total"] >= 2  # the router saw the prefix in vLLM's cache
    assert sum(v for k, v in m.items() if k.startswith("dynamo_router_worker_blocks")) >= 2


def test_abort_frees_the_request(tiny: Deployment) -> None:
    async def scenario() -> tuple[bool, bool]:
        plane = await NatsRequestPlane.connect(tiny.ready["nats"], name="test")
        busy, idle = asyncio.Event(), asyncio.Event()

        async def on_load(data: bytes) -> None:
            running = protocol.decode_load(data)[1].running
            if running >= 1:
                busy.set()
            elif busy.is_set():
                idle.set()  # back to zero after having been busy

        unsub = await plane.subscribe(protocol.load_subject("dynamo"), on_load)
        async with httpx.AsyncClient(timeout=60) as http:
            # 2000 tokens take over 6 s here: only an abort brings the count back within 2 s.
            body = {"model": tiny.model, "messages": [{"role": "user", "content": "go"}], "max_tokens": 2000,
                    "stream": True, "ignore_eos": True}  # fmt: skip
            async with http.stream("POST", tiny.base_url + "/chat/completions", json=body) as resp:
                async for _ in resp.aiter_lines():
                    if busy.is_set():
                        break  # the worker reported the request running: hang up mid-stream
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(idle.wait(), 2)
        await unsub()
        await plane.close()
        return busy.is_set(), idle.is_set()

    assert asyncio.run(scenario()) == (True, True)  # seen running, then freed long before 2000 tokens


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = start(tmp_path_factory.mktemp("smol"), "agg", "--workers", "1", timeout=300)
    yield d
    d.stop()


def test_smollm2_knows_the_capital_of_france(smol: Deployment) -> None:
    client = openai.OpenAI(base_url=smol.base_url, api_key="x", max_retries=0, timeout=60)
    r = client.chat.completions.create(
        model=smol.model, messages=[{"role": "user", "content": "What is the capital of France?"}],  # type: ignore[arg-type]
        max_tokens=30, temperature=0,
    )  # fmt: skip
    assert smol.model == "SmolLM2-135M-Instruct"
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.choices[0].finish_reason == "stop"


def test_a_dead_engine_takes_its_worker_down_and_the_launcher_restarts_it(tiny: Deployment) -> None:
    """Runs last in this module: it kills the shared deployment's engine."""
    worker = tiny.pid("worker-0")
    engine_procs = [c for c in child_pids(worker) if "EngineCore" in Path(f"/proc/{c}/cmdline").read_text()]
    assert engine_procs, "vLLM's engine core runs in a child process of the worker (VLLM::EngineCore)"
    os.kill(engine_procs[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while "restarting worker-0 (1/3 in 60 s)" not in tiny.log_text():
        assert time.monotonic() < deadline, "the worker did not exit after its engine died"
        time.sleep(0.2)
    assert "the vLLM engine died" in tiny.log_text() or "worker-0 exited unexpectedly" in tiny.log_text()
    deadline = time.monotonic() + 120
    while True:  # back in service
        try:
            if httpx.get(tiny.url + "/health", timeout=5).json().get("workers") == 1:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the restarted worker never came back"
        time.sleep(0.5)
    client = openai.OpenAI(base_url=tiny.base_url, api_key="x", max_retries=0, timeout=60)
    r = client.completions.create(
        model=tiny.model, prompt="again", max_tokens=4, extra_body={"ignore_eos": True}
    )
    assert r.usage is not None and r.usage.completion_tokens == 4


def test_a_killed_vllm_workers_streams_migrate_and_finish(tmp_path: Path) -> None:
    """Two vLLM workers, six greedy streams (three on each, round-robin), one worker SIGKILLed mid-way:
    every stream finishes with all its tokens, the same ones as undisturbed (fp32 on CPU, greedy); the
    victim's continued on the other worker."""
    from concurrent.futures import ThreadPoolExecutor

    from dynamo_cli.models.tiny import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny-llama")
    (tmp_path / "run").mkdir()
    dep = start(tmp_path / "run", "agg", "--engine", "vllm", "--model", str(model), "--workers", "2",
                "--set", "vllm.max_model_len=2048", timeout=300)  # fmt: skip
    try:
        client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=120)
        started = [0]

        def one(i: int, count: bool) -> tuple[str, str, int]:
            chunks = client.completions.create(
                model=dep.model, prompt=f"story {i}: once upon a time", max_tokens=300, temperature=0,
                stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
            )  # fmt: skip
            finish, tokens, parts = "", 0, []
            for c in chunks:
                if c.choices and c.choices[0].text:
                    if not parts and count:
                        started[0] += 1
                    parts.append(c.choices[0].text)
                if c.choices and c.choices[0].finish_reason:
                    finish = c.choices[0].finish_reason
                if c.usage is not None:
                    tokens = c.usage.completion_tokens
            return "".join(parts), finish, tokens

        with ThreadPoolExecutor(6) as pool:
            undisturbed = list(pool.map(lambda i: one(i, False), range(6)))
            futures = [pool.submit(one, i, True) for i in range(6)]
            deadline = time.monotonic() + 60
            while started[0] < 6:
                assert time.monotonic() < deadline, "the six streams did not start"
                time.sleep(0.02)
            os.kill(dep.pid("worker-0"), signal.SIGKILL)
            results = [f.result(timeout=180) for f in futures]
        assert [r[1:] for r in results] == [("length", 300)] * 6
        assert results == undisturbed
        metrics = scrape(dep.url + "/metrics")
        seen = {k: v for k, v in metrics.items() if "migrat" in k}
        # The victim's three streams moved once each. How the frontend noticed first is a race: the
        # launcher's death notice (worker_died) or the stream breaking (stream_ended, no_responders).
        moved = f'dynamo_frontend_migrated_requests_total{{model="{dep.model}",outcome="finished"}}'
        assert seen.get(moved) == 3, seen
        reasons = {k.split('reason="')[1].rstrip('"}') for k in seen if "reason=" in k}
        assert reasons <= {"worker_died", "stream_ended", "no_responders", "send_failed"}, seen
    finally:
        dep.stop()
