"""OpenAI API parity with the real engine: `dynamo run agg` on vLLM (CPU) with SmolLM2, through the
official openai client. n, logprobs, json_schema, forced tool calls and the Responses API."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from dynamo_cli.deployment.handle import Deployment, start

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="the vLLM engine is not installed"),
]

ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"type": "string", "enum": ["c", "f"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city", "parameters": WEATHER_PARAMS},
}


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = start(tmp_path_factory.mktemp("smol-api"), "agg", "--workers", "1", timeout=300)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def client(smol: Deployment) -> openai.OpenAI:
    return openai.OpenAI(base_url=smol.base_url, api_key="x", max_retries=0, timeout=120)


def test_n_2_gives_two_choices(client: openai.OpenAI, smol: Deployment) -> None:
    r = client.chat.completions.create(
        model=smol.model, messages=ASK, max_tokens=8, n=2, seed=3, temperature=1.0
    )  # type: ignore[arg-type]
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    assert r.usage is not None and 2 <= r.usage.completion_tokens <= 16  # both choices counted
    if all(c.finish_reason == "length" for c in r.choices):
        assert r.usage.completion_tokens == 16


def test_logprobs_with_top_2(client: openai.OpenAI, smol: Deployment) -> None:
    r = client.chat.completions.create(
        model=smol.model,
        messages=ASK,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=2,  # type: ignore[arg-type]
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == r.usage.completion_tokens  # type: ignore[union-attr]
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.token == entry.top_logprobs[0].token  # greedy: the sampled token is the most likely
    text = b"".join(bytes(e.bytes or []) for e in content).decode("utf-8", errors="replace")
    assert text == r.choices[0].message.content


def test_json_schema_output_parses_and_validates(client: openai.OpenAI, smol: Deployment) -> None:
    r = client.chat.completions.create(
        model=smol.model, messages=[{"role": "user", "content": "Describe a person as JSON."}],  # type: ignore[arg-type]
        max_tokens=80, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
    )  # fmt: skip
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), PERSON)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice", ["required", "named"])
def test_forced_tool_calls_are_valid(
    client: openai.OpenAI, smol: Deployment, choice: str, stream: bool
) -> None:
    tool_choice: Any = (
        choice if choice == "required" else {"type": "function", "function": {"name": "get_weather"}}
    )
    args: dict[str, Any] = dict(
        model=smol.model,
        messages=ASK,
        tools=[WEATHER],
        tool_choice=tool_choice,
        max_tokens=100,
        temperature=0,
    )
    if stream:
        deltas = [
            c.choices[0].delta for c in client.chat.completions.create(**args, stream=True) if c.choices
        ]
        parts = [tc for d in deltas for tc in d.tool_calls or []]
        assert parts and parts[0].function is not None and parts[0].function.name == "get_weather"
        arguments = "".join(p.function.arguments or "" for p in parts if p.function)
    else:
        msg = client.chat.completions.create(**args).choices[0].message
        assert msg.tool_calls and msg.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]
        arguments = msg.tool_calls[0].function.arguments  # type: ignore[union-attr]
    value = json.loads(arguments)
    assert isinstance(value, dict)  # an object, not a JSON string holding one
    jsonschema.validate(value, WEATHER_PARAMS)


def test_a_tool_round_trip(client: openai.OpenAI, smol: Deployment) -> None:
    first = (
        client.chat.completions.create(
            model=smol.model,
            messages=ASK,
            tools=[WEATHER],
            tool_choice="required",
            max_tokens=100,
            temperature=0,  # type: ignore[arg-type]
        )
        .choices[0]
        .message
    )
    call = first.tool_calls[0]  # type: ignore[index]
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees"},
    ]
    answer = client.chat.completions.create(
        model=smol.model, messages=history, tools=[WEATHER], max_tokens=30, temperature=0
    )  # type: ignore[arg-type]
    assert answer.choices[0].message.content or answer.choices[0].message.tool_calls


def test_responses_plain_and_streamed(client: openai.OpenAI, smol: Deployment) -> None:
    r = client.responses.create(
        model=smol.model, input="What is the capital of France?", max_output_tokens=20, temperature=0
    )
    assert "Paris" in r.output_text and r.store is False
    events = list(
        client.responses.create(
            model=smol.model,
            input="What is the capital of France?",
            max_output_tokens=20,
            temperature=0,
            stream=True,
        )
    )
    assert events[0].type == "response.created" and events[-1].type in (
        "response.completed",
        "response.incomplete",
    )
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert streamed == r.output_text


def test_responses_function_tool_and_json_schema(client: openai.OpenAI, smol: Deployment) -> None:
    tool = {"type": "function", **WEATHER["function"]}
    r = client.responses.create(
        model=smol.model,
        input="Weather in Paris?",
        tools=[tool],
        tool_choice="required",
        max_output_tokens=100,
        temperature=0,
    )  # type: ignore[list-item]
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER_PARAMS)
    r = client.responses.create(
        model=smol.model, input="Describe a person.", max_output_tokens=80, temperature=0,
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}},
    )  # fmt: skip
    jsonschema.validate(json.loads(r.output_text), PERSON)
