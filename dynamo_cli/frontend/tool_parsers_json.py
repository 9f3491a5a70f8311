"""The JSON-style tool-call parsers: `hermes` (`<tool_call>{...}</tool_call>`), `llama3_json` (bare JSON
objects) and `mistral` (`[TOOL_CALLS]` then a JSON array, or `name[ARGS]{...}`), and the JSON call readers
they share."""

from __future__ import annotations

import json
import re
from typing import Any

from dynamo_cli.frontend.tool_parsers_base import (
    Block,
    Call,
    TaggedParser,
    ToolParser,
    dumps,
    literal,
    skip_ws,
    tools_json,
)


def _arguments(raw: Any) -> str | None:
    """Arguments as the model wrote them -> JSON object text; None when they are not an object."""
    if raw is None:
        return "{}"
    if isinstance(raw, str):  # an object written as a JSON string
        if not raw.strip():
            return "{}"
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    return dumps(raw) if isinstance(raw, dict) else None


def _json_call(obj: Any) -> Call | None:
    """`{"name": ..., "arguments"|"parameters": {...}}` -> a call, else None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    raw = obj["arguments"] if "arguments" in obj else obj.get("parameters")
    args = _arguments(raw)
    return None if args is None else (obj["name"], args)


def _json_calls(text: str) -> list[Call] | None:
    """A JSON call object, or an array of them -> calls; None if any is not a call."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    items = value if isinstance(value, list) else [value]
    calls = [_json_call(item) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


class HermesParser(TaggedParser):
    name = "hermes"
    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    markers = (OPEN,)

    def _body_calls(self, body: str, closed: bool) -> list[Call] | None:
        return _json_calls(body)  # unclosed: the JSON being whole is the sign it was not cut short

    @staticmethod
    def render_tools(tools: list[dict]) -> str:
        return (
            "# Tools\n\nYou may call one or more functions to answer the user. The functions you can call "
            "are described, one JSON object a line, between <tools></tools> tags:\n<tools>\n"
            f"{tools_json(tools)}\n</tools>\n\n"
            "To call a function, reply with a JSON object holding its name and arguments between "
            "<tool_call></tool_call> tags, one block per call:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <arguments-json-object>}\n</tool_call>'
        )


class Llama3JsonParser(ToolParser):
    """A JSON object is taken for a call when it has a string "name", no keys beyond name, parameters,
    arguments and type, and either parameters/arguments or a name among the tools."""

    name = "llama3_json"
    TAG = "<|python_tag|>"
    markers = (TAG,)
    lead_markers = ("{", ";")
    _KEYS = frozenset({"name", "parameters", "arguments", "type"})

    def _scan_block(self, buf: str, final: bool) -> Block | None:
        separator = buf.startswith(";")
        i = skip_ws(buf, len(self.TAG) if buf.startswith(self.TAG) else 1 if separator else 0)
        if i == len(buf):
            if not final:
                return None
            return len(buf), [] if separator and self._calls else None
        if buf[i] != "{":
            return max(i, 1), None
        end = self._scan.end(buf, i)
        if end is None:
            return None if not final else (len(buf), None)
        try:
            obj = json.loads(buf[i:end])
        except (ValueError, RecursionError):
            return end, None
        call = _json_call(obj)
        if call is None or not set(obj) <= self._KEYS:
            return end, None
        if "parameters" not in obj and "arguments" not in obj and call[0] not in self.schemas:
            return end, None
        return end, [call]

    @staticmethod
    def render_tools(tools: list[dict]) -> str:
        return (
            "You can call the functions below. To call one, reply with only a JSON object of the form "
            '{"name": function name, "parameters": object of argument names and values}; '
            "separate several calls with ';'. Do not use variables.\n\n"
            f"{tools_json(tools)}"
        )


class MistralParser(ToolParser):
    name = "mistral"
    MARK = "[TOOL_CALLS]"
    markers = (MARK,)
    _NAME = re.compile(r"[\w.\-:]+")
    _ID = re.compile(r"\w*")

    def _scan_block(self, buf: str, final: bool) -> Block | None:
        incomplete = None if not final else (len(buf), None)
        i = skip_ws(buf, len(self.MARK))
        if i == len(buf):
            return incomplete
        if buf[i] in "[{":  # [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
            end = self._scan.end(buf, i)
            return incomplete if end is None else (end, _json_calls(buf[i:end]))
        match = self._NAME.match(buf, i)  # [TOOL_CALLS]name[ARGS]{...}
        if match is None:
            return i, None
        name, i = match.group(), match.end()
        if i == len(buf):
            return incomplete
        at = literal(buf, i, "[CALL_ID]")
        if at is None:
            return incomplete
        if at != -1:
            i = self._ID.match(buf, at).end()  # type: ignore[union-attr]  # \w* always matches
            if i == len(buf):
                return incomplete
        at = literal(buf, i, "[ARGS]")
        if at is None:
            return incomplete
        if at == -1:
            return i, None
        i = skip_ws(buf, at)
        if i == len(buf):
            return incomplete
        if buf[i] != "{":
            return i, None
        end = self._scan.end(buf, i)
        if end is None:
            return incomplete
        args = _arguments(buf[i:end])
        return end, None if args is None else [(name, args)]

    @staticmethod
    def render_tools(tools: list[dict]) -> str:
        return (
            "You can call the functions below, described one JSON object a line:\n"
            f"{tools_json(tools)}\n\n"
            "To call functions, reply with [TOOL_CALLS] followed by a JSON array of the calls: "
            '[TOOL_CALLS][{"name": "function_name", "arguments": {"argument": "value"}}]'
        )
