"""Reasoning parsers: `<think>…</think>` -> reasoning_content, parsed whole and streamed at any split
points (the deltas must add up to `parse`), with a partial tag never sent."""

from __future__ import annotations

import random
import re

import pytest

from dynamo_cli.frontend.reasoning import (
    REASONING_PARSERS,
    THINK_CLOSE,
    DeepSeekR1ReasoningParser,
    Qwen3ReasoningParser,
    ReasoningParser,
    prompt_think_state,
)

R = "Let me think: 2 + 2 < 5, and <b>bold</b> is not a tag. 東京 🎉\n"
C = "\n\nThe answer is 4."

# (parser, think_open, output, reasoning, content)
CASES: list[tuple[str, bool | None, str, str | None, str | None]] = [
    ("deepseek_r1", None, f"<think>{R}</think>{C}", R, C),
    ("deepseek_r1", None, f"{R}</think>{C}", R, C),  # <think> was in the prompt
    ("deepseek_r1", None, f"\n<think>\n{R}</think>{C}", "\n" + R, C),
    ("deepseek_r1", None, R, R, None),  # no </think>: all reasoning
    ("deepseek_r1", None, f"<think>{R}", R, None),
    ("deepseek_r1", None, f"{R}</think>", R, None),
    ("deepseek_r1", None, f"</think>{C}", None, C),
    ("deepseek_r1", None, f"{R}</think>{C} and </think> again", R, C + " and </think> again"),
    ("deepseek_r1", None, "", None, None),
    ("deepseek_r1", False, C, None, C),  # the prompt closed the thinking block
    ("deepseek_r1", False, f"<think>{R}</think>{C}", R, C),
    ("qwen3", None, f"<think>{R}</think>{C}", R, C),
    ("qwen3", None, f"  <think>{R}</think>{C}", R, C),
    ("qwen3", None, C, None, C),  # no think block: all content
    ("qwen3", None, "<thinking>not a tag</thinking>", None, "<thinking>not a tag</thinking>"),
    ("qwen3", None, "<thi", None, "<thi"),
    ("qwen3", None, "   ", None, "   "),
    ("qwen3", None, f"<think>{R}", R, None),  # cut short while thinking: reasoning
    ("qwen3", None, "<think></think>" + C, None, C),  # enable_thinking=False, older templates
    ("qwen3", None, f"{R}</think>{C}", None, f"{R}</think>{C}"),  # the start decides (see the module)
    ("qwen3", True, f"{R}</think>{C}", R, C),  # ... so the prompt's open <think> is passed in
    ("qwen3", True, R, R, None),
    ("qwen3", None, "", None, None),
]


def split_random(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    chunks, i = [], 0
    while i < len(text):
        n = rng.randint(1, 9)
        chunks.append(text[i : i + n])
        i += n
    return chunks


def splits(text: str) -> list[list[str]]:
    return [[text], list(text), re.findall(r"\w+|\s+|[^\w\s]", text)] + [
        split_random(text, s) for s in range(6)
    ]


def stream(parser: ReasoningParser, chunks: list[str]) -> list[tuple[str, str]]:
    return [parser.feed(c) for c in chunks] + [parser.finish()]


@pytest.mark.parametrize(("name", "think_open", "text", "reasoning", "content"), CASES)
def test_parse(
    name: str, think_open: bool | None, text: str, reasoning: str | None, content: str | None
) -> None:
    assert REASONING_PARSERS[name](think_open).parse(text) == (reasoning, content)


@pytest.mark.parametrize(("name", "think_open", "text", "reasoning", "content"), CASES)
def test_stream_adds_up_whatever_the_splits(
    name: str, think_open: bool | None, text: str, reasoning: str | None, content: str | None
) -> None:
    for chunks in splits(text):
        deltas = stream(REASONING_PARSERS[name](think_open), chunks)
        assert "".join(r for r, _ in deltas) == (reasoning or "")
        assert "".join(c for _, c in deltas) == (content or "")
        # no piece of a tag on its way: every reasoning delta is a piece of the reasoning
        assert all(r in (reasoning or "") for r, _ in deltas)


def test_reasoning_streams_as_it_comes_and_a_partial_tag_is_held() -> None:
    parser = DeepSeekR1ReasoningParser()
    assert parser.feed("<thi") == ("", "")
    assert parser.feed("nk>First") == ("First", "")
    assert parser.feed(", then</thi") == (", then", "")
    assert parser.feed("s is it") == ("</this is it", "")
    assert parser.feed("</think") == ("", "")
    assert parser.feed(">\nAnswer") == ("", "\nAnswer")
    assert parser.feed(" <think>still content</think>") == ("", " <think>still content</think>")
    assert parser.finish() == ("", "")


def test_qwen3_streams_content_at_once_without_a_think_block() -> None:
    parser = Qwen3ReasoningParser()
    assert parser.feed("Hello") == ("", "Hello")
    assert parser.feed(" </think> x") == ("", " </think> x")
    held = Qwen3ReasoningParser()
    assert held.feed("  <th") == ("", "")  # may still be <think>
    assert held.feed("e answer") == ("", "  <the answer")


def test_truncated_tag_at_the_end_is_released() -> None:
    parser = DeepSeekR1ReasoningParser()
    assert parser.feed("abc</thi") == ("abc", "")
    assert parser.finish() == ("</thi", "")


def test_parse_is_independent_of_streaming_state() -> None:
    parser = Qwen3ReasoningParser()
    parser.feed("<think>half")
    assert parser.parse("plain") == (None, "plain")
    assert parser.feed(" more</think>ok") == (" more", "ok")


@pytest.mark.parametrize(
    ("prompt", "state"),
    [
        ("<|im_start|>assistant\n<think>\n", True),
        ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),
        ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", None),
        ("<think>old</think> reply<|im_end|>\n<|im_start|>assistant\n", None),
        ("", None),
    ],
)
def test_prompt_think_state(prompt: str, state: bool | None) -> None:
    assert prompt_think_state(prompt) is state


def test_registry() -> None:
    assert sorted(REASONING_PARSERS) == ["deepseek_r1", "qwen3"]
    assert all(cls.name == key for key, cls in REASONING_PARSERS.items())


@pytest.mark.parametrize("name", sorted(REASONING_PARSERS))
@pytest.mark.parametrize("think_open", [None, True, False])
def test_random_texts_stream_as_they_parse(name: str, think_open: bool | None) -> None:
    fragments = ["<think>", "</think>", "<thi", "</th", "nk>", "k>", "<", "/", " ", "\n", "word", "é🎉"]
    rng = random.Random(f"{name}{think_open}")
    for n in range(150):
        text = "".join(rng.choice(fragments) for _ in range(rng.randint(0, 10)))
        reasoning, content = REASONING_PARSERS[name](think_open).parse(text)
        assert THINK_CLOSE not in (reasoning or "")
        for chunks in (list(text), split_random(text, n)):
            deltas = stream(REASONING_PARSERS[name](think_open), chunks)
            assert "".join(r for r, _ in deltas) == (reasoning or "")
            assert "".join(c for _, c in deltas) == (content or "")
