"""OpenAI API parity on `dynamo run agg --engine mocker`, through the official openai client (its own
models parse every response): n choices, logprobs, structured outputs, forced tool calls, the Responses
API, refused and unknown fields."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from dynamo_cli.deployment.handle import Deployment, start
from dynamo_cli.models.embedded import prepare_tokenizer_folder
from dynamo_cli.models.tokenizer import ModelTokenizer
from tests.e2e.helpers import scrape

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Give me a city and its population."}]
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        "population": {"type": "integer", "minimum": 0, "maximum": 100000000},
        "capital": {"type": "boolean"},
    },
    "required": ["city", "population", "capital"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Rome"]},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = start(
        tmp_path_factory.mktemp("parity"), "agg", "--engine", "mocker", "--workers", "1", "--speedup", "50"
    )
    yield d
    d.stop()


@pytest.fixture(scope="module")
def client(dep: Deployment) -> openai.OpenAI:
    return openai.OpenAI(base_url=dep.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tok() -> ModelTokenizer:
    return ModelTokenizer(prepare_tokenizer_folder())


def post(dep: Deployment, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{dep.url}{path}", json={"model": dep.model, **body}, timeout=60)


# ---- n -------------------------------------------------------------------------------------------


def test_n_3_gives_3_indexed_choices_and_usage_counts_all(client: openai.OpenAI, dep: Deployment) -> None:
    r = client.chat.completions.create(model=dep.model, messages=MESSAGES, max_tokens=8, n=3, seed=1)  # type: ignore[arg-type]
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) == 3  # each choice samples on its own
    assert r.usage is not None and r.usage.completion_tokens == 24
    assert (
        r.usage.prompt_tokens
        == client.chat.completions.create(
            model=dep.model,
            messages=MESSAGES,
            max_tokens=1,  # type: ignore[arg-type]
        ).usage.prompt_tokens
    )  # type: ignore[union-attr]  # the prompt counted once


def test_n_streamed_interleaves_choices_that_match_the_whole_response(
    client: openai.OpenAI, dep: Deployment
) -> None:
    args: dict[str, Any] = dict(
        model=dep.model, messages=MESSAGES, max_tokens=10, n=2, seed=5, temperature=0.9
    )
    whole = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    texts = {0: "", 1: ""}
    finishes = {0: 0, 1: 0}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] += choice.finish_reason is not None
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert finishes == {0: 1, 1: 1}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20


# ---- logprobs -------------------------------------------------------------------------------------


def test_chat_logprobs_with_top_2(client: openai.OpenAI, dep: Deployment, tok: ModelTokenizer) -> None:
    r = client.chat.completions.create(
        model=dep.model,
        messages=MESSAGES,
        max_tokens=6,
        logprobs=True,
        top_logprobs=2,
        seed=3,  # type: ignore[arg-type]
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None and len(lp.content) == 6
    for entry in lp.content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.token in [t.token for t in entry.top_logprobs]  # the mocker samples among its top
        assert bytes(entry.bytes or []).decode("utf-8", errors="replace") == entry.token
    joined = b"".join(bytes(e.bytes or []) for e in lp.content).decode("utf-8", errors="replace")
    assert joined == r.choices[0].message.content


def test_chat_logprobs_streamed_add_up(client: openai.OpenAI, dep: Deployment) -> None:
    args: dict[str, Any] = dict(
        model=dep.model, messages=MESSAGES, max_tokens=8, logprobs=True, top_logprobs=1, seed=4
    )
    whole = client.chat.completions.create(**args).choices[0].logprobs
    streamed = []
    for c in client.chat.completions.create(**args, stream=True):
        if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content:
            streamed.extend(c.choices[0].logprobs.content)
    assert whole is not None and whole.content is not None
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in whole.content]


def test_completions_logprobs_with_echo(client: openai.OpenAI, dep: Deployment, tok: ModelTokenizer) -> None:
    prompt = "The capital of France is"
    r = client.completions.create(model=dep.model, prompt=prompt, max_tokens=5, logprobs=2, echo=True, seed=2)
    choice = r.choices[0]
    assert choice.text.startswith(prompt)
    n_prompt = len(tok.encode(prompt))
    lp = choice.logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    assert len(lp.tokens) == n_prompt + 5
    assert lp.token_logprobs[0] is None and all(x is not None for x in lp.token_logprobs[1:])
    assert lp.top_logprobs is not None and all(len(t) <= 2 for t in lp.top_logprobs[1:] if t is not None)
    assert lp.text_offset == sorted(lp.text_offset or [])


# ---- structured outputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_json_schema_output_validates(client: openai.OpenAI, dep: Deployment, seed: int) -> None:
    r = client.chat.completions.create(
        model=dep.model,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=300,
        seed=seed,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": CITY, "strict": True},
        },
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content or ""), CITY)


def test_guided_choice_and_regex(dep: Deployment) -> None:
    r = post(dep, "/v1/completions", {"prompt": "Pick:", "guided_choice": ["yes", "no"], "max_tokens": 20})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] in ("yes", "no")
    r = post(
        dep, "/v1/completions", {"prompt": "Code:", "guided_regex": "[A-Z]{3}-[0-9]{2}", "max_tokens": 20}
    )
    import re

    assert r.status_code == 200 and re.fullmatch("[A-Z]{3}-[0-9]{2}", r.json()["choices"][0]["text"])


def test_json_cut_by_max_tokens_is_length_with_the_partial_text(
    client: openai.OpenAI, dep: Deployment
) -> None:
    r = client.chat.completions.create(
        model=dep.model, messages=MESSAGES, max_tokens=3, seed=1,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}},
    )  # fmt: skip
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content


def test_invalid_schema_is_a_400_naming_the_field(dep: Deployment) -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}
    r = post(dep, "/v1/chat/completions", {"messages": MESSAGES, "response_format": bad})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    r = post(dep, "/v1/chat/completions", {"messages": MESSAGES, "guided_regex": "(unclosed"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "guided_regex"


# ---- tools -----------------------------------------------------------------------------------------


def _check_calls(calls: Any, names: set[str]) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("seed", range(3))
def test_tool_choice_required_gives_valid_calls(client: openai.OpenAI, dep: Deployment, seed: int) -> None:
    r = client.chat.completions.create(
        model=dep.model, messages=MESSAGES, tools=[WEATHER, TIME], tool_choice="required",  # type: ignore[arg-type]
        max_tokens=300, seed=seed,
    )  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    _check_calls(choice.message.tool_calls, {"get_weather", "get_time"})


def test_named_tool_choice_streamed_and_not(client: openai.OpenAI, dep: Deployment) -> None:
    args: dict[str, Any] = dict(
        model=dep.model, messages=MESSAGES, tools=[WEATHER, TIME], max_tokens=300, seed=9,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    whole = client.chat.completions.create(**args).choices[0]
    _check_calls(whole.message.tool_calls, {"get_weather"})
    assert len(whole.message.tool_calls or []) == 1
    deltas = [c.choices[0].delta for c in client.chat.completions.create(**args, stream=True) if c.choices]
    calls = [tc for d in deltas for tc in d.tool_calls or []]
    assert calls[0].id and calls[0].function and calls[0].function.name == "get_weather"
    arguments = "".join(tc.function.arguments or "" for tc in calls if tc.function)
    assert json.loads(arguments) == json.loads(whole.message.tool_calls[0].function.arguments)  # type: ignore[index]
    assert not any(d.content for d in deltas)  # no markup leaked as content


def test_a_tool_round_trip_in_the_history(client: openai.OpenAI, dep: Deployment) -> None:
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"},
    ]  # fmt: skip
    r = client.chat.completions.create(model=dep.model, messages=messages, tools=[WEATHER], max_tokens=5)  # type: ignore[arg-type]
    assert r.choices[0].message is not None and r.usage is not None
    plain = client.chat.completions.create(model=dep.model, messages=messages[:1], max_tokens=5)  # type: ignore[arg-type]
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # type: ignore[union-attr]  # tools, call and result


# ---- the Responses API ------------------------------------------------------------------------------


def test_responses_plain(client: openai.OpenAI, dep: Deployment) -> None:
    r = client.responses.create(
        model=dep.model, input="Hello", instructions="Be brief.", max_output_tokens=8, store=True
    )
    assert r.status == "incomplete" and r.incomplete_details is not None  # cut at max_output_tokens
    assert r.store is False  # nothing is kept, whatever was asked
    assert r.output_text and r.usage is not None and r.usage.output_tokens == 8


def test_responses_streamed_event_sequence(client: openai.OpenAI, dep: Deployment) -> None:
    events = list(client.responses.create(model=dep.model, input="Hello", max_output_tokens=6, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    ]  # fmt: skip
    assert "response.output_text.delta" in kinds
    assert kinds[-4:] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.incomplete",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert events[-1].response.output_text == text  # type: ignore[union-attr]


def test_responses_function_tool_gives_a_call_item(client: openai.OpenAI, dep: Deployment) -> None:
    tool = {"type": "function", **WEATHER["function"]}
    r = client.responses.create(
        model=dep.model,
        input="Weather in Paris?",
        tools=[tool],
        tool_choice="required",
        max_output_tokens=300,  # type: ignore[list-item]
    )
    calls = [item for item in r.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), SCHEMAS["get_weather"])
    follow = client.responses.create(
        model=dep.model, max_output_tokens=4,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": calls[0].arguments},
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "21 degrees"},
        ],  # type: ignore[list-item]
    )  # fmt: skip
    assert follow.output_text


def test_responses_json_schema_format(client: openai.OpenAI, dep: Deployment) -> None:
    r = client.responses.create(
        model=dep.model, input="A city?", max_output_tokens=300,
        text={"format": {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}},
    )  # fmt: skip
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), CITY)


def test_responses_previous_response_id_is_refused(dep: Deployment) -> None:
    r = post(dep, "/v1/responses", {"input": "hi", "previous_response_id": "resp_1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "previous_response_id"
    assert "keeps no responses" in r.json()["error"]["message"]


# ---- refused and unknown fields ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/chat/completions",
            {"messages": MESSAGES, "audio": {"voice": "alloy", "format": "wav"}},
            "audio",
        ),
        ("/v1/chat/completions", {"messages": MESSAGES, "use_beam_search": True}, "use_beam_search"),
        ("/v1/completions", {"prompt": "x", "suffix": "y"}, "suffix"),
        ("/v1/responses", {"input": "x", "background": True}, "background"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content",
        ),
    ],
)
def test_recognised_fields_we_cannot_honour_are_400s(
    dep: Deployment, path: str, body: dict, param: str
) -> None:
    r = post(dep, path, body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param and param.split(".")[0] in error["message"]


def test_unknown_fields_are_ignored_and_counted(dep: Deployment) -> None:
    r = post(dep, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 2, "x_custom_flag": 1})
    assert r.status_code == 200
    metrics = scrape(f"{dep.url}/metrics")
    assert any("unknown_fields" in k and "x_custom_flag" in k and v >= 1 for k, v in metrics.items())


# ---- parsers on generated text (the mocker writes what a regex allows) -----------------------------

CALL_REGEX = r'Checking\.<tool_call>\{"name": "get_weather", "arguments": \{"city": "Paris", "unit": "celsius"\}\}</tool_call>'


def test_auto_tool_calls_are_parsed_streamed_and_not(client: openai.OpenAI, dep: Deployment) -> None:
    args: dict[str, Any] = dict(
        model=dep.model,
        messages=MESSAGES,
        tools=[WEATHER],
        max_tokens=200,
        extra_body={"guided_regex": CALL_REGEX},
    )
    whole = client.chat.completions.create(**args).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content == "Checking."
    (call,) = whole.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    chunks = [c for c in client.chat.completions.create(**args, stream=True) if c.choices]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == "Checking."  # the markup never leaks
    parts = [tc for c in chunks for tc in c.choices[0].delta.tool_calls or []]
    assert parts[0].id and parts[0].type == "function" and parts[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads("".join(p.function.arguments or "" for p in parts if p.function)) == json.loads(
        call.function.arguments
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]


@pytest.fixture(scope="module")
def thinking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = start(tmp_path_factory.mktemp("think"), "agg", "--engine", "mocker", "--workers", "1", "--speedup", "50",
              "--reasoning-parser", "deepseek_r1")  # fmt: skip
    yield d
    d.stop()


def test_reasoning_is_split_from_the_content(thinking: Deployment) -> None:
    client = openai.OpenAI(base_url=thinking.base_url, api_key="unused", max_retries=0, timeout=60)
    args: dict[str, Any] = dict(
        model=thinking.model, messages=MESSAGES, max_tokens=100,
        extra_body={"guided_regex": "<think>Paris is large\\.</think>The answer is Paris\\."},
    )  # fmt: skip
    msg = client.chat.completions.create(**args).choices[0].message
    assert msg.content == "The answer is Paris."
    assert msg.model_extra is not None and msg.model_extra["reasoning_content"] == "Paris is large."
    chunks = [c.choices[0].delta for c in client.chat.completions.create(**args, stream=True) if c.choices]
    assert "".join(d.content or "" for d in chunks) == "The answer is Paris."
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in chunks) == "Paris is large."
    r = client.responses.create(model=thinking.model, input="Where?", max_output_tokens=100,
                                extra_body={"structured_outputs": {"regex": "<think>Hm\\.</think>Here\\."}})  # fmt: skip
    assert [o.type for o in r.output] == ["reasoning", "message"] and r.output_text == "Here."
