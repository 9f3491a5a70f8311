"""What a choice's text becomes (content, reasoning, tool calls) and logprobs in OpenAI's shapes."""

from __future__ import annotations

import json

import orjson
import pytest

from dynamo_cli.frontend.outputs import ChoiceShaper, ForcedCall, LogprobFormatter
from dynamo_cli.frontend.reasoning import REASONING_PARSERS
from dynamo_cli.frontend.tool_parsers import PARSERS
from dynamo_cli.models.logprob_json import LogprobJson, chat_logprobs
from dynamo_cli.models.tokenizer import ModelTokenizer

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def shape(shaper: ChoiceShaper, pieces: list[str]) -> tuple[list, dict]:
    deltas = [shaper.feed(p) for p in pieces] + [shaper.finish()]
    return deltas, shaper.message()


def test_plain_text_is_content() -> None:
    _, msg = shape(ChoiceShaper(), ["Hello", " world"])
    assert msg == {"role": "assistant", "content": "Hello world"}


def test_reasoning_then_a_parsed_call() -> None:
    shaper = ChoiceShaper(REASONING_PARSERS["deepseek_r1"](), PARSERS["hermes"](TOOLS))
    text = '<think>Need weather.</think>Let me check.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    deltas, msg = shape(shaper, [text[i : i + 7] for i in range(0, len(text), 7)])
    assert msg["reasoning_content"] == "Need weather."
    assert msg["content"] == "Let me check."
    (call,) = msg["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert shaper.finish_reason("stop") == "tool_calls"
    assert "".join(d.content for d in deltas) == "Let me check."  # no markup leaked


def test_a_named_forced_call_is_the_whole_output() -> None:
    shaper = ChoiceShaper(forced=ForcedCall("get_weather"))
    _, msg = shape(shaper, ['{"city":', ' "Rome"}'])
    assert msg["content"] is None
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"city": "Rome"}


def test_required_calls_and_parallel_false_keeps_one() -> None:
    out = '[{"name": "get_weather", "arguments": {"city": "A"}}, {"name": "get_weather", "arguments": {}}]'
    _, msg = shape(ChoiceShaper(forced=ForcedCall(None)), [out])
    assert len(msg["tool_calls"]) == 2
    _, msg = shape(ChoiceShaper(forced=ForcedCall(None, single=True)), [out])
    assert len(msg["tool_calls"]) == 1


def test_a_named_call_streams_its_arguments_and_cut_short_they_are_partial() -> None:
    shaper = ChoiceShaper(forced=ForcedCall("get_weather"))
    deltas, msg = shape(shaper, ['{"city":', ' "Ro'])
    first, second = (d.calls[0] for d in deltas[:2])
    assert first.id and first.name == "get_weather" and first.arguments == '{"city":'
    assert second.id is None and second.name is None and second.arguments == ' "Ro'
    assert msg["tool_calls"][0]["function"]["arguments"] == '{"city": "Ro'  # as OpenAI returns it
    assert shaper.finish_reason("length") == "length"


def test_required_calls_cut_short_are_the_partial_text() -> None:
    shaper = ChoiceShaper(forced=ForcedCall(None))
    _, msg = shape(shaper, ['[{"name": "get_we'])
    assert msg["content"] == '[{"name": "get_we' and "tool_calls" not in msg


@pytest.mark.parametrize("k", [0, 1, 3])
def test_chat_logprobs_json_matches_openais_shape(tok: ModelTokenizer, k: int) -> None:
    ids = tok.encode("héllo world", add_special_tokens=False)
    entries = [(t, (-0.25 * (i + 1), ids[:k], [-0.1 * j for j in range(k)])) for i, t in enumerate(ids)]
    written = LogprobJson(tok).entries([t for t, _ in entries], [lp for _, lp in entries])
    value = orjson.loads(orjson.dumps({"x": chat_logprobs(written)}))["x"]
    assert value["refusal"] is None and len(value["content"]) == len(ids)
    for (t, (lp, top_ids, _)), entry in zip(entries, value["content"], strict=True):
        raw = tok.token_bytes(t)
        assert entry["bytes"] == list(raw) and entry["logprob"] == lp
        assert entry["token"] == raw.decode("utf-8", errors="replace")
        assert [e["bytes"] for e in entry["top_logprobs"]] == [list(tok.token_bytes(i)) for i in top_ids]
    assert b"".join(bytes(e["bytes"]) for e in value["content"]).decode() == "héllo world"


def test_a_partial_character_shows_as_the_replacement_character(tok: ModelTokenizer) -> None:
    # Byte-level BPE has a token for every byte: 0xC3 alone is the first half of a two-byte character.
    partial = next(t for t in range(tok.vocab_size) if tok.token_bytes(t) == b"\xc3")
    value = orjson.loads(orjson.dumps(chat_logprobs(LogprobJson(tok).entries([partial], [(-1.0, [], [])]))))
    assert value["content"][0]["token"] == "\ufffd" and value["content"][0]["bytes"] == [0xC3]


def test_completion_logprobs_offsets_and_a_null_first_prompt_entry(tok: ModelTokenizer) -> None:
    ids = tok.encode("one two", add_special_tokens=False)
    entries = [(ids[0], None)] + [(t, (-1.0, [t], [-1.0])) for t in ids[1:]]
    lp, end = LogprobFormatter(tok).completion(entries, 5)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["text_offset"][0] == 5 and end == 5 + len("one two")
