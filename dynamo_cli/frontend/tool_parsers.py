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

The machine they share is in `tool_parsers_base`; the formats in `tool_parsers_json`, `tool_parsers_pythonic`
and `tool_parsers_qwen3_coder`. This module holds the registry and picks a parser for a chat template.
"""

from __future__ import annotations

import re

from dynamo_cli.frontend.tool_parsers_base import ToolParser
from dynamo_cli.frontend.tool_parsers_json import HermesParser, Llama3JsonParser, MistralParser
from dynamo_cli.frontend.tool_parsers_pythonic import PythonicParser
from dynamo_cli.frontend.tool_parsers_qwen3_coder import Qwen3CoderParser

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
