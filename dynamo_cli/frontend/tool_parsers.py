"""Tool-call parsers: a model's generated text -> OpenAI `tool_calls` and the content around them.

Five formats, named as vLLM names them:
- `hermes` (Qwen 2.5/3, Hermes): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block a call.
- `llama3_json` (Llama 3.x): the output is (after an optional `<|python_tag|>`) a JSON object
  `{"name": ..., "parameters": {...}}`, or several separated by `;` or whitespace.
- `mistral`: `[TOOL_CALLS]` then a JSON array of `{"name", "arguments"}` objects, or (newer tokenizers)
  `[TOOL_CALLS]name[ARGS]{...}` (with an optional `[CALL_ID]id` before `[ARGS]`), once per call.
- `pythonic` (Llama 3.2/4): a Python list of calls `[f(x=1), g(s="a")]` at the start of the output (or
  inside `<|python_start|>`); read with `ast`, literal arguments only, never evaluated.
- `qwen3_coder`: `<tool_call><function=NAME><parameter=P>VALUE</parameter>...</function></tool_call>`; each
  value converted to the type the tool's JSON schema gives the parameter (a string when unknown).

One machine serves both paths: `parse(text)` feeds the whole text to a fresh parser and adds up what comes
out, so the streamed deltas add up to the non-streamed result by construction, and the machine decides only
on what its buffer holds, never on where the chunks were split. Text that could still become markup
("<tool_" while "<tool_call>" is possible) is held back; a block of markup is held until it is complete
and then becomes calls (one `ToolCallDelta` each, carrying id, name and the whole arguments JSON) or, when
it is not a valid call (bad JSON, unclosed at the end, unknown shape), goes out unchanged as content.

Decisions:
- A call to a function that is not among `tools` is still returned as a call: the client decides (as vLLM
  does). Only `llama3_json`, whose calls are bare JSON objects, asks more of an object before taking it for
  a call (see `Llama3JsonParser`), so that a JSON answer stays content.
- A block left unclosed at the end of the output (`<tool_call>{...}` without `</tool_call>`) is a call when
  what it holds is a whole valid call (as vLLM's regular expressions allow), otherwise content.
- A valid call's markup is cut out of the text, with the whitespace around it where no content lies on
  that side (before the first content, after the last); between two pieces of content it stays. All other
  text is kept as it came, and content is None when nothing is left.
"""

from __future__ import annotations

import ast
import json
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass
class ToolCall:
    id: str  # "call_" + random hex (OpenAI style)
    name: str
    arguments: str  # JSON text of the arguments object


@dataclass
class ContentDelta:
    text: str


@dataclass
class ToolCallDelta:
    index: int  # the call's index among this response's calls
    id: str | None = None  # set (with name) on the call's first delta only
    name: str | None = None
    arguments: str = ""  # a piece of the arguments JSON text


Delta = ContentDelta | ToolCallDelta
_Call = tuple[str, str]  # (name, arguments JSON text)
# A finished block: where it ends in the buffer, and its calls (None: not a call, the text is content;
# []: markup that carries no call, such as the `;` after a llama3 call, dropped).
_Block = tuple[int, list[_Call] | None]


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def assemble(deltas: list[Delta]) -> tuple[str | None, list[ToolCall]]:
    """Streamed deltas -> what `parse` returns: (content or None, calls)."""
    content = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
    calls: dict[int, ToolCall] = {}
    for d in deltas:
        if isinstance(d, ToolCallDelta):
            call = calls.setdefault(d.index, ToolCall(id="", name="", arguments=""))
            call.id = d.id or call.id
            call.name = d.name or call.name
            call.arguments += d.arguments
    return content or None, [calls[i] for i in sorted(calls)]


def _dumps(value: Any) -> str | None:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):  # not JSON: bytes, sets, NaN...
        return None


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
    return _dumps(raw) if isinstance(raw, dict) else None


def _json_call(obj: Any) -> _Call | None:
    """`{"name": ..., "arguments"|"parameters": {...}}` -> a call, else None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    raw = obj["arguments"] if "arguments" in obj else obj.get("parameters")
    args = _arguments(raw)
    return None if args is None else (obj["name"], args)


def _json_calls(text: str) -> list[_Call] | None:
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


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def _literal(text: str, i: int, lit: str) -> int | None:
    """End of `lit` at text[i]; None while the text ends inside it; -1 when it is not there."""
    if text.startswith(lit, i):
        return i + len(lit)
    return None if lit.startswith(text[i:]) else -1


class _BracketScan:
    """Where the bracketed value opening at text[start] closes (quotes respected); resumes where the last
    call stopped, as the buffer only grows while a block is open."""

    def __init__(self, quotes: str, brackets: str) -> None:
        self._quotes = quotes
        self._opening, self._closing = brackets[: len(brackets) // 2], brackets[len(brackets) // 2 :]
        self.reset()

    def reset(self) -> None:
        self._start, self._pos, self._depth, self._quote, self._end = -1, 0, 0, "", -1

    def end(self, text: str, start: int) -> int | None:
        if start != self._start:
            self.reset()
            self._start, self._pos = start, start
        if self._end != -1:
            return self._end
        i, depth, quote = self._pos, self._depth, self._quote
        while i < len(text):
            c = text[i]
            if quote:
                if c == "\\":
                    i += 1  # skips the escaped character, even one still to come
                elif c == quote:
                    quote = ""
            elif c in self._quotes:
                quote = c
            elif c in self._opening:
                depth += 1
            elif c in self._closing:
                depth -= 1
                if depth <= 0:
                    self._end = i + 1
                    return self._end
            i += 1
        self._pos, self._depth, self._quote = i, depth, quote
        return None


def _tool_functions(tools: list[dict]) -> list[dict]:
    """OpenAI `tools` entries -> their `function` objects (a bare function object is taken as it is)."""
    out = []
    for tool in tools or []:
        if isinstance(tool, dict):
            function = tool.get("function", tool)
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                out.append(function)
    return out


def _tools_json(tools: list[dict]) -> str:
    return "\n".join(json.dumps(f, ensure_ascii=False) for f in _tool_functions(tools))


class ToolParser:
    """Streaming parser of one response: `feed` each text delta, then `finish`; or `parse` a whole text."""

    name: ClassVar[str]
    markers: ClassVar[tuple[str, ...]] = ()  # open a block anywhere
    # Open a block only where nothing but whitespace precedes it since the start or the last call.
    lead_markers: ClassVar[tuple[str, ...]] = ()
    quotes: ClassVar[str] = '"'  # of the bracketed values scanned (JSON here)
    brackets: ClassVar[str] = "{[}]"  # openings, then closings
    _marker_firsts: ClassVar[frozenset[str] | None] = None  # the markers' first characters

    def __init__(self, tools: list[dict]) -> None:
        self.tools = list(tools or [])
        self.schemas: dict[str, dict] = {}
        for function in _tool_functions(self.tools):
            parameters = function.get("parameters")
            self.schemas[function["name"]] = parameters if isinstance(parameters, dict) else {}
        self._buf = ""
        self._in_block = False
        self._pending = ""  # whitespace after the content so far: held while a call may end the content
        self._has_content = False
        self._after_call = False  # after a call and no content yet: whitespace dropped
        self._call_last = False  # a call came after the last content
        self._lead = True  # nothing but whitespace since the start or the last call
        self._calls = 0
        self._scan = _BracketScan(self.quotes, self.brackets)
        self._close_from = 0  # an open block's closing tag is not before this (no rescans of long blocks)

    def feed(self, text: str) -> list[Delta]:
        out: list[Delta] = []
        body = self.feed_content(text)  # the common case: no marker can start in this text
        if body is not None:
            if body:
                out.append(ContentDelta(body))
            return out
        self._buf += text
        self._run(out, final=False)
        return out

    def _plain(self, text: str) -> bool:
        cls = type(self)
        firsts = cls.__dict__.get("_marker_firsts")  # each class its own (not a parent's)
        if firsts is None:
            firsts = frozenset(m[0] for m in self.markers)
            cls._marker_firsts = firsts
        return not any(c in text for c in firsts)

    def finish(self) -> list[Delta]:
        out: list[Delta] = []
        self._run(out, final=True)
        if self._pending and not self._call_last:
            out.append(ContentDelta(self._pending))
        self._pending = ""
        return out

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        fresh = type(self)(self.tools)
        return assemble(fresh.feed(text) + fresh.finish())

    @staticmethod
    def render_tools(tools: list[dict]) -> str:
        raise NotImplementedError

    def _scan_block(self, buf: str, final: bool) -> _Block | None:
        """The block that opens at buf[0] (with a marker): None while more text is needed (never when
        `final`), else where it ends and its calls."""
        raise NotImplementedError

    def _run(self, out: list[Delta], final: bool) -> None:
        while self._buf:
            if self._in_block:
                block = self._scan_block(self._buf, final)
                if block is None:
                    return
                end, calls = block
                text, self._buf = self._buf[:end], self._buf[end:]
                self._in_block = False
                self._scan.reset()
                self._close_from = 0
                if calls is None:
                    self._content(text, out)
                for name, args in calls or []:
                    self._call(name, args, out)
                continue
            start, full = self._find_start(self._buf)
            if start:
                self._content(self._buf[:start], out)
                self._buf = self._buf[start:]
            if full:
                self._in_block = True
            elif final:  # what was held as a possible marker is text after all
                self._content(self._buf, out)
                self._buf = ""
            else:
                return

    def _find_start(self, buf: str) -> tuple[int, bool]:
        """Where the content ends: the earliest marker (full: True) or text that may become one."""
        best = (len(buf), False)
        if self._lead and self.lead_markers:
            p = _skip_ws(buf, 0)
            for m in self.lead_markers:
                if buf.startswith(m, p):
                    return p, True
                if p < len(buf) and m.startswith(buf[p:]):
                    best = (p, False)
        for m in self.markers:
            i = buf.find(m)
            if i != -1 and i <= best[0]:
                best = (i, True)
            k = partial_suffix(buf, m)
            if k and len(buf) - k < best[0]:
                best = (len(buf) - k, False)
        return best

    def _find_close(self, buf: str, tag: str, start: int) -> int:
        """Where ``tag`` closes the open block, or -1; each call searches only what is new since the last
        (a block as long as the output would otherwise be searched once a token)."""
        close = buf.find(tag, max(start, self._close_from))
        if close == -1:
            self._close_from = max(start, len(buf) - len(tag) + 1)
        return close

    def _content(self, text: str, out: list[Delta]) -> None:
        body = self._take_content(text)
        if body:
            out.append(ContentDelta(body))

    def _take_content(self, text: str) -> str:
        """The content this text releases (whitespace that a call could still end is held)."""
        if self._after_call:
            text = text.lstrip()
            if not text:
                return ""
            self._after_call = False
        text = self._pending + text
        body = text.rstrip()
        self._pending = text[len(body) :]
        if body:
            self._has_content, self._call_last, self._lead = True, False, False
        return body

    def feed_content(self, text: str) -> str | None:
        """``feed`` for the common case, without delta objects: the content released when no marker can
        start in this text (possibly ""), None when the text needs the full parse (call ``feed``)."""
        if self._buf or (self._lead and self.lead_markers) or not self._plain(text):
            return None
        return self._take_content(text)

    def _call(self, name: str, arguments: str, out: list[Delta]) -> None:
        if not self._has_content:
            self._pending, self._after_call = "", True
        self._call_last = self._lead = True
        out.append(ToolCallDelta(index=self._calls, id=new_call_id(), name=name, arguments=arguments))
        self._calls += 1


class _TaggedParser(ToolParser):
    """Blocks between an opening and a closing tag; the end of the output closes the last one."""

    OPEN: ClassVar[str]
    CLOSE: ClassVar[str]

    def _scan_block(self, buf: str, final: bool) -> _Block | None:
        close = self._find_close(buf, self.CLOSE, len(self.OPEN))
        if close != -1:
            return close + len(self.CLOSE), self._body_calls(buf[len(self.OPEN) : close], closed=True)
        if not final:
            return None
        return len(buf), self._body_calls(buf[len(self.OPEN) :], closed=False)

    def _body_calls(self, body: str, closed: bool) -> list[_Call] | None:
        """The calls in a block's body; `closed`: False when the end of the output closed the block."""
        raise NotImplementedError


class HermesParser(_TaggedParser):
    name = "hermes"
    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    markers = (OPEN,)

    def _body_calls(self, body: str, closed: bool) -> list[_Call] | None:
        return _json_calls(body)  # unclosed: the JSON being whole is the sign it was not cut short

    @staticmethod
    def render_tools(tools: list[dict]) -> str:
        return (
            "# Tools\n\nYou may call one or more functions to answer the user. The functions you can call "
            "are described, one JSON object a line, between <tools></tools> tags:\n<tools>\n"
            f"{_tools_json(tools)}\n</tools>\n\n"
            "To call a function, reply with a JSON object holding its name and arguments between "
            "<tool_call></tool_call> tags, one block per call:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <arguments-json-object>}\n</tool_call>'
        )


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
            if isinstance(parsed, wanted) and _dumps(parsed) is not None:
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


class Qwen3CoderParser(_TaggedParser):
    name = "qwen3_coder"
    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    markers = (OPEN,)

    def _body_calls(self, body: str, closed: bool) -> list[_Call] | None:
        calls: list[_Call] = []
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
            arguments = _dumps(args)
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
            f"{_tools_json(tools)}\n</tools>\n\n"
            "To call a function, reply in exactly this form, one <tool_call> block per call:\n<tool_call>\n"
            "<function=function_name>\n<parameter=parameter_name>\nvalue\n</parameter>\n"
            "<parameter=other_parameter>\na value may span\nseveral lines\n</parameter>\n</function>\n"
            "</tool_call>\nWrite each required parameter; objects and arrays as JSON."
        )


class Llama3JsonParser(ToolParser):
    """A JSON object is taken for a call when it has a string "name", no keys beyond name, parameters,
    arguments and type, and either parameters/arguments or a name among the tools."""

    name = "llama3_json"
    TAG = "<|python_tag|>"
    markers = (TAG,)
    lead_markers = ("{", ";")
    _KEYS = frozenset({"name", "parameters", "arguments", "type"})

    def _scan_block(self, buf: str, final: bool) -> _Block | None:
        separator = buf.startswith(";")
        i = _skip_ws(buf, len(self.TAG) if buf.startswith(self.TAG) else 1 if separator else 0)
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
            f"{_tools_json(tools)}"
        )


class MistralParser(ToolParser):
    name = "mistral"
    MARK = "[TOOL_CALLS]"
    markers = (MARK,)
    _NAME = re.compile(r"[\w.\-:]+")
    _ID = re.compile(r"\w*")

    def _scan_block(self, buf: str, final: bool) -> _Block | None:
        incomplete = None if not final else (len(buf), None)
        i = _skip_ws(buf, len(self.MARK))
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
        at = _literal(buf, i, "[CALL_ID]")
        if at is None:
            return incomplete
        if at != -1:
            i = self._ID.match(buf, at).end()  # type: ignore[union-attr]  # \w* always matches
            if i == len(buf):
                return incomplete
        at = _literal(buf, i, "[ARGS]")
        if at is None:
            return incomplete
        if at == -1:
            return i, None
        i = _skip_ws(buf, at)
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
            f"{_tools_json(tools)}\n\n"
            "To call functions, reply with [TOOL_CALLS] followed by a JSON array of the calls: "
            '[TOOL_CALLS][{"name": "function_name", "arguments": {"argument": "value"}}]'
        )


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


def _python_calls(text: str) -> list[_Call] | None:
    """`[f(a=1), g()]` (or one bare call) -> calls; None unless every item is a call with literal
    keyword arguments."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    items = tree.body.elts if isinstance(tree.body, ast.List) else [tree.body]
    calls: list[_Call] = []
    for item in items:
        if not isinstance(item, ast.Call) or item.args or any(kw.arg is None for kw in item.keywords):
            return None
        name = _dotted(item.func)
        if name is None:
            return None
        try:
            arguments = _dumps({kw.arg: _py_value(kw.value) for kw in item.keywords})
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

    def _scan_block(self, buf: str, final: bool) -> _Block | None:
        incomplete = None if not final else (len(buf), None)
        if buf.startswith(self.START):  # Llama 4: <|python_start|>[...]<|python_end|>
            close = self._find_close(buf, self.END, len(self.START))
            if close != -1:
                return close + len(self.END), _python_calls(buf[len(self.START) : close])
            return incomplete if not final else (len(buf), _python_calls(buf[len(self.START) :]))
        if buf.startswith(self.END):  # the end of a <|python_start|> list already read: dropped
            return len(self.END), [] if self._calls else None
        # `[` at the start: given up as soon as it cannot be `[name(`, so that text flows again.
        i = _skip_ws(buf, 1)
        if i < len(buf) and not (buf[i].isalpha() or buf[i] == "_"):
            return 1, None
        while i < len(buf) and (buf[i].isalnum() or buf[i] in "_."):
            i += 1
        i = _skip_ws(buf, i)
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
            f"{_tools_json(tools)}\n\n"
            "To call functions, reply with only a Python list of calls with keyword arguments, such as "
            "[func_name1(param1=value1, param2=value2), func_name2(param=value)]. Use literal values "
            "only, no variables, and no other text when you call a function."
        )


PARSERS: dict[str, type[ToolParser]] = {
    p.name: p for p in (HermesParser, Llama3JsonParser, MistralParser, PythonicParser, Qwen3CoderParser)
}


def choose_parser(chat_template: str | None) -> str | None:
    """The parser a chat template's text points at, where only one fits; None otherwise."""
    if not chat_template:
        return None
    found = set()
    if "<tool_call>" in chat_template:
        found.add("qwen3_coder" if "<function=" in chat_template else "hermes")
    if "[TOOL_CALLS]" in chat_template:
        found.add("mistral")
    if "func_name1(" in chat_template:  # the pythonic templates' own example of the format
        found.add("pythonic")
    elif "<|python_tag|>" in chat_template or "ipython" in chat_template:
        found.add("llama3_json")
    return found.pop() if len(found) == 1 else None


def template_renders_tools(chat_template: str | None) -> bool:
    """Whether the template reads the `tools` variable at all."""
    if not chat_template:
        return False
    import jinja2
    import jinja2.meta

    try:
        parsed = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(chat_template)
    except jinja2.TemplateError:  # unknown tags: fall back on the word
        return re.search(r"\btools\b", chat_template) is not None
    return "tools" in jinja2.meta.find_undeclared_variables(parsed)
