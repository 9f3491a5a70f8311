"""A validated request made ready for the engine: the prompt's token ids (chat template, tools), the
output constraint (response_format, vLLM's guided fields, a forced tool call), and how its text will be
shaped (tool-call and reasoning parsers). Runs in the preprocessing pool for large bodies."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from dynamo_cli.config.models import FrontendConfig
from dynamo_cli.engines.structured import validate_structured
from dynamo_cli.frontend.limits import RequestLimits
from dynamo_cli.frontend.outputs import ChoiceShaper, ForcedCall
from dynamo_cli.frontend.reasoning import REASONING_PARSERS, prompt_think_state
from dynamo_cli.frontend.schemas import ChatCompletionRequest, CompletionRequest, OpenAIError, Sampling
from dynamo_cli.frontend.tool_parsers import PARSERS, choose_parser, template_renders_tools
from dynamo_cli.models.tokenizer import ModelTokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatSetup:
    """The parsers in force, resolved once from the profile and the model's chat template."""

    tool_parser: str | None  # None: tools cannot be parsed (a template with its own unknown format)
    tools_in_template: bool  # the template renders `tools` itself; else they go into the system prompt
    reasoning_parser: str | None

    @classmethod
    def resolve(cls, cfg: FrontendConfig, tok: ModelTokenizer) -> ChatSetup:
        in_template = template_renders_tools(tok.chat_template)
        name: str | None = cfg.tool_call_parser
        if name == "auto":
            name = choose_parser(tok.chat_template) or (None if in_template else "hermes")
        return cls(name, in_template, cfg.reasoning_parser)

    def describe(self) -> str:
        if self.tool_parser is None:
            tools = "none (the chat template's tool format is not one a parser here reads)"
        elif self.tools_in_template:
            tools = f"{self.tool_parser} (the chat template renders the tools)"
        else:
            tools = f"{self.tool_parser} (the chat template ignores tools: they go into the system prompt)"
        return f"tool calls: {tools}; reasoning: {self.reasoning_parser or 'off'}"


@dataclass
class Prepared:
    prompt_ids: list[int]
    structured: dict[str, Any] | None = None
    forced: ForcedCall | None = None
    tools: list[dict[str, Any]] | None = None  # tool_choice auto: parse the text for calls
    parallel: bool = True
    prompt_text: str | None = None  # completions with echo
    think_open: bool | None = None  # the prompt ends inside a <think> block (reasoning_parser on)

    def shaper(self, setup: ChatSetup) -> ChoiceShaper:
        reasoning = None
        if setup.reasoning_parser:
            reasoning = REASONING_PARSERS[setup.reasoning_parser](think_open=self.think_open)
        tools = None
        if self.tools and setup.tool_parser:
            tools = PARSERS[setup.tool_parser](self.tools)
        return ChoiceShaper(reasoning, tools, self.forced, self.parallel)


def _calls_as_text(calls: list[dict[str, Any]]) -> str:
    """An assistant turn's tool calls written as the model was taught (hermes' <tool_call> blocks)."""
    out = []
    for call in calls:
        fn = call.get("function") or {}
        args: Any = fn.get("arguments", "{}")
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            pass
        out.append(
            "<tool_call>\n" + json.dumps({"name": fn.get("name"), "arguments": args}) + "\n</tool_call>"
        )
    return "\n".join(out)


def _forced_schema(body: ChatCompletionRequest, mode: str) -> tuple[dict[str, Any], ForcedCall]:
    params = {
        t.function.name: t.function.parameters or {"type": "object", "properties": {}}
        for t in body.tools or []
    }
    if mode == "named":
        assert not isinstance(body.tool_choice, str) and body.tool_choice is not None
        name = body.tool_choice.function.name
        return params[name], ForcedCall(name)
    items = [
        {
            "type": "object",
            "properties": {"name": {"type": "string", "enum": [name]}, "arguments": schema},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, schema in params.items()
    ]
    array: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
    if not body.parallel_tool_calls:
        array["maxItems"] = 1
    return array, ForcedCall(None, single=not body.parallel_tool_calls)


def _check_spec(spec: dict[str, Any], param: str) -> None:
    error = validate_structured(spec)
    if error is not None:
        raise OpenAIError(400, f"{param}: {error}", param=param, code="invalid_value")


def prepare(body: Sampling, tok: ModelTokenizer, limits: RequestLimits, setup: ChatSetup) -> Prepared:
    spec, spec_param = body.structured_spec()
    if isinstance(body, ChatCompletionRequest):
        prepared = _prepare_chat(body, tok, limits, setup)
        if prepared.structured is not None and spec is not None:
            raise OpenAIError(
                400, f"tool_choice {body.tool_mode} constrains the output itself; {spec_param} cannot too",
                param=spec_param, code="invalid_value",
            )  # fmt: skip
        if prepared.structured is not None:
            _check_spec(prepared.structured, "tools")
    else:
        assert isinstance(body, CompletionRequest)
        prepared = _prepare_completion(body, tok)
    if spec is not None:
        assert spec_param is not None
        _check_spec(spec, spec_param)
        prepared.structured = spec
    return prepared


def _prepare_chat(
    body: ChatCompletionRequest, tok: ModelTokenizer, limits: RequestLimits, setup: ChatSetup
) -> Prepared:
    mode = body.tool_mode
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []] if mode != "none" else []
    if mode == "auto" and setup.tool_parser is None:
        raise OpenAIError(
            400,
            "tools: this model's chat template writes tool calls in a format no parser here reads; "
            "start the deployment with --tool-call-parser NAME",
            param="tools",
            code="unsupported_parameter",
        )
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(body.messages):
        try:
            text = m.text()
        except ValueError as e:
            raise OpenAIError(400, f"messages.{i}.content: {e}", param=f"messages.{i}.content") from None
        msg = {**m.model_dump(exclude_none=True), "content": text}
        if not setup.tools_in_template:  # the history as the model was taught it
            if msg.get("tool_calls"):
                calls = _calls_as_text(msg.pop("tool_calls"))
                msg["content"] = f"{text}\n{calls}" if text else calls
            if msg["role"] == "tool":
                msg["content"] = f"<tool_response>\n{text}\n</tool_response>"
        messages.append(msg)
    kwargs = dict(body.chat_template_kwargs or {})
    if tools:
        if setup.tools_in_template:
            kwargs["tools"] = tools
        else:
            parser = PARSERS[setup.tool_parser or "hermes"]
            guide = parser.render_tools(tools)
            if messages and messages[0]["role"] in ("system", "developer"):
                messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{guide}"}
            else:
                messages.insert(0, {"role": "system", "content": guide})
    text = tok.render_chat(messages, add_generation_prompt=body.add_generation_prompt, **kwargs)
    limits.check_text(len(text), "messages")  # tools and template text count too
    ids = tok.encode(text, add_special_tokens=body.add_special_tokens)
    if not ids:
        raise OpenAIError(
            400, "the prompt is empty (it has no tokens)", param="messages", code="empty_prompt"
        )
    prepared = Prepared(ids, parallel=body.parallel_tool_calls)
    if setup.reasoning_parser:
        prepared.think_open = prompt_think_state(text)
    if mode == "auto":
        prepared.tools = tools
    elif mode in ("required", "named"):
        schema, prepared.forced = _forced_schema(body, mode)
        prepared.structured = {"json": schema}
    return prepared


def _prepare_completion(body: CompletionRequest, tok: ModelTokenizer) -> Prepared:
    prompt = body.prompt
    if isinstance(prompt, str):
        ids = tok.encode(prompt, add_special_tokens=True)
    else:
        if any(not isinstance(t, int) or t < 0 or t >= tok.vocab_size for t in prompt):
            raise OpenAIError(
                400,
                f"prompt token ids must be in [0, {tok.vocab_size})",
                param="prompt",
                code="invalid_value",
            )
        ids = list(prompt)  # type: ignore[arg-type]
    if not ids:
        raise OpenAIError(400, "the prompt is empty (it has no tokens)", param="prompt", code="empty_prompt")
    prepared = Prepared(ids)
    if body.echo:
        prepared.prompt_text = (
            prompt if isinstance(prompt, str) else tok.decode(ids, skip_special_tokens=False)
        )
    return prepared
