"""Request limits: the body limit's 413 (and what is read after it), and the caps checked on the parsed
JSON before validation or tokenisation."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from dynamo_cli.config.models import FrontendConfig
from dynamo_cli.frontend.limits import BodyLimit, RequestLimits
from dynamo_cli.frontend.parsing import parse_body
from dynamo_cli.frontend.schemas import OpenAIError
from dynamo_cli.models.embedded import prepare_tokenizer_folder
from dynamo_cli.models.tokenizer import ModelTokenizer

LIMITS = RequestLimits.build(FrontendConfig(), context=8192, longest_token=81)
USER = [{"role": "user", "content": "hi"}]


def refused(data: dict[str, Any], chat: bool = True) -> OpenAIError:
    with pytest.raises(OpenAIError) as e:
        LIMITS.precheck({"model": "m", **data}, chat=chat)
    return e.value


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"messages": USER * 2049}, "messages"),
        ({"messages": USER, "stop": ["x"] * 17}, "stop"),
        ({"messages": USER, "stop": "x" * 1025}, "stop"),
        ({"messages": USER, "stop_token_ids": [1] * 17}, "stop_token_ids"),
        ({"messages": USER, "logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"),
        ({"messages": USER, "tools": [{"type": "function"}] * 129}, "tools"),
        ({"messages": USER, "tools": [{"type": "function", "description": "d" * (1 << 20)}]}, "tools"),
        (
            {"messages": USER, "response_format": {"type": "json_schema", "s": "x" * (1 << 20)}},
            "response_format",
        ),
    ],
)
def test_caps_name_the_field(data: dict[str, Any], param: str) -> None:
    err = refused(data)
    assert (err.status, err.param, err.code) == (400, param, "limit_exceeded")
    assert "frontend.max_" in err.message  # names the key that raises it


def test_at_the_caps_is_accepted() -> None:
    LIMITS.precheck(
        {"messages": USER * 2048, "stop": ["x"] * 16, "logit_bias": {str(i): 1 for i in range(1024)}},
        chat=True,
    )


def test_text_that_cannot_fit_the_context_is_refused_from_its_length() -> None:
    # 8192 tokens of at most 81 characters each: 663,552 characters is the most that could fit.
    LIMITS.precheck({"messages": [{"role": "user", "content": "a" * (8191 * 81)}]}, chat=True)
    err = refused({"messages": [{"role": "user", "content": "a" * (8192 * 81)}]})
    assert (err.status, err.param, err.code) == (400, "messages", "context_length_exceeded")
    parts = [{"type": "text", "text": "a" * (5000 * 81)}] * 2
    assert refused({"messages": [{"role": "user", "content": parts}]}).code == "context_length_exceeded"
    err = refused({"prompt": "a b " * 200_000}, chat=False)
    assert (err.param, err.code) == ("prompt", "context_length_exceeded")
    err = refused({"prompt": [1] * 10**6}, chat=False)
    assert (err.param, err.code) == ("prompt", "context_length_exceeded")
    assert refused({"prompt": [[1] * 8192]}, chat=False).code == "context_length_exceeded"


def test_longest_token_bounds_the_real_tokenizer() -> None:
    tok = ModelTokenizer(prepare_tokenizer_folder())
    assert 1 < tok.longest_token < 200
    # No text becomes fewer tokens than its length over the longest token.
    for text in ["a" * 5000, " " * 5000, "\n" * 3000, "the " * 2000, "<|im_start|>" * 100, "x" * 81]:
        assert len(tok.encode(text, add_special_tokens=False)) >= -(-len(text) // tok.longest_token)


class _Upload:
    """An ASGI conversation: the client's body in chunks; what the app sent back."""

    def __init__(self, body: bytes, chunk: int, declared: bool = True):
        self.chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
        self.declared = declared
        self.read = 0
        self.sent: list[dict[str, Any]] = []

    def scope(self) -> dict[str, Any]:
        size = sum(len(c) for c in self.chunks)
        headers = [(b"content-length", str(size).encode())] if self.declared else []
        return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers}

    async def receive(self) -> dict[str, Any]:
        if not self.chunks:
            return {"type": "http.disconnect"}
        chunk = self.chunks.pop(0)
        self.read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


async def _echo_app(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _run(upload: _Upload, limit: int) -> None:
    asyncio.run(BodyLimit(_echo_app, limit)(upload.scope(), upload.receive, upload.send))


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_over_the_limit_gets_a_413_and_the_rest_is_drained(declared: bool) -> None:
    up = _Upload(b"x" * 10_000, chunk=1000, declared=declared)
    _run(up, limit=4000)
    start, first, last = up.sent
    assert start["status"] == 413
    assert (b"connection", b"close") in start["headers"]
    err = orjson.loads(first["body"])["error"]
    assert err["code"] == "request_too_large" and err["type"] == "invalid_request_error"
    assert first["more_body"] is True and last == {
        "type": "http.response.body",
        "body": b"",
        "more_body": False,
    }
    assert up.read == 10_000  # everything the client sent was read before the close


def test_the_drain_stops_at_its_bound() -> None:
    up = _Upload(b"x" * 100_000, chunk=1000)
    _run(up, limit=1000)  # drains at most 8x the limit more
    assert up.sent[0]["status"] == 413
    assert up.read < 100_000


def test_a_body_within_the_limit_reaches_the_app() -> None:
    up = _Upload(b"x" * 4000, chunk=1000)
    _run(up, limit=4000)
    assert up.sent[0]["status"] == 200 and up.sent[1]["body"] == b"4000"


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # nested 10^5 deep
        b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}',  # invalid UTF-8
        b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',  # a lone surrogate
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]',  # cut short
        b'["model", "m"]',  # not an object
    ],
)
def test_bodies_that_are_not_json_objects_are_refused(body: bytes) -> None:
    with pytest.raises(OpenAIError) as e:
        parse_body(body, LIMITS, chat=True)
    assert (e.value.status, e.value.code) == (400, "invalid_json")


def test_a_body_of_too_many_values_is_refused_before_anything_walks_it() -> None:
    few = orjson.dumps({"model": "m", "messages": USER, "x": [[]] * 200_000})
    assert parse_body(few, LIMITS, chat=True)["model"] == "m"
    many = orjson.dumps({"model": "m", "messages": USER, "x": [[]] * 300_000})
    with pytest.raises(OpenAIError) as e:
        parse_body(many, LIMITS, chat=True)
    assert (e.value.status, e.value.code) == (400, "limit_exceeded")
    assert "frontend.max_json_values" in e.value.message
