"""OpenAI's Responses API (POST /v1/responses) over the chat pipeline.

A request becomes a chat request (input items -> messages, function tools, text.format ->
response_format); the chat choice's content, reasoning and tool calls become output items. Nothing is
kept on the server: every response says ``store: false``, and ``previous_response_id`` is refused.

The request and its translation into a chat request are in `responses_request`; this module shapes the
output: the whole response object and the streamed events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from dynamo_cli.frontend.outputs import ChoiceShaper, Piece
from dynamo_cli.frontend.pipeline import Generation
from dynamo_cli.frontend.responses_request import ResponsesRequest, new_id
from dynamo_cli.frontend.schemas import ChatCompletionRequest


def _usage(gen: Generation) -> dict[str, Any]:
    return {
        "input_tokens": gen.prompt_tokens,
        "input_tokens_details": {"cached_tokens": gen.cached_tokens},
        "output_tokens": gen.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": [part]}


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": "completed",
    }


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


@dataclass
class ResponseShape:
    """The parts of the response object that do not depend on the output."""

    request: ResponsesRequest
    chat: ChatCompletionRequest
    model: str
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def envelope(
        self, status: str, output: list[dict[str, Any]], gen: Generation | None, finish: str | None = None
    ) -> dict[str, Any]:
        req = self.request
        incomplete = status == "incomplete"
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": req.parallel_tool_calls,
            "previous_response_id": None,
            "reasoning": None,
            "store": False,
            "temperature": self.chat.temperature,
            "text": req.text or {"format": {"type": "text"}},
            "tool_choice": req.tool_choice or ("auto" if req.tools else "none"),
            "tools": req.tools or [],
            "top_p": self.chat.top_p,
            "truncation": "disabled",
            "usage": _usage(gen) if gen is not None and status != "in_progress" else None,
            "metadata": req.metadata or {},
        }

    def status_of(self, finish: str | None) -> str:
        return "incomplete" if finish == "length" else "completed"

    def full(self, gen: Generation, shaper: ChoiceShaper) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        reasoning = "".join(shaper.reasoning)
        if reasoning:
            output.append(_reasoning_item(new_id("rs"), reasoning))
        content = "".join(shaper.content)
        if content or not shaper.calls:
            output.append(_message_item(new_id("msg"), content))
        for i in sorted(shaper.calls):
            call_id, name, args = shaper.calls[i]
            output.append(_call_item(new_id("fc"), call_id, name, args))
        return self.envelope(self.status_of(gen.finish_reason), output, gen)


class ResponseEvents:
    """The streamed event sequence: response.created and in_progress, then each output item opened
    (output_item.added, content_part.added), its deltas, and closed (..._text.done, content_part.done,
    output_item.done); finally response.completed (or response.incomplete) with the whole response."""

    def __init__(self, shape: ResponseShape):
        self.shape = shape
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the item being written
        self._written = ""
        self._call_index: int | None = None

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        response = self.shape.envelope("in_progress", [], None)
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
        ]

    def _open_id(self) -> str:
        assert self._open is not None
        return str(self._open["id"])

    def _close(self) -> list[dict[str, Any]]:
        item = self._open
        if item is None:
            return []
        self._open = None
        index = len(self.output)
        events: list[dict[str, Any]] = []
        at = {"item_id": item["id"], "output_index": index}
        text = self._written
        if item["type"] == "message":
            done = _message_item(item["id"], text)
            part = done["content"][0]
            events.append(
                self._event("response.output_text.done", **at, content_index=0, text=text, logprobs=[])
            )
            events.append(self._event("response.content_part.done", **at, content_index=0, part=part))
        elif item["type"] == "reasoning":
            done = _reasoning_item(item["id"], text)
            events.append(self._event("response.reasoning_text.done", **at, content_index=0, text=text))
        else:
            done = {**item, "arguments": text, "status": "completed"}
            events.append(self._event("response.function_call_arguments.done", **at, arguments=text))
        events.append(self._event("response.output_item.done", output_index=index, item=done))
        self.output.append(done)
        self._written = ""
        return events

    def _open_item(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        self._open = item
        index = len(self.output)
        events.append(self._event("response.output_item.added", output_index=index, item=item))
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            )
        return events

    def _text_delta(self, item: dict[str, Any], kind: str, text: str, **extra: Any) -> list[dict[str, Any]]:
        """A text delta of the open item (reasoning or message); ``item`` is opened first unless one of
        its type is open."""
        events: list[dict[str, Any]] = []
        if self._open is None or self._open["type"] != item["type"]:
            events += self._open_item(item)
        self._written += text
        index = len(self.output)
        events.append(
            self._event(
                kind, item_id=self._open_id(), output_index=index, content_index=0, delta=text, **extra
            )
        )
        return events

    def piece(self, piece: Piece) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if piece.reasoning:
            reasoning = {"type": "reasoning", "id": new_id("rs"), "summary": [], "status": "in_progress"}
            events += self._text_delta(reasoning, "response.reasoning_text.delta", piece.reasoning)
        if piece.content:
            message = _message_item(new_id("msg"), "", "in_progress") | {"content": []}
            events += self._text_delta(message, "response.output_text.delta", piece.content, logprobs=[])
        index = len(self.output)
        for d in piece.calls:
            if d.id is not None or self._call_index != d.index:
                item = _call_item(new_id("fc"), d.id or "", d.name or "", "", "in_progress")
                events += self._open_item(item)
                self._call_index = d.index
                index = len(self.output)
            if d.arguments:
                self._written += d.arguments
                events.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=self._open_id(),
                        output_index=index,
                        delta=d.arguments,
                    )
                )
        return events

    def finish(self, gen: Generation) -> list[dict[str, Any]]:
        events = self._close()
        if not self.output:  # nothing was generated: still one (empty) message, as the whole response has
            events += self._open_item(_message_item(new_id("msg"), "", "in_progress") | {"content": []})
            events += self._close()
        status = self.shape.status_of(gen.finish_reason)
        response = self.shape.envelope(status, self.output, gen)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self._event(kind, response=response))
        return events
