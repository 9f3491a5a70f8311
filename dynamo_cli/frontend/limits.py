"""Limits checked before work is spent: the body size while it is read, then cheap checks on the parsed
JSON before validation or tokenisation, so no request of any size or shape costs the others time.

- `BodyLimit` (ASGI middleware): a body over the limit gets a 413 as soon as the limit is passed
  (at once when Content-Length says so). The rest of the upload is read and thrown away, up to a second
  bound, so the client, still sending, can read the answer; past that bound the connection is closed.
- `RequestLimits.precheck`: container sizes (messages, stop, logit_bias, tools, schemas, token-id
  prompts) and a lower bound on the prompt's token count from its length: a token never covers more
  than the vocabulary's longest token, so text longer than context x that many characters cannot fit.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dynamo_cli.config.models import FrontendConfig
from dynamo_cli.frontend.schemas import OpenAIError

MIB = 1 << 20
DRAIN_FACTOR = 8  # after a 413, read and discard up to this many times the limit more...
DRAIN_S = 10.0  # ...for at most this long, then close
# JSON nested deeper than this is refused. Real bodies (tools' schemas included) stay far below; deeper
# ones cannot be written back by orjson (254 levels) nor pickled from the parsing processes (~1000).
MAX_JSON_DEPTH = 128


class BodyTooLarge(OpenAIError):
    def __init__(self, limit: int):
        super().__init__(
            413,
            f"the request body is larger than {limit / MIB:g} MiB (frontend.max_body_mb)",
            code="request_too_large",
        )


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with a 413 the client can read."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > self.limit:
            # Expect: 100-continue means nothing was sent yet: answer without asking for the body.
            await self._refuse(receive, send, drain=headers.get(b"expect", b"").lower() != b"100-continue")
            return
        received = 0
        exceeded = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise BodyTooLarge(self.limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    raise BodyTooLarge(self.limit)
            return message

        async def guarded_send(message: Message) -> None:
            if not exceeded:  # once over the limit, this middleware answers, not the app
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            pass
        if exceeded:
            await self._refuse(receive, send, drain=True)

    async def _refuse(self, receive: Receive, send: Send, *, drain: bool) -> None:
        bounds = (DRAIN_FACTOR * self.limit, DRAIN_S) if drain else None
        await refuse(BodyTooLarge(self.limit), receive, send, [(b"connection", b"close")], bounds)


async def refuse(
    err: OpenAIError,
    receive: Receive,
    send: Send,
    headers: list[tuple[bytes, bytes]],
    drain: tuple[int, float] | None,
) -> None:
    """Answer ``err`` before the app has read the body, then read and drop up to ``drain`` (bytes,
    seconds) of it: closing with unread bytes would reset the connection and lose the answer."""
    body = orjson.dumps(err.body())
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": True})
    if drain is not None:
        await discard(receive, *drain)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def discard(receive: Receive, max_bytes: int, max_s: float) -> None:
    deadline = time.monotonic() + max_s
    left = max_bytes
    while left > 0:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            return
        if message["type"] != "http.request":
            return
        left -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _too_many(param: str, n: int, limit: int, key: str, what: str = "entries") -> OpenAIError:
    return OpenAIError(
        400,
        f"{param} has {n} {what}; at most {limit} are allowed (frontend.{key})",
        param=param,
        code="limit_exceeded",
    )


@dataclass(frozen=True)
class RequestLimits:
    """The frontend's caps, with the served model's context and longest token (in characters)."""

    max_json_values: int
    max_messages: int
    max_stop: int
    max_stop_chars: int
    max_logit_bias: int
    max_tools: int
    max_schema_bytes: int
    context: int
    longest_token: int  # characters: a token never stands for more text than this

    @classmethod
    def build(cls, cfg: FrontendConfig, context: int, longest_token: int) -> RequestLimits:
        """``longest_token`` 0: unknown (the tokenizer may shorten text), so no bound from length."""
        return cls(
            cfg.max_json_values,
            cfg.max_messages,
            cfg.max_stop,
            cfg.max_stop_chars,
            cfg.max_logit_bias,
            cfg.max_tools,
            cfg.max_schema_kb * 1024,
            context,
            longest_token or 1 << 40,
        )

    def min_tokens(self, chars: int) -> int:
        """The fewest tokens ``chars`` characters of text can become."""
        return -(-chars // self.longest_token)

    def check_text(self, chars: int, param: str) -> None:
        if (n := self.min_tokens(chars)) >= self.context:
            raise OpenAIError(
                400,
                f"the prompt has at least {n} tokens ({chars} characters); the model's context is "
                f"{self.context}",
                param=param,
                code="context_length_exceeded",
            )

    def precheck(self, data: dict[str, Any], chat: bool) -> None:
        """Refuse what is too big on the parsed JSON, before validation walks it."""
        stop = data.get("stop")
        stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        if len(stops) > self.max_stop:
            raise _too_many("stop", len(stops), self.max_stop, "max_stop", "strings")
        for s in stops:
            if isinstance(s, str) and len(s) > self.max_stop_chars:
                raise OpenAIError(
                    400,
                    f"a stop string has {len(s)} characters; at most {self.max_stop_chars} are allowed "
                    "(frontend.max_stop_chars)",
                    param="stop",
                    code="limit_exceeded",
                )
        stop_ids = data.get("stop_token_ids")
        if isinstance(stop_ids, list) and len(stop_ids) > self.max_stop:
            raise _too_many("stop_token_ids", len(stop_ids), self.max_stop, "max_stop", "ids")
        bias = data.get("logit_bias")
        if isinstance(bias, dict) and len(bias) > self.max_logit_bias:
            raise _too_many("logit_bias", len(bias), self.max_logit_bias, "max_logit_bias")
        for key in ("tools", "functions"):
            tools = data.get(key)
            if isinstance(tools, list):
                if len(tools) > self.max_tools:
                    raise _too_many(key, len(tools), self.max_tools, "max_tools", "tools")
                self._check_schema(key, tools)
        for key in ("response_format", "guided_json", "structured_outputs", "text", "guided_grammar"):
            value = data.get(key)
            if isinstance(value, (dict, str)):
                self._check_schema(key, value)
        if chat and "messages" not in data and "input" in data:  # /v1/responses
            if isinstance(data["input"], str):
                self.check_text(len(data["input"]), "input")
            else:
                self._precheck_messages(data["input"], "input")
        elif chat:
            self._precheck_messages(data.get("messages"))
        else:
            self._precheck_prompt(data.get("prompt"))

    def check_values(self, data: Any) -> None:
        """Count the body's JSON values, stopping as soon as there are too many, and refuse nesting
        deeper than MAX_JSON_DEPTH. Walked a level at a time: the depth costs nothing to know."""
        left = self.max_json_values
        level, depth = [data], 0
        while level:
            depth += 1
            if depth > MAX_JSON_DEPTH:
                message = f"the request body nests more than {MAX_JSON_DEPTH} levels deep"
                raise OpenAIError(400, message, code="limit_exceeded")
            below: list[Any] = []
            for value in level:
                left -= 1
                if isinstance(value, dict):
                    left -= len(value)  # the keys
                    below.extend(value.values())
                elif isinstance(value, list):
                    below.extend(value)
                if left < 0 or len(below) > left:
                    raise OpenAIError(
                        400,
                        f"the request body has more than {self.max_json_values} JSON values "
                        "(frontend.max_json_values)",
                        code="limit_exceeded",
                    )
            level = below

    def _check_schema(self, param: str, value: Any) -> None:
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError:  # nested past orjson's 254 levels (check_values has not run yet)
            message = f"{param} nests more than {MAX_JSON_DEPTH} levels deep"
            raise OpenAIError(400, message, param=param, code="limit_exceeded") from None
        if size > self.max_schema_bytes:
            raise OpenAIError(
                400,
                f"{param} is {size} bytes of JSON; at most {self.max_schema_bytes} are allowed "
                "(frontend.max_schema_kb)",
                param=param,
                code="limit_exceeded",
            )

    def _precheck_messages(self, messages: Any, param: str = "messages") -> None:
        if not isinstance(messages, list):
            return  # validation names the problem
        if len(messages) > self.max_messages:
            raise _too_many(param, len(messages), self.max_messages, "max_messages", "messages")
        chars = 0
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    text = part.get("text") if isinstance(part, dict) else None
                    if isinstance(text, str):
                        chars += len(text)
        self.check_text(chars, param)

    def _precheck_prompt(self, prompt: Any) -> None:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # one prompt in a batch of one
        if isinstance(prompt, str):
            self.check_text(len(prompt), "prompt")
        elif isinstance(prompt, list) and len(prompt) >= self.context:
            raise OpenAIError(
                400,
                f"the prompt has {len(prompt)} tokens; the model's context is {self.context}",
                param="prompt",
                code="context_length_exceeded",
            )
