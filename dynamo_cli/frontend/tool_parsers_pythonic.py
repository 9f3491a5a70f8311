"""The `pythonic` tool-call parser: a Python list of calls `[f(x=1), g(s="a")]`, read with `ast` (literal
arguments only, never evaluated)."""

from __future__ import annotations

import ast
from typing import Any

from dynamo_cli.frontend.tool_parsers_base import Block, Call, ToolParser, dumps, skip_ws, tools_json

_JSON_NAMES = {"true": True, "false": False, "null": None}


def _py_value(node: ast.AST) -> Any:
    """A literal expression -> its value (JSON's true/false/null accepted); anything else raises."""
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (str, int, float))):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_py_value(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        keys = [k for k in node.keys if k is not None]
        if len(keys) != len(node.keys):
            raise ValueError("** in a dict")
        return {_py_value(k): _py_value(v) for k, v in zip(keys, node.values, strict=True)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _py_value(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    raise ValueError(f"not a literal: {type(node).__name__}")


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def _python_calls(text: str) -> list[Call] | None:
    """`[f(a=1), g()]` (or one bare call) -> calls; None unless every item is a call with literal
    keyword arguments."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    items = tree.body.elts if isinstance(tree.body, ast.List) else [tree.body]
    calls: list[Call] = []
    for item in items:
        if not isinstance(item, ast.Call) or item.args or any(kw.arg is None for kw in item.keywords):
            return None
        name = _dotted(item.func)
        if name is None:
            return None
        try:
            arguments = dumps({kw.arg: _py_value(kw.value) for kw in item.keywords})
        except (ValueError, TypeError, RecursionError):
            return None
        if arguments is None:
            return None
        calls.append((name, arguments))
    return calls or None


class PythonicParser(ToolParser):
    name = "pythonic"
    START, END = "<|python_start|>", "<|python_end|>"
    markers = (START,)
    lead_markers = ("[", END)
    quotes = "\"'"
    brackets = "([{)]}"

    def _scan_block(self, buf: str, final: bool) -> Block | None:
        incomplete = None if not final else (len(buf), None)
        if buf.startswith(self.START):  # Llama 4: <|python_start|>[...]<|python_end|>
            close = self._find_close(buf, self.END, len(self.START))
            if close != -1:
                return close + len(self.END), _python_calls(buf[len(self.START) : close])
            return incomplete if not final else (len(buf), _python_calls(buf[len(self.START) :]))
        if buf.startswith(self.END):  # the end of a <|python_start|> list already read: dropped
            return len(self.END), [] if self._calls else None
        # `[` at the start: given up as soon as it cannot be `[name(`, so that text flows again.
        i = skip_ws(buf, 1)
        if i < len(buf) and not (buf[i].isalpha() or buf[i] == "_"):
            return 1, None
        while i < len(buf) and (buf[i].isalnum() or buf[i] in "_."):
            i += 1
        i = skip_ws(buf, i)
        if i == len(buf):
            return incomplete
        if buf[i] != "(":
            return 1, None
        end = self._scan.end(buf, 0)
        return incomplete if end is None else (end, _python_calls(buf[:end]))

    @staticmethod
    def render_tools(tools: list[dict]) -> str:
        return (
            "You can call the functions below, described one JSON object a line:\n"
            f"{tools_json(tools)}\n\n"
            "To call functions, reply with only a Python list of calls with keyword arguments, such as "
            "[func_name1(param1=value1, param2=value2), func_name2(param=value)]. Use literal values "
            "only, no variables, and no other text when you call a function."
        )
