"""OpenAI request bodies: validation, normalisation, and errors in OpenAI's shape."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dynamo_cli.frontend.schemas import (
    MAX_CHOICES,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    OpenAIError,
    validation_error,
)

USER = [{"role": "user", "content": "hi"}]


def error_for(cls: type, **body: Any) -> OpenAIError:
    with pytest.raises(ValidationError) as e:
        cls(**body)
    return validation_error(e.value)


def chat_error(**body: Any) -> OpenAIError:
    return error_for(ChatCompletionRequest, **{"model": "m", "messages": USER, **body})


# ---- OpenAIError ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "type_"),
    [(400, "invalid_request_error"), (404, "invalid_request_error"), (503, "service_unavailable"),
     (500, "server_error"), (502, "server_error")],
)  # fmt: skip
def test_openai_error_type_follows_the_status(status: int, type_: str) -> None:
    err = OpenAIError(status, "boom", param="p", code="c")
    assert err.body() == {"error": {"message": "boom", "type": type_, "param": "p", "code": "c"}}


def test_openai_error_explicit_type_wins() -> None:
    assert OpenAIError(502, "x", type_="upstream").body()["error"]["type"] == "upstream"


# ---- validation_error ----------------------------------------------------------------------------


def test_bad_role_names_the_message_path() -> None:
    err = error_for(ChatCompletionRequest, model="m", messages=[*USER, {"role": "robot", "content": "x"}])
    assert err.status == 400
    assert err.param == "messages.1.role"
    assert err.message.startswith("messages.1.role: ")
    assert "user" in err.message  # says what is allowed
    assert err.body()["error"]["type"] == "invalid_request_error"


def test_missing_field_says_field_required() -> None:
    err = error_for(ChatCompletionRequest, messages=USER)
    assert err.status == 400
    assert err.param == "model"
    assert err.message == "model: field required"


def test_empty_messages_rejected() -> None:
    err = chat_error(messages=[])
    assert err.status == 400
    assert err.param == "messages"


def test_value_errors_lose_pydantics_prefix() -> None:
    err = chat_error(stop=["a", ""])
    assert err.param == "stop"
    assert err.message == "stop: stop sequences must not be empty"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"min_p": 1.5}, "min_p"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"12": 101}}, "logit_bias"),
    ],
)
def test_out_of_range_sampling_values_are_400_with_their_param(body: dict[str, Any], param: str) -> None:
    err = chat_error(**body)
    assert err.status == 400
    assert err.param == param


# ---- Sampling rules ----------------------------------------------------------------------------------


def test_n_is_bounded() -> None:
    assert ChatCompletionRequest(model="m", messages=USER, n=3).n == 3
    for n in (0, MAX_CHOICES + 1):
        err = chat_error(n=n)
        assert err.status == 400 and err.param == "n"


def test_top_logprobs_needs_logprobs_and_is_bounded() -> None:
    assert "logprobs" in chat_error(top_logprobs=2).message
    assert chat_error(logprobs=True, top_logprobs=21).param == "top_logprobs"
    assert ChatCompletionRequest(model="m", messages=USER, logprobs=True, top_logprobs=20).top_logprobs == 20


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def test_tool_choice_rules() -> None:
    assert "tools" in chat_error(tool_choice="required").message
    named = {"type": "function", "function": {"name": "other"}}
    assert "not among the tools" in chat_error(tools=[TOOL], tool_choice=named).message
    assert "same name" in chat_error(tools=[TOOL, TOOL]).message
    assert chat_error(tools=[{"type": "code_interpreter"}]).param.startswith("tools.0")
    ok = ChatCompletionRequest(model="m", messages=USER, tools=[TOOL])
    assert ok.tool_mode == "auto"
    assert (
        ChatCompletionRequest(model="m", messages=USER, tools=[TOOL], tool_choice="none").tool_mode == "none"
    )


@pytest.mark.parametrize(
    ("fields", "spec"),
    [
        ({"response_format": {"type": "json_object"}}, {"json_object": True}),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object"}},
                }
            },
            {"json": {"type": "object"}},
        ),
        ({"response_format": {"type": "text"}}, None),
        ({"guided_json": '{"type": "integer"}'}, {"json": {"type": "integer"}}),
        ({"guided_regex": "[a-z]+"}, {"regex": "[a-z]+"}),
        ({"guided_choice": ["a", "b"]}, {"choice": ["a", "b"]}),
        ({"guided_grammar": "root ::= 'x'"}, {"grammar": "root ::= 'x'"}),
        ({"structured_outputs": {"regex": "\\d+"}}, {"regex": "\\d+"}),
    ],
)
def test_output_constraints_become_one_engine_spec(fields: dict[str, Any], spec: Any) -> None:
    body = ChatCompletionRequest(model="m", messages=USER, **fields)
    assert body.structured_spec()[0] == spec


def test_two_output_constraints_are_refused() -> None:
    body = ChatCompletionRequest(
        model="m", messages=USER, response_format={"type": "json_object"}, guided_regex="a"
    )
    with pytest.raises(OpenAIError) as e:
        body.structured_spec()
    assert e.value.param == "guided_regex"


def test_json_schema_format_needs_a_schema() -> None:
    err = chat_error(response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    assert err.status == 400 and "schema" in err.message


def test_best_of_other_than_n_is_refused() -> None:
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt="x", best_of=3)
    assert CompletionRequest(model="m", prompt="x", best_of=2, n=2).n == 2


@pytest.mark.parametrize(
    ("stop", "expected"),
    [(None, []), ("END", ["END"]), (["a", "b"], ["a", "b"]), ([], [])],
)
def test_stop_is_normalised_to_a_list(stop: Any, expected: list[str]) -> None:
    body = {} if stop is None else {"stop": stop}
    req = ChatCompletionRequest(model="m", messages=USER, **body)
    assert req.stop_list == expected


@pytest.mark.parametrize("stop", ["", ["ok", ""]])
def test_empty_stop_string_is_rejected(stop: Any) -> None:
    assert chat_error(stop=stop).param == "stop"


def test_stream_options_without_stream_is_rejected() -> None:
    err = chat_error(stream_options={"include_usage": True})
    assert err.status == 400
    assert "stream_options" in err.message
    ok = ChatCompletionRequest(model="m", messages=USER, stream=True, stream_options={"include_usage": True})
    assert ok.include_usage is True
    assert ChatCompletionRequest(model="m", messages=USER, stream=True).include_usage is False


def test_requested_max_tokens_prefers_max_completion_tokens() -> None:
    assert ChatCompletionRequest(model="m", messages=USER).requested_max_tokens is None
    assert ChatCompletionRequest(model="m", messages=USER, max_tokens=5).requested_max_tokens == 5
    req = ChatCompletionRequest(model="m", messages=USER, max_tokens=5, max_completion_tokens=9)
    assert req.requested_max_tokens == 9


def test_unknown_fields_are_accepted_and_ignored() -> None:
    req = ChatCompletionRequest(model="m", messages=USER, user="u-1")
    assert req.stop_list == [] and req.n == 1


def test_sampling_penalties_and_logit_bias_are_read() -> None:
    req = ChatCompletionRequest(
        model="m", messages=USER, frequency_penalty=0.5, presence_penalty=-1, repetition_penalty=1.3,
        min_p=0.05, logit_bias={"12": -100, "7": 2.5},
    )  # fmt: skip
    assert (req.frequency_penalty, req.presence_penalty, req.repetition_penalty, req.min_p) == (
        0.5,
        -1,
        1.3,
        0.05,
    )
    assert req.logit_bias == {"12": -100.0, "7": 2.5}


def test_sampling_fields_travel_to_the_worker() -> None:
    from dynamo_cli.transport.protocol import decode_generate, encode_generate
    from dynamo_cli.transport.wire import EngineRequest, SamplingOptions

    plain = EngineRequest("r", [1, 2], SamplingOptions(max_tokens=4))
    assert decode_generate(encode_generate(plain)) == plain
    s = SamplingOptions(max_tokens=4, presence_penalty=0.5, frequency_penalty=-0.25, repetition_penalty=1.2,
                        min_p=0.1, logit_bias={5: -100.0, 49151: 3.0})  # fmt: skip
    full = EngineRequest("r", [1, 2], s)
    assert decode_generate(encode_generate(full)) == full
    s = SamplingOptions(max_tokens=4, logprobs=5, prompt_logprobs=1, logprobs_json=True,
                        structured={"json": {"type": "object", "properties": {"a": {"type": "integer"}}}})  # fmt: skip
    assert decode_generate(encode_generate(EngineRequest("r", [1], s))).sampling == s


def test_engine_outputs_with_logprobs_travel_back() -> None:
    from dynamo_cli.transport.protocol import decode_output, encode_output
    from dynamo_cli.transport.wire import EngineOutput

    for out in (
        EngineOutput([7], logprobs=[(-0.5, [7, 8], [-0.5, -1.5])], prompt_logprobs=[None, (-2.0, [], [])]),
        EngineOutput([7, 9], "stop", logprobs_json=[b'{"token":"a"}', b'{"token":"b"}']),
    ):
        back = decode_output(encode_output(out))
        assert back.token_ids == out.token_ids and back.finish_reason == out.finish_reason
        assert back.logprobs_json == out.logprobs_json
        assert [list(map(_listed, e)) for e in back.logprobs or []] == [
            list(map(_listed, e)) for e in out.logprobs or []
        ]


def _listed(x: object) -> object:
    return list(x) if isinstance(x, (list, tuple)) else x


# ---- chat messages -----------------------------------------------------------------------------------


def test_text_content_parts_are_joined() -> None:
    msg = ChatMessage(
        role="user", content=[{"type": "text", "text": "héllo "}, {"type": "text", "text": "你好"}]
    )
    assert msg.text() == "héllo 你好"


def test_plain_and_missing_content() -> None:
    assert ChatMessage(role="assistant", content="x").text() == "x"
    assert ChatMessage(role="assistant", content=None).text() == ""
    assert ChatMessage(role="assistant").text() == ""


def test_image_content_parts_are_rejected_by_text() -> None:
    msg = ChatMessage(
        role="user",
        content=[{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "x"}}],
    )
    with pytest.raises(ValueError, match="image_url"):
        msg.text()


def test_all_openai_roles_are_accepted() -> None:
    for role in ("system", "user", "assistant", "tool", "developer"):
        assert ChatMessage(role=role, content="x").role == role


# ---- completions -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("hello", "hello"), (["hello"], "hello"), ([1, 2, 3], [1, 2, 3]), ([[1, 2, 3]], [1, 2, 3])],
)
def test_one_prompt_is_accepted_in_every_shape(prompt: Any, expected: Any) -> None:
    assert CompletionRequest(model="m", prompt=prompt).prompt == expected


@pytest.mark.parametrize("prompt", [["a", "b"], [[1], [2]]])
def test_two_prompts_are_rejected(prompt: Any) -> None:
    err = error_for(CompletionRequest, model="m", prompt=prompt)
    assert err.status == 400
    assert err.param == "prompt"
    assert "one prompt" in err.message


@pytest.mark.parametrize("prompt", [[], [[]]])
def test_empty_prompt_list_is_rejected(prompt: Any) -> None:
    err = error_for(CompletionRequest, model="m", prompt=prompt)
    assert err.param == "prompt"
    assert "empty" in err.message


def test_completion_defaults() -> None:
    req = CompletionRequest(model="m", prompt="x")
    assert req.max_tokens == 16
    assert req.echo is False
    assert req.requested_max_tokens == 16


def test_a_wrongly_typed_prompt_names_the_prompt_field() -> None:
    err = error_for(CompletionRequest, model="m", prompt=[1, "a"])
    assert err.status == 400
    assert err.param == "prompt"
