"""Reasoning parsers: the `<think>…</think>` part of a model's output becomes `reasoning_content`.

- `deepseek_r1` (DeepSeek R1, QwQ): the output is reasoning from its start (the template may have put
  `<think>` in the prompt; a generated leading `<think>` is dropped) up to `</think>`, content after it.
  No `</think>` at all: everything is reasoning and content is None.
- `qwen3`: the output is content unless it opens with `<think>` (dropped), in which case it is reasoning
  up to `</think>` and content after it.
A `think_open` given to the parser (from the rendered prompt) overrides where each starts.

deepseek_r1 is vLLM's. qwen3 departs from the rule "reasoning only when `</think>` appears" in two corners,
both for streaming's sake, since either reading there would hold the whole answer back until its end:
- text before a `</think>` that no generated `<think>` opened is content, unless the caller says the
  prompt opened the block (`think_open=True`: the Qwen3 thinking-2507 and Qwen3.5 templates end the
  prompt with `<think>`; `prompt_think_state` tells), where vLLM reads it as reasoning;
- an output that opens with `<think>` and never closes it (cut short) is reasoning, as vLLM does with
  thinking on, not content.

One machine serves both paths: `parse` feeds the whole text to a fresh parser, so the streamed deltas add
up to what `parse` returns whatever the split points. A piece that may still become a tag (`</thi`, or a
`<thi` at the start) is held back until it is known, never sent.
"""

from __future__ import annotations

from typing import ClassVar

from dynamo_cli.frontend.tool_parsers_base import partial_suffix

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def prompt_think_state(prompt: str) -> bool | None:
    """Where the rendered prompt leaves the answer: True inside a `<think>` it opened and did not close,
    False right after a `</think>` (e.g. Qwen3 with enable_thinking=False), None when it says neither."""
    opened, closed = prompt.rfind(THINK_OPEN), prompt.rfind(THINK_CLOSE)
    if opened > closed:
        return True
    if closed != -1 and not prompt[closed + len(THINK_CLOSE) :].strip():
        return False
    return None


class ReasoningParser:
    """Streaming parser of one response: `feed` each text delta, then `finish`; or `parse` a whole text.

    think_open: whether the output starts inside a thinking block the prompt opened (True), outside one
    (False), or as this parser assumes when nothing is known (None). A generated leading `<think>` always
    opens one."""

    name: ClassVar[str]
    starts_thinking: ClassVar[bool]  # what think_open=None means

    def __init__(self, think_open: bool | None = None) -> None:
        self._think_open = think_open
        self._thinking = self.starts_thinking if think_open is None else think_open
        self._phase = "start"  # start (a leading <think> still possible), reasoning, content
        self._buf = ""

    def feed(self, text: str) -> tuple[str, str]:
        """The next text delta -> (reasoning delta, content delta)."""
        self._buf += text
        return self._run(final=False)

    def finish(self) -> tuple[str, str]:
        return self._run(final=True)

    def parse(self, text: str) -> tuple[str | None, str | None]:
        """The whole output -> (reasoning_content, content), each None when empty."""
        fresh = type(self)(self._think_open)
        reasoning, content = fresh.feed(text)
        more_reasoning, more_content = fresh.finish()
        return (reasoning + more_reasoning) or None, (content + more_content) or None

    def _run(self, final: bool) -> tuple[str, str]:
        reasoning = ""
        if self._phase == "start":
            head = self._buf.lstrip()
            if head.startswith(THINK_OPEN):
                self._buf, self._phase = head[len(THINK_OPEN) :], "reasoning"
            elif THINK_OPEN.startswith(head) and not final:
                return "", ""
            else:
                self._phase = "reasoning" if self._thinking else "content"
        if self._phase == "reasoning":
            end = self._buf.find(THINK_CLOSE)
            if end != -1:
                reasoning, self._buf = self._buf[:end], self._buf[end + len(THINK_CLOSE) :]
                self._phase = "content"
            else:
                cut = len(self._buf) - (0 if final else partial_suffix(self._buf, THINK_CLOSE))
                reasoning, self._buf = self._buf[:cut], self._buf[cut:]
        content = ""
        if self._phase == "content":
            content, self._buf = self._buf, ""
        return reasoning, content


class DeepSeekR1ReasoningParser(ReasoningParser):
    name = "deepseek_r1"
    starts_thinking = True


class Qwen3ReasoningParser(ReasoningParser):
    name = "qwen3"
    starts_thinking = False


REASONING_PARSERS: dict[str, type[ReasoningParser]] = {
    p.name: p for p in (DeepSeekR1ReasoningParser, Qwen3ReasoningParser)
}
