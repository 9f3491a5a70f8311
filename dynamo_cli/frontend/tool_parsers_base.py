"""The streaming machine that every tool-call parser is built on: the call and delta types, `ToolParser`
(feed, finish, parse), the tagged-block parser, and the scanning helpers the formats share.

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

import json
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
Call = tuple[str, str]  # (name, arguments JSON text)
# A finished block: where it ends in the buffer, and its calls (None: not a call, the text is content;
# []: markup that carries no call, such as the `;` after a llama3 call, dropped).
Block = tuple[int, list[Call] | None]


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


def dumps(value: Any) -> str | None:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):  # not JSON: bytes, sets, NaN...
        return None


def skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def literal(text: str, i: int, lit: str) -> int | None:
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


def tools_json(tools: list[dict]) -> str:
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

    def _scan_block(self, buf: str, final: bool) -> Block | None:
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
            p = skip_ws(buf, 0)
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


class TaggedParser(ToolParser):
    """Blocks between an opening and a closing tag; the end of the output closes the last one."""

    OPEN: ClassVar[str]
    CLOSE: ClassVar[str]

    def _scan_block(self, buf: str, final: bool) -> Block | None:
        close = self._find_close(buf, self.CLOSE, len(self.OPEN))
        if close != -1:
            return close + len(self.CLOSE), self._body_calls(buf[len(self.OPEN) : close], closed=True)
        if not final:
            return None
        return len(buf), self._body_calls(buf[len(self.OPEN) :], closed=False)

    def _body_calls(self, body: str, closed: bool) -> list[Call] | None:
        """The calls in a block's body; `closed`: False when the end of the output closed the block."""
        raise NotImplementedError
