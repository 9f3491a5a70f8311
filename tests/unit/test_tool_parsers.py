"""Tool-call parsers: canned outputs of each format, parsed whole and streamed at any split points (the
deltas must add up to `parse`), malformed and truncated markup (never raises, never leaks markup, never
loses text), and picking a parser from a chat template."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest

from dynamo_cli.frontend.tool_parsers import PARSERS, choose_parser, template_renders_tools
from dynamo_cli.frontend.tool_parsers_base import ContentDelta, ToolCallDelta, ToolParser, assemble


def tool(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"the {name} tool",
            "parameters": {"type": "object", "properties": properties},
        },
    }


TOOLS = [
    tool(
        "get_weather",
        {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "scale": {"type": "number"},
            "hot": {"type": "boolean"},
            "opts": {"type": "object"},
            "tags": {"type": "array"},
            "code": {"type": "string"},
            "note": {"type": ["string", "null"]},
            "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        },
    ),
    tool("search", {"query": {"type": "string"}}),
    tool("now", {}),
]

NESTED = {"opts": {"units": {"temp": "C", "list": [1, 2.5, None, True]}}, "city": "Zürich 東京 🎉"}


def qc_call(name: str, params: dict[str, str]) -> str:
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def hermes_call(name: str, args: Any) -> str:
    return (
        "<tool_call>\n" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + "\n</tool_call>"
    )


# (parser, output text, content, [(name, arguments)])
CASES: list[tuple[str, str, str | None, list[tuple[str, dict[str, Any]]]]] = [
    # hermes
    ("hermes", hermes_call("get_weather", {"city": "Paris"}), None, [("get_weather", {"city": "Paris"})]),
    (
        "hermes",
        "Let me check.\n\n"
        + hermes_call("get_weather", {"city": "Paris"})
        + "\n"
        + hermes_call("search", {"query": "x"}),
        "Let me check.",
        [("get_weather", {"city": "Paris"}), ("search", {"query": "x"})],
    ),
    ("hermes", hermes_call("get_weather", NESTED), None, [("get_weather", NESTED)]),
    (
        "hermes",
        "The answer is 4. a < b and <tool> is not a tag.",
        "The answer is 4. a < b and <tool> is not a tag.",
        [],
    ),
    ("hermes", "<tool_call>\n" + '{"name": "now"}' + "\n</tool_call>", None, [("now", {})]),
    (
        "hermes",
        "<tool_call>\n" + '{"name": "search", "arguments": "{\\"query\\": \\"q\\"}"}' + "\n</tool_call>",
        None,
        [("search", {"query": "q"})],
    ),
    ("hermes", hermes_call("unknown_fn", {"a": 1}), None, [("unknown_fn", {"a": 1})]),
    (
        "hermes",
        hermes_call("search", {"query": "a"}) + "\n\nDone, see above.\n",
        "Done, see above.\n",
        [("search", {"query": "a"})],
    ),
    ("hermes", '<tool_call>{"name": "now", "arguments": {}}', None, [("now", {})]),  # unclosed but whole
    # llama3_json
    (
        "llama3_json",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        None,
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "llama3_json",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
        '{"name": "search", "arguments": {"query": "x"}}',
        None,
        [("get_weather", {"city": "Paris"}), ("search", {"query": "x"})],
    ),
    (
        "llama3_json",
        '  {"name": "get_weather", "parameters": ' + json.dumps(NESTED, ensure_ascii=False) + "}",
        None,
        [("get_weather", NESTED)],
    ),
    ("llama3_json", 'Sure.<|python_tag|>{"name": "now", "parameters": {}}', "Sure.", [("now", {})]),
    (
        "llama3_json",
        '{"name": "now"}\n{"name": "search", "parameters": {"query": "y"}}',
        None,
        [("now", {}), ("search", {"query": "y"})],
    ),
    ("llama3_json", '{"answer": 42}', '{"answer": 42}', []),
    ("llama3_json", '{"name": "John", "age": 3}', '{"name": "John", "age": 3}', []),
    (
        "llama3_json",
        'Use {"name": "now", "parameters": {}} like this.',
        'Use {"name": "now", "parameters": {}} like this.',
        [],
    ),
    ("llama3_json", "Paris is sunny today.", "Paris is sunny today.", []),
    (
        "llama3_json",
        '{"name": "search", "parameters": {"query": "say \\"}\\" and \\\\"}}',
        None,
        [("search", {"query": 'say "}" and \\'})],
    ),
    # mistral
    (
        "mistral",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        None,
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "mistral",
        'Checking both. [TOOL_CALLS] [{"name": "get_weather", "arguments": '
        + json.dumps(NESTED, ensure_ascii=False)
        + '}, {"name": "search", "arguments": {"query": "]"}}]',
        "Checking both.",
        [("get_weather", NESTED), ("search", {"query": "]"})],
    ),
    (
        "mistral",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]search[ARGS]{"query": "x"}',
        None,
        [("get_weather", {"city": "Paris"}), ("search", {"query": "x"})],
    ),
    ("mistral", "[TOOL_CALLS]now[CALL_ID]a1b2c3d4e[ARGS]{}", None, [("now", {})]),
    ("mistral", "No tools needed [really].", "No tools needed [really].", []),
    # pythonic
    ("pythonic", '[get_weather(city="Paris")]', None, [("get_weather", {"city": "Paris"})]),
    (
        "pythonic",
        "[get_weather(city='Zürich 東京 🎉', days=3, "
        "opts={'units': {'temp': 'C', 'list': [1, 2.5, None, True]}}), "
        'search(query="a]b)"), now()]',
        None,
        [
            ("get_weather", {"city": "Zürich 東京 🎉", "days": 3, "opts": NESTED["opts"]}),
            ("search", {"query": "a]b)"}),
            ("now", {}),
        ],
    ),
    (
        "pythonic",
        '[search(query="x", limit=-2, flag=true, none=null)]',
        None,
        [("search", {"query": "x", "limit": -2, "flag": True, "none": None})],
    ),
    ("pythonic", "<|python_start|>[now()]<|python_end|>", None, [("now", {})]),
    (
        "pythonic",
        "[search(query='it\\'s ]', limit=(1, 2))]",
        None,
        [("search", {"query": "it's ]", "limit": [1, 2]})],
    ),
    ("pythonic", "[1] is a citation, [see here](x).", "[1] is a citation, [see here](x).", []),
    ("pythonic", "I would call [now()] here.", "I would call [now()] here.", []),
    ("pythonic", "[Note] done", "[Note] done", []),
    # qwen3_coder
    ("qwen3_coder", qc_call("get_weather", {"city": "Paris"}), None, [("get_weather", {"city": "Paris"})]),
    (
        "qwen3_coder",
        "I'll look.\n"
        + qc_call(
            "get_weather",
            {
                "city": "New\nYork",
                "days": "3",
                "scale": "1.5",
                "hot": "True",
                "opts": '{"a": [1, {"b": null}]}',
                "tags": "['x', 'y']",
                "code": "007",
                "note": "null",
                "limit": "null",
            },
        )
        + "\n"
        + qc_call("search", {"query": "漢字 🎉"}),
        "I'll look.",
        [
            (
                "get_weather",
                {
                    "city": "New\nYork",
                    "days": 3,
                    "scale": 1.5,
                    "hot": True,
                    "opts": {"a": [1, {"b": None}]},
                    "tags": ["x", "y"],
                    "code": "007",
                    "note": None,
                    "limit": None,
                },
            ),
            ("search", {"query": "漢字 🎉"}),
        ],
    ),
    (
        "qwen3_coder",
        qc_call("get_weather", {"days": "three", "extra": "42"}),
        None,
        [("get_weather", {"days": "three", "extra": "42"})],
    ),
    ("qwen3_coder", qc_call("unknown", {"n": "1"}), None, [("unknown", {"n": "1"})]),
    ("qwen3_coder", "<tool_call>\n<function=now>\n</function>\n</tool_call>", None, [("now", {})]),
    (
        "qwen3_coder",
        "<tool_call>\n<function=search>\n<parameter=query>\nhi\n</function>\n</tool_call>",
        None,
        [("search", {"query": "hi"})],
    ),
    (
        "qwen3_coder",
        "<tool_call>\n<function=now>\n</function>",
        None,
        [("now", {})],
    ),  # unclosed, function whole
]


def split_chars(text: str, _seed: int) -> list[str]:
    return list(text)


def split_tokens(text: str, _seed: int) -> list[str]:
    return re.findall(r"\w+|\s+|[^\w\s]", text)


def split_random(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    chunks, i = [], 0
    while i < len(text):
        n = rng.randint(1, 12)
        chunks.append(text[i : i + n])
        i += n
    return chunks


SPLITS = [(split_chars, 0), (split_tokens, 0)] + [(split_random, seed) for seed in range(6)]


def stream(parser: ToolParser, chunks: list[str]) -> list[ContentDelta | ToolCallDelta]:
    deltas: list[ContentDelta | ToolCallDelta] = []
    for chunk in chunks:
        deltas += parser.feed(chunk)
    return deltas + parser.finish()


def check_stream(name: str, text: str, chunks: list[str]) -> None:
    """Streamed deltas add up to parse(): content, names (given once, with an id), arguments."""
    assert "".join(chunks) == text
    deltas = stream(PARSERS[name](TOOLS), chunks)
    content, calls = PARSERS[name](TOOLS).parse(text)
    streamed = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
    assert streamed == (content or "")
    assert all(d.text for d in deltas if isinstance(d, ContentDelta))
    call_deltas = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert sorted({d.index for d in call_deltas}) == list(range(len(calls)))
    for i, call in enumerate(calls):
        mine = [d for d in call_deltas if d.index == i]
        assert [d.name for d in mine if d.name] == [call.name]
        ids = [d.id for d in mine if d.id]
        assert len(ids) == 1 and ids[0].startswith("call_") and mine[0].id == ids[0]
        assert "".join(d.arguments for d in mine) == call.arguments


@pytest.mark.parametrize(("name", "text", "content", "calls"), CASES)
def test_parse(name: str, text: str, content: str | None, calls: list[tuple[str, dict[str, Any]]]) -> None:
    got_content, got_calls = PARSERS[name](TOOLS).parse(text)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got_calls] == calls
    for c in got_calls:
        assert re.fullmatch(r"call_[0-9a-f]{24}", c.id)
        assert c.arguments == json.dumps(json.loads(c.arguments), ensure_ascii=False)  # one serialisation
    assert len({c.id for c in got_calls}) == len(got_calls)


@pytest.mark.parametrize(("name", "text", "content", "calls"), CASES)
def test_stream_adds_up_whatever_the_splits(
    name: str, text: str, content: str | None, calls: list[Any]
) -> None:
    for split, seed in SPLITS:
        check_stream(name, text, split(text, seed))
    check_stream(name, text, [text])


MARKUP = [
    "<tool_call",
    "</tool_call",
    "<function=",
    "<parameter=",
    "[TOOL_CALLS",
    "[ARGS]",
    "<|python_tag|>",
    "<|python_start|>",
]


@pytest.mark.parametrize(("name", "text", "content", "calls"), [c for c in CASES if c[3]])
def test_markup_of_calls_never_reaches_content(
    name: str, text: str, content: str | None, calls: list[Any]
) -> None:
    for split, seed in SPLITS:
        deltas = stream(PARSERS[name](TOOLS), split(text, seed))
        streamed = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
        assert not any(m in streamed for m in MARKUP)
        # partial markup is not sent either: every content delta is a piece of the final content
        for d in deltas:
            if isinstance(d, ContentDelta):
                assert d.text in (content or "")


# Malformed markup: returned as it is, as content, with no call.
MALFORMED = [
    ("hermes", '<tool_call>\n{"name": "search", "arguments": {"query": "x"\n</tool_call>'),  # bad JSON
    ("hermes", 'Text <tool_call>{"arguments": {}}</tool_call> more'),  # no name
    ("hermes", '<tool_call>\n{"name": "search", "arguments": [1, 2]}\n</tool_call>'),  # not an object
    ("hermes", '<tool_call>\n{"name": "search", "arguments": "not json"}\n</tool_call>'),
    ("hermes", '<tool_call>\n{"name": "search", "arguments": {"query": "x"}}'[:-5]),  # truncated
    ("hermes", "<tool_call>"),
    ("hermes", "ends with <tool_"),
    ("llama3_json", '{"name": "search", "parameters": {"query": "x"'),
    ("llama3_json", '<|python_tag|>brave_search.call(query="x")'),
    ("llama3_json", '{"name": "search", "parameters": {"a": NaN}} tail'),
    ("mistral", '[TOOL_CALLS][{"name": "search", "arguments": {"query": "x"}'),
    ("mistral", "[TOOL_CALLS] sure, here it is"),
    ("mistral", "[TOOL_CALLS]search[ARGS]not json"),
    ("mistral", "[TOOL_CALLS]search[ARG"),
    ("mistral", '[TOOL_CALLS][{"nom": "search"}]'),
    ("pythonic", '[get_weather(city="Paris"'),
    ("pythonic", '[get_weather("Paris")]'),  # positional
    ("pythonic", '[get_weather(city=__import__("os").system("echo hi"))]'),  # never evaluated
    ("pythonic", "[get_weather(city=x)]"),  # a variable
    ("pythonic", "[get_weather(**kw)]"),
    ("pythonic", "[get_weather(city={1, 2})]"),  # a set is no JSON
    ("pythonic", "<|python_start|>[now(]<|python_end|>"),
    ("qwen3_coder", "<tool_call>\n<function=search>\n<parameter=query>\nx\n</parameter>\n"),  # truncated
    ("qwen3_coder", "<tool_call>\nplain text\n</tool_call>"),
    (
        "qwen3_coder",
        "<tool_call>\n<function=search>\nstray <parameter=query>\nx\n</parameter>\n</function>\n</tool_call>",
    ),
    ("qwen3_coder", '<tool_call>\n{"name": "search", "arguments": {}}\n</tool_call>'),  # hermes JSON
]


@pytest.mark.parametrize(("name", "text"), MALFORMED)
def test_malformed_markup_is_content(name: str, text: str) -> None:
    assert PARSERS[name](TOOLS).parse(text) == (text, [])
    for split, seed in SPLITS:
        check_stream(name, text, split(text, seed))


@pytest.mark.parametrize(("name", "good"), [(c[0], c[1]) for c in CASES if len(c[3]) >= 2])
def test_every_truncation_gives_whole_calls_or_the_text(name: str, good: str) -> None:
    """Cut anywhere: no raise, only whole calls (the first of the full output's), else the text itself."""
    _, full = PARSERS[name](TOOLS).parse(good)
    expected = [(c.name, c.arguments) for c in full]
    for cut in range(len(good) + 1):
        text = good[:cut]
        content, calls = PARSERS[name](TOOLS).parse(text)
        got = [(c.name, c.arguments) for c in calls]
        assert got == expected[: len(got)], text
        if not calls:
            assert content == (text or None), text
        else:  # what is left of the text, in order
            rest = iter(text)
            assert all(c in rest for c in content or ""), text
        check_stream(name, text, split_random(text, cut))


def test_partial_marker_is_held_then_released() -> None:
    parser = PARSERS["hermes"](TOOLS)
    assert parser.feed("Hello <tool_") == [ContentDelta("Hello")]
    assert parser.feed("box> world") == [ContentDelta(" <tool_box> world")]
    assert parser.feed(" <tool_call") == []
    assert parser.finish() == [ContentDelta(" <tool_call")]


def test_call_is_sent_once_complete_and_text_around_it_flows() -> None:
    parser = PARSERS["hermes"](TOOLS)
    assert parser.feed('Sure. <tool_call>\n{"name": "search", ') == [ContentDelta("Sure.")]
    assert parser.feed('"arguments": {"query": "q"}}\n</tool_call') == []
    (delta,) = parser.feed(">\n")
    assert isinstance(delta, ToolCallDelta)
    assert (delta.index, delta.name, json.loads(delta.arguments)) == (0, "search", {"query": "q"})
    (second,) = parser.feed('<tool_call>{"name": "now"}</tool_call>')
    assert isinstance(second, ToolCallDelta)
    assert (second.index, second.name, second.arguments) == (1, "now", "{}") and second.id != delta.id
    assert parser.finish() == []


@pytest.mark.parametrize(
    ("text", "content"),
    [
        (
            "I'll check. " + hermes_call("now", {}) + "\nThen search: " + hermes_call("search", {}) + "\n",
            "I'll check. \nThen search:",
        ),
        ("  \n" + hermes_call("now", {}) + "\n\n  Done.  ", "Done.  "),
        ("  Hello  ", "  Hello  "),
        (hermes_call("now", {}) + "\n \n" + hermes_call("now", {}) + "  \n", None),
    ],
)
def test_whitespace_is_dropped_only_where_it_touches_a_call_and_no_content(
    text: str, content: str | None
) -> None:
    assert PARSERS["hermes"](TOOLS).parse(text)[0] == content
    for split, seed in SPLITS:
        check_stream("hermes", text, split(text, seed))


def test_indexes_follow_calls_across_blocks() -> None:
    parser = PARSERS["hermes"](TOOLS)
    deltas = stream(parser, [hermes_call("now", {}), "\n", hermes_call("search", {"query": "a"})])
    assert [(d.index, d.name) for d in deltas if isinstance(d, ToolCallDelta)] == [(0, "now"), (1, "search")]
    assert [d for d in deltas if isinstance(d, ContentDelta)] == []


def test_assemble_matches_parse_shape() -> None:
    content, calls = assemble(
        [ContentDelta("a"), ToolCallDelta(0, "call_1", "f", '{"x"'), ToolCallDelta(0, arguments=": 1}")]
    )
    assert content == "a"
    assert [(c.id, c.name, c.arguments) for c in calls] == [("call_1", "f", '{"x": 1}')]
    assert assemble([]) == (None, [])


def test_parser_without_tools_still_parses() -> None:
    assert PARSERS["qwen3_coder"]([]).parse(qc_call("f", {"n": "1"}))[1][0].arguments == '{"n": "1"}'
    assert PARSERS["hermes"]([]).parse(hermes_call("f", {"n": 1}))[1][0].name == "f"


def test_parse_is_independent_of_streaming_state() -> None:
    parser = PARSERS["hermes"](TOOLS)
    parser.feed("<tool_call>{")
    assert parser.parse("plain") == ("plain", [])
    assert [type(d) for d in parser.feed('"name": "now"}</tool_call>')] == [ToolCallDelta]


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_render_tools_teaches_the_format_and_lists_the_tools(name: str) -> None:
    text = PARSERS[name].render_tools(TOOLS)
    for t in TOOLS:
        function = t["function"]
        assert function["name"] in text
        assert json.dumps(function["parameters"], ensure_ascii=False) in text
    marker = {
        "hermes": "<tool_call>",
        "qwen3_coder": "<parameter=",
        "mistral": "[TOOL_CALLS]",
        "pythonic": "func_name1(",
        "llama3_json": '"parameters"',
    }
    assert marker[name] in text


def test_registry_names() -> None:
    assert sorted(PARSERS) == ["hermes", "llama3_json", "mistral", "pythonic", "qwen3_coder"]
    assert all(cls.name == key for key, cls in PARSERS.items())


# Chat templates cut down to their tool-related parts, written in the shape of the real ones.
QWEN25 = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    '{{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n<tools>" }}'
    '{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}'
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object within <tool_call></tool_call> '
    'XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n'
    '</tool_call><|im_end|>\\n" }}{%- endif %}'
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endfor %}"
)
QWEN3_CODER = (
    '{%- if tools %}{{- "<tools>" }}{%- for tool in tools %}{{- tool | tojson }}{%- endfor %}'
    '{{- "</tools>\\n\\nIf you choose to call a function ONLY reply in the following format:\\n'
    "<tool_call>\\n<function=example_function_name>\\n<parameter=example_parameter_1>\\nvalue_1\\n"
    '</parameter>\\n</function>\\n</tool_call>" }}{%- endif %}'
)
MISTRAL = (
    "{%- if tools is not none %}[AVAILABLE_TOOLS]{{ tools|tojson }}[/AVAILABLE_TOOLS]{%- endif %}"
    "{%- for message in messages %}{%- if message.tool_calls %}"
    "[TOOL_CALLS]{{ message.tool_calls|tojson }}</s>{%- endif %}{%- endfor %}"
)
LLAMA31 = (
    "{%- if custom_tools is defined %}{%- set tools = custom_tools %}{%- endif %}"
    "{%- if not tools is defined %}{%- set tools = none %}{%- endif %}"
    '{%- if builtin_tools is defined or tools is not none %}{{- "Environment: ipython\\n" }}{%- endif %}'
    '{%- for message in messages %}{%- if message.role == "ipython" %}'
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' }}{%- endif %}"
    "{%- if builtin_tools is defined %}{{- '<|python_tag|>' }}{%- endif %}{%- endfor %}"
)
LLAMA32_PYTHONIC = (
    '{%- if tools is not none %}{{- "If you decide to invoke any of the function(s), you MUST put it in '
    "the format of [func_name1(params_name1=params_value1, params_name2=params_value2...), "
    'func_name2(params)]\\n" }}{%- endif %}'
    '{%- for message in messages %}{%- if message.role == "ipython" %}{{- message.content }}{%- endif %}'
    "{%- endfor %}"
)
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (QWEN25, "hermes"),
        (QWEN3_CODER, "qwen3_coder"),
        (MISTRAL, "mistral"),
        (LLAMA31, "llama3_json"),
        (LLAMA32_PYTHONIC, "pythonic"),
        (CHATML, None),
        (QWEN25 + MISTRAL, None),  # two formats: not unambiguous
        ("{{ '<\uff5ctool\u2581calls\u2581begin\uff5c>' }}", None),  # DeepSeek V3
        (None, None),
        ("", None),
    ],
)
def test_choose_parser(template: str | None, expected: str | None) -> None:
    assert choose_parser(template) == expected


def test_template_renders_tools() -> None:
    for template in (QWEN25, QWEN3_CODER, MISTRAL, LLAMA31, LLAMA32_PYTHONIC):
        assert template_renders_tools(template)
    assert not template_renders_tools(CHATML)
    assert not template_renders_tools(
        "{% set tools = [] %}{{ tools }}"
    )  # its own variable, not the request's
    assert not template_renders_tools(None)
    # a tag jinja2 does not know: judged by the word
    assert template_renders_tools("{% generation %}{{ tools }}{% endgeneration %}")
    assert not template_renders_tools("{% generation %}{{ x }}{% endgeneration %}")


FRAGMENTS = [
    "<tool_call>", "</tool_call>", "<tool_", "</tool", "\n", "  ", "text", "é🎉", "{", "}", "[", "]", "(",
    ")", '"', "'", "\\", ";", ",", "=", '{"name": "now"}', '{"name": "search", "arguments": {"query": "x"}}',
    '"parameters": {}', "<function=now>", "</function>", "<parameter=query>", "</parameter>", "<function=",
    "[TOOL_CALLS]", "[TOOL_CA", "search", "[ARGS]", "[CALL_ID]", "<|python_tag|>", "<|python_",
    "<|python_start|>", "<|python_end|>", "now()", "search(query='q')", "[now()]", "x=1",
    '<tool_call>{"name": "now"}</tool_call>', "<tool_call><function=now></function></tool_call>",
    "[TOOL_CALLS]now[ARGS]{}", '[TOOL_CALLS][{"name": "now"}]',
]  # fmt: skip


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_random_texts_never_raise_and_stream_as_they_parse(name: str) -> None:
    rng = random.Random(name)
    with_calls = 0
    for n in range(200):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 12)))
        content, calls = PARSERS[name](TOOLS).parse(text)
        with_calls += bool(calls)
        if not calls:
            assert content == (text or None), text
        for call in calls:
            assert isinstance(json.loads(call.arguments), dict)
        check_stream(name, text, split_random(text, n))
        check_stream(name, text, list(text))
    assert with_calls >= 3  # the texts do reach the calls' path
