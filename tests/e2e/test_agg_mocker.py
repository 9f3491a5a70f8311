"""`dynamo run agg --engine mocker`, used through the official openai client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from dynamo_cli.deployment.handle import Deployment, process_alive, start
from dynamo_cli.models.embedded import prepare_tokenizer_folder
from dynamo_cli.models.tokenizer import ModelTokenizer
from dynamo_cli.transport import protocol
from dynamo_cli.transport.messaging import NatsRequestPlane

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = start(
        tmp_path_factory.mktemp("agg"), "agg", "--engine", "mocker", "--workers", "2", "--speedup", "50"
    )
    yield d
    d.stop()


@pytest.fixture(scope="module")
def client(dep: Deployment) -> openai.OpenAI:
    return openai.OpenAI(base_url=dep.base_url, api_key="unused", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def tok() -> ModelTokenizer:
    return ModelTokenizer(prepare_tokenizer_folder())


def test_chat_non_streaming_with_usage(client: openai.OpenAI, dep: Deployment, tok: ModelTokenizer) -> None:
    r = client.chat.completions.create(model=dep.model, messages=MESSAGES, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert r.usage is not None
    assert r.usage.prompt_tokens == len(tok.encode_chat(MESSAGES))  # templated and tokenised by the frontend
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_streaming_equals_non_streaming(client: openai.OpenAI, dep: Deployment) -> None:
    args = dict(model=dep.model, messages=MESSAGES, max_tokens=20, temperature=0)
    full = client.chat.completions.create(**args).choices[0].message.content  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))  # type: ignore[call-overload]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert (
        chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20
    )
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 10  # really streamed


def test_determinism_temperature_and_seed(client: openai.OpenAI, dep: Deployment) -> None:
    def ask(**kw) -> str:
        r = client.chat.completions.create(model=dep.model, messages=MESSAGES, max_tokens=16, **kw)  # type: ignore[call-overload]
        return r.choices[0].message.content

    assert ask(temperature=0) == ask(temperature=0)  # across both workers (round-robin)
    assert ask(temperature=0.8, seed=7) == ask(temperature=0.8, seed=7)
    assert ask(temperature=0.8, seed=7) != ask(temperature=0.8, seed=8)


def test_stop_string_cuts_before_it(client: openai.OpenAI, dep: Deployment) -> None:
    base = dict(model=dep.model, messages=MESSAGES, temperature=0, max_tokens=40)
    text = client.chat.completions.create(**base).choices[0].message.content  # type: ignore[call-overload]
    assert text and len(text) > 30
    stop = text[len(text) // 2 : len(text) // 2 + 4]
    expected = text[: text.index(stop)]
    r = client.chat.completions.create(**base, stop=[stop])  # type: ignore[call-overload]
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(**base, stop=stop, stream=True)  # type: ignore[call-overload]
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


def test_ignore_eos_and_max_tokens_limit(client: openai.OpenAI, dep: Deployment) -> None:
    r = client.chat.completions.create(
        model=dep.model,
        messages=MESSAGES,
        max_tokens=33,
        extra_body={"ignore_eos": True},  # type: ignore[arg-type]
    )
    assert r.usage is not None and r.usage.completion_tokens == 33


def test_text_completions_and_models(client: openai.OpenAI, dep: Deployment, tok: ModelTokenizer) -> None:
    models = client.models.list()
    assert [m.id for m in models] == [dep.model]
    assert models.data[0].model_extra == {"max_model_len": tok.context_length}  # as vLLM reports it
    r = client.completions.create(
        model=dep.model, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert r.choices[0].text and r.usage is not None and r.usage.completion_tokens == 8
    streamed = client.completions.create(
        model=dep.model, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text


def test_repeated_prompt_hits_the_prefix_cache(client: openai.OpenAI, dep: Deployment) -> None:
    long = [{"role": "user", "content": "Tell me about caching. " * 60}]
    cached = []
    for _ in range(4):  # round-robin over 2 workers: each sees the prompt at least twice
        r = client.chat.completions.create(model=dep.model, messages=long, max_tokens=2)  # type: ignore[arg-type]
        assert r.usage is not None and r.usage.prompt_tokens_details is not None
        cached.append(r.usage.prompt_tokens_details.cached_tokens)
        prompt = r.usage.prompt_tokens
    # The first sight shares only the template's system prompt with earlier tests; a repeat on the
    # same worker reuses every full block but the last token's.
    assert cached[0] < 64
    assert max(cached[2:]) >= prompt - 16


def test_openai_errors(client: openai.OpenAI, dep: Deployment) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert nf.value.status_code == 404 and nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=dep.model, messages=MESSAGES, temperature=5)  # type: ignore[arg-type]
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=dep.model, messages=[{"role": "wizard", "content": "x"}])  # type: ignore[list-item]
    assert bad.value.body["param"] == "messages.0.role"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=dep.model, messages=MESSAGES, max_tokens=10_000)  # type: ignore[arg-type]
    assert bad.value.body["param"] == "max_tokens"  # type: ignore[index]
    raw = httpx.post(dep.base_url + "/chat/completions", content=b"{not json", timeout=10)
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    raw = httpx.get(dep.base_url + "/nope", timeout=10)
    assert raw.status_code == 404 and "error" in raw.json()
    # The server is still healthy after all that.
    assert httpx.get(dep.url + "/health", timeout=10).json()["workers"] == 2


def test_metrics_count_requests_and_latencies(client: openai.OpenAI, dep: Deployment) -> None:
    client.chat.completions.create(model=dep.model, messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
    text = httpx.get(dep.url + "/metrics", timeout=10).text
    lines = {
        ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines() if ln and not ln.startswith("#")
    }
    ok = [
        v for k, v in lines.items() if k.startswith("dynamo_frontend_requests_total") and 'status="200"' in k
    ]
    assert sum(ok) >= 1
    label = f'{{model="{dep.model}"}}'
    assert lines["dynamo_frontend_time_to_first_token_seconds_count" + label] >= 1
    assert lines["dynamo_frontend_output_tokens_total" + label] >= 4
    assert lines["dynamo_frontend_inflight_requests" + label] == 0
    assert any(k.startswith("dynamo_frontend_inter_token_latency_seconds_bucket") for k in lines)


def test_client_disconnect_cancels_the_worker_request(dep: Deployment) -> None:
    """Hang up mid-stream: the worker's running count drops back to zero promptly."""

    async def scenario() -> list[int]:
        plane = await NatsRequestPlane.connect(dep.ready["nats"], name="test")
        running: dict[int, int] = {}

        async def on_load(data: bytes) -> None:
            wid, load = protocol.decode_load(data)
            running[wid] = load.running

        unsub = await plane.subscribe(protocol.load_subject("dynamo"), on_load)
        async with httpx.AsyncClient(timeout=30) as http:
            body = {
                "model": dep.model,
                "messages": MESSAGES,
                "max_tokens": 7000,
                "stream": True,
                "ignore_eos": True,
            }
            async with http.stream("POST", dep.base_url + "/chat/completions", json=body) as resp:
                n = 0
                async for _ in resp.aiter_lines():
                    n += 1
                    if n > 20:
                        break  # hang up
            await asyncio.sleep(0.2)
            busy_after = sum(running.values())
            await asyncio.sleep(1.0)
            settled = sum(running.values())
        await unsub()
        await plane.close()
        return [busy_after, settled]

    _, settled = asyncio.run(scenario())
    assert settled == 0


def test_every_role_is_a_separate_live_process(dep: Deployment) -> None:
    names = set(dep.ready["processes"])
    assert {"etcd", "nats", "worker-0", "worker-1", "router-0", "frontend"} <= names
    assert all(process_alive(pid) for pid in dep.all_pids())
    assert len(set(dep.all_pids())) == len(names)


def test_readme_embedded_default_needs_no_model(dep: Deployment, tmp_path: Path) -> None:
    assert dep.model == "SmolLM2-135M-Instruct"


def test_logit_bias_reaches_the_engine(client: openai.OpenAI, dep: Deployment, tok: ModelTokenizer) -> None:
    word = tok.encode(" Paris")[0]
    r = client.chat.completions.create(
        model=dep.model,
        messages=MESSAGES,
        max_tokens=6,
        logit_bias={str(word): 100},
        extra_body={"ignore_eos": True},  # type: ignore[arg-type]
    )
    assert r.choices[0].message.content == tok.decode([word] * 6)  # forced, as OpenAI describes +100
    free = client.chat.completions.create(model=dep.model, messages=MESSAGES, max_tokens=40, temperature=0)  # type: ignore[arg-type]
    banned = {str(t): -100 for t in tok.encode(free.choices[0].message.content or "")}
    again = client.chat.completions.create(
        model=dep.model,
        messages=MESSAGES,
        max_tokens=40,
        temperature=0,
        logit_bias=banned,  # type: ignore[arg-type]
    )
    # Greedy is a function of the prompt: only the bans can change it (the engine test checks them
    # token by token).
    assert again.choices[0].message.content != free.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=dep.model, messages=MESSAGES, logit_bias={"10000000": 5})  # type: ignore[arg-type]
    assert err.value.body["param"] == "logit_bias"  # type: ignore[index]
