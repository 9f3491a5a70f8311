"""The request side of OpenAI's Responses API (POST /v1/responses): the request model, and its translation
into a chat request (input items -> messages, function tools, text.format -> response_format).

Nothing is kept on the server, so ``previous_response_id`` is refused.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator

from dynamo_cli.frontend.schemas import OpenAIError, Req


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(12).hex()}"


class ResponsesRequest(Req):
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    text: dict[str, Any] | None = None
    stream: bool = False
    store: bool | None = None  # honoured as: nothing is kept (store: false in every response)
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None

    @field_validator("previous_response_id")
    @classmethod
    def _nothing_kept(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError(
                "this server keeps no responses, so none can be continued; send the whole conversation "
                "as input items"
            )
        return v

    @field_validator("input")
    @classmethod
    def _some_input(cls, v: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(v, list) and not v:
            raise ValueError("input must not be empty")
        return v


_PASSED = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "stream",
    "user",
    "chat_template_kwargs",
    "ignore_eos",
    "include_stop_str_in_output",
    "logit_bias",
    "skip_special_tokens",
    "stop",
    "stop_token_ids",
    "structured_outputs",
)


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIError(400, f"{where}: content is a string or a list of parts", param=where)
    out = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text"):
            raise OpenAIError(
                400,
                f"{where}.{j}: content part type '{kind}' is not supported (this model takes text only)",
                param=f"{where}.{j}",
                code="unsupported_parameter",
            )
        out.append(str(part.get("text", "")))
    return "".join(out)


def _messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
        return messages
    for i, item in enumerate(req.input):
        where = f"input.{i}"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise OpenAIError(400, f"{where}.role: '{role}' is not a message role", param=f"{where}.role")
            messages.append({"role": role, "content": _text_of(item.get("content", ""), f"{where}.content")})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id") or new_id("call"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            text = output if isinstance(output, str) else _text_of(output, f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind == "reasoning":  # earlier reasoning is not shown to the model again (as chat templates do)
            continue
        else:
            raise OpenAIError(
                400,
                f"{where}.type: input items of type '{kind}' are not supported",
                param=f"{where}.type",
                code="unsupported_parameter",
            )
    return messages


def to_chat(req: ResponsesRequest, data: dict[str, Any]) -> dict[str, Any]:
    """The chat request this response request stands for (validated by ChatCompletionRequest after)."""
    chat: dict[str, Any] = {"model": req.model, "messages": _messages(req)}
    for name in _PASSED:
        if data.get(name) is not None:
            chat[name] = data[name]
    if req.max_output_tokens is not None:
        chat["max_tokens"] = req.max_output_tokens
    if req.tools:
        tools = []
        for i, tool in enumerate(req.tools):
            if tool.get("type") != "function":
                raise OpenAIError(
                    400,
                    f"tools.{i}.type: only function tools are supported (got '{tool.get('type')}')",
                    param=f"tools.{i}.type",
                    code="unsupported_parameter",
                )
            fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
            tools.append({"type": "function", "function": fn})
        chat["tools"] = tools
        chat["parallel_tool_calls"] = req.parallel_tool_calls
    choice = req.tool_choice
    if isinstance(choice, dict):
        if choice.get("type") != "function" or "name" not in choice:
            raise OpenAIError(
                400, "tool_choice: give none, auto, required or a function", param="tool_choice"
            )
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        chat["tool_choice"] = choice
    fmt = (req.text or {}).get("format")
    if fmt is not None and not isinstance(fmt, dict):
        raise OpenAIError(400, "text.format: a format is an object", param="text.format")
    if fmt:
        kind = fmt.get("type")
        if kind == "json_schema":
            chat["response_format"] = {
                "type": "json_schema",
                "json_schema": {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt},
            }
        elif kind in ("json_object", "text"):
            chat["response_format"] = {"type": kind}
        else:
            raise OpenAIError(
                400, f"text.format.type: '{kind}' is not a text format", param="text.format.type"
            )
    unknown_text = set(req.text or {}) - {"format", "verbosity"}
    if unknown_text or (req.text or {}).get("verbosity") not in (None, "medium"):
        raise OpenAIError(400, "text: only format can be set", param="text", code="unsupported_parameter")
    return chat
