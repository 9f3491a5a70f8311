"""What a choice's text becomes: content, reasoning and tool calls (parsed as it streams), and the
logprobs of its tokens in OpenAI's shapes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dynamo_cli.frontend.reasoning import ReasoningParser
from dynamo_cli.frontend.tool_parsers_base import ContentDelta, ToolCallDelta, ToolParser, new_call_id
from dynamo_cli.models.tokenizer import ModelTokenizer
from dynamo_cli.transport.wire import TokenLogprobs

# JSON has no -inf; an engine reports a token it would never sample with this.
_FLOOR = -9999.0


@dataclass(slots=True)
class Piece:
    """What one text delta of a choice adds."""

    content: str = ""
    reasoning: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.calls)


@dataclass(frozen=True, slots=True)
class ForcedCall:
    """tool_choice required (a JSON array of calls, made calls when it ends) or a named function (its
    arguments object, streamed as the call's arguments): the output is constrained to that JSON."""

    name: str | None  # the named function; None: required
    single: bool = False  # required with parallel_tool_calls false: one call


class ChoiceShaper:
    """Text deltas of one choice in, content / reasoning / tool-call deltas out. Streamed and whole
    responses both go through it, so their results are the same."""

    def __init__(
        self,
        reasoning: ReasoningParser | None = None,
        tools: ToolParser | None = None,
        forced: ForcedCall | None = None,
        parallel: bool = True,
    ):
        self._reasoning = reasoning
        self._tools = tools
        self._forced = forced
        self._parallel = parallel
        self._buffer: list[str] = []  # forced: the JSON so far
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]
        self.plain = reasoning is None and tools is None and forced is None

    def feed(self, text: str) -> Piece:
        if self.plain:
            self.content.append(text)
            return Piece(content=text)
        if self._reasoning is None and self._tools is not None:
            fast = self._tools.feed_content(text)
            if fast is not None:  # no markup can start here: content as it is
                if fast:
                    self.content.append(fast)
                return Piece(content=fast)
        piece = Piece()
        if self._reasoning is not None:
            thought, text = self._reasoning.feed(text)
            piece.reasoning = thought
        self._content(text, piece)
        return self._keep(piece)

    def finish(self) -> Piece:
        piece = Piece()
        if self.plain:
            return piece
        if self._reasoning is not None:
            thought, text = self._reasoning.finish()
            piece.reasoning = thought
            self._content(text, piece)
        if self._tools is not None:
            self._route(self._tools.finish(), piece)
        elif self._forced is not None and self._forced.name is None:
            self._end_forced(piece)
        return self._keep(piece)

    def _content(self, text: str, piece: Piece) -> None:
        if not text:
            return
        if self._tools is not None:
            self._route(self._tools.feed(text), piece)
        elif self._forced is not None and self._forced.name is not None:
            # A named call: the output is its arguments object, streamed as it comes (as OpenAI does;
            # cut short by max_tokens, the arguments are partial and finish_reason is "length").
            first = not self.calls and not any(d.index == 0 for d in piece.calls)
            call_id, name = (new_call_id(), self._forced.name) if first else (None, None)
            piece.calls.append(ToolCallDelta(0, call_id, name, text))
        elif self._forced is not None:
            self._buffer.append(text)
        else:
            piece.content += text

    def _route(self, deltas: list[ContentDelta | ToolCallDelta], piece: Piece) -> None:
        for d in deltas:
            if isinstance(d, ContentDelta):
                piece.content += d.text
            elif self._parallel or d.index == 0:
                piece.calls.append(d)

    def _end_forced(self, piece: Piece) -> None:
        """tool_choice required: the array of calls, whole at the end."""
        forced = self._forced
        assert forced is not None
        text = "".join(self._buffer)
        try:
            value = json.loads(text)
        except ValueError:  # cut short (length): the partial JSON is the content
            piece.content += text
            return
        calls = [(c.get("name"), c.get("arguments", c.get("parameters", {}))) for c in value]
        if forced.single:
            calls = calls[:1]
        for i, (name, args) in enumerate(calls):
            args_text = json.dumps(args, ensure_ascii=False)
            piece.calls.append(ToolCallDelta(i, new_call_id(), str(name), args_text))

    def _keep(self, piece: Piece) -> Piece:
        if piece.content:
            self.content.append(piece.content)
        if piece.reasoning:
            self.reasoning.append(piece.reasoning)
        for d in piece.calls:
            call = self.calls.setdefault(d.index, ["", "", ""])
            if d.id is not None:
                call[0] = d.id
            if d.name is not None:
                call[1] = d.name
            call[2] += d.arguments
        return piece

    # ---- the whole result --------------------------------------------------------------------------
    def message(self) -> dict[str, Any]:
        """The chat message of a whole (non-streamed) response."""
        content = "".join(self.content)
        msg: dict[str, Any] = {"role": "assistant", "content": content or (None if self.calls else "")}
        if self._reasoning is not None:
            msg["reasoning_content"] = "".join(self.reasoning) or None
        if self.calls:
            msg["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in (self.calls[i] for i in sorted(self.calls))
            ]
        return msg

    def finish_reason(self, engine_reason: str | None) -> str | None:
        if self.calls and engine_reason == "stop":
            return "tool_calls"
        return engine_reason


def call_delta(d: ToolCallDelta) -> dict[str, Any]:
    """OpenAI's streamed tool-call delta: index, id, type and name once; arguments in pieces."""
    if d.id is not None:
        return {
            "index": d.index,
            "id": d.id,
            "type": "function",
            "function": {"name": d.name, "arguments": d.arguments},
        }
    return {"index": d.index, "function": {"arguments": d.arguments}}


class LogprobFormatter:
    """Completions' logprobs in OpenAI's shape, from token ids and values (chat logprobs come written
    by the workers: models.logprob_json). ``token`` is the token's own bytes decoded alone: part of a
    multi-byte character shows as U+FFFD."""

    def __init__(self, tok: ModelTokenizer):
        self._tok = tok
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def _token(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            raw = self._tok.token_bytes(token_id)
            hit = self._cache[token_id] = (raw.decode("utf-8", errors="replace"), list(raw))
        return hit

    def completion(
        self,
        entries: list[tuple[int, TokenLogprobs | None]],
        offset: int,
    ) -> tuple[dict[str, Any], int]:
        """Completions' shape (tokens, token_logprobs, top_logprobs, text_offset), and the text offset
        after these tokens. An entry without logprobs (a prompt's first token) has nulls."""
        tokens: list[str] = []
        token_lps: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        offsets: list[int] = []
        for token_id, lps in entries:
            text, _ = self._token(token_id)
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
            if lps is None:
                token_lps.append(None)
                tops.append(None)
                continue
            lp, ids, top_lps = lps
            token_lps.append(max(lp, _FLOOR))
            top = {self._token(tid)[0]: max(tlp, _FLOOR) for tid, tlp in zip(ids, top_lps, strict=False)}
            tops.append(top)
        return (
            {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets},
            offset,
        )
