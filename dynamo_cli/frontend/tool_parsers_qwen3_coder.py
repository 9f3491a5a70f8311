"""The `qwen3_coder` tool-call parser: `<function=NAME><parameter=P>VALUE</parameter>` blocks, each value
converted to the type the tool's JSON schema gives the parameter."""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

from dynamo_cli.frontend.tool_parsers_base import Call, TaggedParser, dumps, tools_json

_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|\Z)", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|\Z)", re.S)


def _schema_types(schema: Any) -> list[str]:
    if not isinstance(schema, dict):
        return []
    kind = schema.get("type")
    types = [kind] if isinstance(kind, str) else [t for t in kind if isinstance(t, str)] if kind else []
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            types += _schema_types(sub)
    return types


def _typed(value: str, kind: str) -> tuple[bool, Any]:
    """(True, value read as `kind`) or (False, None)."""
    text = value.strip()
    if kind == "null":
        return (True, None) if text in ("null", "None") else (False, None)
    if kind == "boolean":
        word = text.lower()
        return (True, word == "true") if word in ("true", "false") else (False, None)
    if kind in ("integer", "number"):
        try:
            number = json.loads(text)
        except ValueError:
            return False, None
        if isinstance(number, float) and not math.isfinite(number):
            return False, None
        if isinstance(number, float) and kind == "integer" and number.is_integer():
            number = int(number)
        ok = isinstance(number, int if kind == "integer" else (int, float)) and not isinstance(number, bool)
        return (True, number) if ok else (False, None)
    if kind in ("object", "array"):
        wanted = dict if kind == "object" else list
        for read in (json.loads, ast.literal_eval):
            try:
                parsed = read(text)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(parsed, wanted) and dumps(parsed) is not None:
                return True, parsed
    return False, None


def _convert(value: str, schema: Any) -> Any:
    """A qwen3_coder parameter's text -> the type its JSON schema names (a string when none fits)."""
    types = _schema_types(schema)
    if "string" in types or not types:
        return None if value == "null" and "null" in types else value
    for kind in types:
        ok, converted = _typed(value, kind)
        if ok:
            return converted
    return value


class Qwen3CoderParser(TaggedParser):
    name = "qwen3_coder"
    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    markers = (OPEN,)

    def _body_calls(self, body: str, closed: bool) -> list[Call] | None:
        calls: list[Call] = []
        pos = 0
        for match in _FUNCTION.finditer(body):
            if body[pos : match.start()].strip():
                return None
            if not closed and not match.group().endswith("</function>"):
                return None  # cut short: a parameter may be missing
            pos = match.end()
            name = match.group(1).strip()
            properties = self.schemas.get(name, {}).get("properties") or {}
            args: dict[str, Any] = {}
            inner_pos = 0
            inner = match.group(2)
            for param in _PARAMETER.finditer(inner):
                if inner[inner_pos : param.start()].strip():
                    return None
                inner_pos = param.end()
                value = param.group(2)
                value = value[1:] if value.startswith("\n") else value
                value = value[:-1] if value.endswith("\n") else value
                key = param.group(1).strip()
                args[key] = _convert(value, properties.get(key) if isinstance(properties, dict) else None)
            arguments = dumps(args)
            if inner[inner_pos:].strip() or not name or arguments is None:
                return None
            calls.append((name, arguments))
        if body[pos:].strip() or not calls:
            return None
        return calls

    @staticmethod
    def render_tools(tools: list[dict]) -> str:
        return (
            "# Tools\n\nYou can call these functions, described one JSON object a line:\n<tools>\n"
            f"{tools_json(tools)}\n</tools>\n\n"
            "To call a function, reply in exactly this form, one <tool_call> block per call:\n<tool_call>\n"
            "<function=function_name>\n<parameter=parameter_name>\nvalue\n</parameter>\n"
            "<parameter=other_parameter>\na value may span\nseveral lines\n</parameter>\n</function>\n"
            "</tool_call>\nWrite each required parameter; objects and arrays as JSON."
        )
