"""The one list of recognised request fields: it covers OpenAI's request schemas (as the official client
types them) and vLLM's extra fields; every refused field is a 400 naming it; unknown ones are counted."""

from __future__ import annotations

import importlib
import logging
import typing
from typing import Any

import pytest

from dynamo_cli.frontend import fields
from dynamo_cli.frontend.fields import (
    HONOURED,
    NO_EFFECT,
    REFUSED,
    UnknownFields,
    check_refused,
    recognised,
)
from dynamo_cli.frontend.schemas import OpenAIError


def _openai_fields(module: str) -> set[str]:
    params = importlib.import_module(module)
    base = getattr(params, "CompletionCreateParamsBase", None) or params.ResponseCreateParamsBase
    return set(typing.get_type_hints(base))


OPENAI = {
    "chat": "openai.types.chat.completion_create_params",
    "completions": "openai.types.completion_create_params",
    "responses": "openai.types.responses.response_create_params",
}


@pytest.mark.parametrize("endpoint", ["chat", "completions", "responses"])
def test_every_openai_request_field_is_recognised(endpoint: fields.Endpoint) -> None:
    openai_fields = _openai_fields(OPENAI[endpoint]) | {"stream"}
    assert openai_fields - recognised(endpoint) == set()


@pytest.mark.parametrize("endpoint", ["chat", "completions", "responses"])
def test_a_field_has_one_fate(endpoint: fields.Endpoint) -> None:
    honoured, no_effect, refused = HONOURED[endpoint], NO_EFFECT[endpoint], set(REFUSED[endpoint])
    assert not honoured & no_effect and not honoured & refused and not no_effect & refused


def _refused_cases() -> list[tuple[str, str, Any]]:
    cases = []
    for endpoint, table in REFUSED.items():
        for name, (neutral, _) in table.items():
            cases.append((endpoint, name, neutral))
    return cases


@pytest.mark.parametrize(("endpoint", "name", "neutral"), _refused_cases())
def test_each_refused_field_is_a_400_naming_it_unless_neutral(
    endpoint: fields.Endpoint, name: str, neutral: tuple[Any, ...]
) -> None:
    for value in neutral:
        check_refused({name: value}, endpoint)  # asks for nothing: accepted
    asking = "something" if None in neutral and len(neutral) == 1 else {"x": 1}
    if any(isinstance(n, bool) for n in neutral):
        asking = True if False in neutral else False
    elif any(isinstance(n, (int, float)) and not isinstance(n, bool) for n in neutral):
        asking = 5
    elif any(isinstance(n, list) for n in neutral):
        asking = [1]
    elif any(isinstance(n, str) for n in neutral):
        asking = "other"
    with pytest.raises(OpenAIError) as e:
        check_refused({name: asking}, endpoint)
    assert e.value.status == 400 and e.value.param == name and name in e.value.message


def test_bool_is_not_taken_for_a_number() -> None:
    with pytest.raises(OpenAIError):
        check_refused({"priority": False}, "chat")  # False == 0, but not the neutral 0


def test_unknown_fields_are_logged_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    counted: list[str] = []
    unknown = UnknownFields(counted.append)
    with caplog.at_level(logging.WARNING):
        assert unknown.note({"model": "m", "frobnicate": 1}, "chat") == ["frobnicate"]
        unknown.note({"frobnicate": 2, "messages": []}, "chat")
    assert counted == ["frobnicate", "frobnicate"]
    assert sum("frobnicate" in r.message for r in caplog.records) == 1


def test_unknown_names_are_bounded() -> None:
    counted: list[str] = []
    unknown = UnknownFields(counted.append)
    for i in range(UnknownFields.MAX_NAMES + 50):
        unknown.note({f"f{i}": 1}, "completions")
    assert len(set(counted)) == UnknownFields.MAX_NAMES + 1  # the rest share one label
    assert counted[-1] == "(other)"
