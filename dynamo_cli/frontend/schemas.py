"""OpenAI request bodies, validated. Unknown fields are accepted and ignored, like vLLM does."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

MAX_CHOICES = 64  # n: each choice is a generation of its own
MAX_TOP_LOGPROBS = 20  # as OpenAI (chat) and vLLM's default max_logprobs


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or {
            400: "invalid_request_error",
            404: "invalid_request_error",
            413: "invalid_request_error",
            503: "service_unavailable",
        }.get(status, "server_error")
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Req(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(Req):
    include_usage: bool = False


class JsonSchemaFormat(Req):
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Req):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("type json_schema needs json_schema.schema")
        return self


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs`: exactly one constraint."""

    model_config = ConfigDict(extra="forbid")
    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(None, min_length=1)
    grammar: str | None = None
    json_object: bool | None = None


class Sampling(Req):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)
    seed: int | None = None
    stop: str | list[str] | None = Field(None, validate_default=True)
    stop_token_ids: list[int] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    skip_special_tokens: bool = True
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    # Token ids (as strings, as OpenAI's JSON has them) -> bias in [-100, 100]; ids are checked
    # against the vocabulary where the tokenizer is known (pipeline.build_generation).
    logit_bias: dict[str, float] | None = None
    include_stop_str_in_output: bool = False
    # Structured outputs: OpenAI's response_format, or one of vLLM's fields.
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = Field(None, min_length=1)
    guided_grammar: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (v or {}).items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids; {key[:40]!r} is not one")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"logit_bias values are between -100 and 100; token {key} has {bias}")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])  # how many: limits.RequestLimits
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @field_validator("stream_options")
    @classmethod
    def _needs_stream(cls, v: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if v is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed with stream=true")
        return v

    @property
    def stop_list(self) -> list[str]:
        return self.stop  # type: ignore[return-value]  # normalised by the validator

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def constrained(self) -> bool:
        """Does the request ask for structured output (a grammar to validate and compile)?"""
        rf = self.response_format
        return (
            (rf is not None and rf.type != "text")
            or self.structured_outputs is not None
            or any(
                v is not None
                for v in (self.guided_json, self.guided_regex, self.guided_choice, self.guided_grammar)
            )
            or getattr(self, "tool_mode", "none") in ("required", "named")
        )

    def structured_spec(self) -> tuple[dict[str, Any] | None, str | None]:
        """The output constraint asked for, in the engine's terms (SamplingOptions.structured), and the
        field that asked. Two fields asking at once is a 400."""
        found: list[tuple[str, dict[str, Any]]] = []
        rf = self.response_format
        if rf is not None and rf.type == "json_object":
            found.append(("response_format", {"json_object": True}))
        elif rf is not None and rf.type == "json_schema":
            assert rf.json_schema is not None and rf.json_schema.schema_ is not None
            found.append(("response_format", {"json": rf.json_schema.schema_}))
        if self.structured_outputs is not None:
            given = self.structured_outputs.model_dump(exclude_none=True, by_alias=True)
            if len(given) != 1:
                raise OpenAIError(
                    400, "structured_outputs: give exactly one of json, regex, choice, grammar, json_object",
                    param="structured_outputs", code="invalid_value",
                )  # fmt: skip
            found.append(("structured_outputs", given))
        if self.guided_json is not None:
            found.append(("guided_json", {"json": _json_schema(self.guided_json, "guided_json")}))
        for key in ("regex", "choice", "grammar"):
            if (value := getattr(self, f"guided_{key}")) is not None:
                found.append((f"guided_{key}", {key: value}))
        if not found:
            return None, None
        if len(found) > 1:
            names = ", ".join(n for n, _ in found)
            raise OpenAIError(
                400, f"only one output constraint may be given; this request has {names}",
                param=found[1][0], code="invalid_value",
            )  # fmt: skip
        param, spec = found[0]
        if "json" in spec:
            spec = {"json": _json_schema(spec["json"], param)}
        return spec, param


def _json_schema(value: dict[str, Any] | str, param: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise OpenAIError(400, f"{param}: the schema is not JSON ({e})", param=param) from None
    if not isinstance(value, dict):
        raise OpenAIError(400, f"{param}: a JSON schema is an object", param=param, code="invalid_value")
    return value


class CalledFunction(Req):
    name: str
    arguments: str | dict[str, Any] = "{}"  # OpenAI sends a JSON text; some clients an object


class MessageToolCall(Req):
    """A tool call of an earlier assistant turn (the history the chat template writes out)."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(Req):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[MessageToolCall] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            parts = []
            for part in self.content:
                if part.get("type") != "text":
                    raise ValueError(f"content part type '{part.get('type')}' is not supported (text only)")
                parts.append(str(part.get("text", "")))
            return "".join(parts)
        return self.content or ""


class FunctionDef(Req):
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Req):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Req):
    name: str


class NamedToolChoice(Req):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    add_special_tokens: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: two tools have the same name")
        choice = self.tool_choice
        if choice in ("required",) or isinstance(choice, NamedToolChoice):
            if not names:
                raise ValueError("tool_choice needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names '{choice.function.name[:64]}', which is not among the tools")
        return self

    @property
    def tool_mode(self) -> str:
        """none, auto, required or named (tools given and tool_choice absent: auto, as OpenAI)."""
        if not self.tools or self.tool_choice == "none":
            return "none"
        if isinstance(self.tool_choice, NamedToolChoice):
            return "named"
        return self.tool_choice or "auto"


class CompletionRequest(Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _best_of(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported (choices are not ranked)")
        return self

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], (str, list)):
            if len(v) != 1:
                raise ValueError("only one prompt per request is supported")
            v = v[0]
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be empty")
        return v


def validation_error(err: ValidationError) -> OpenAIError:
    errors = err.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    # A field with several accepted types reports one error per type, each with the type's name in
    # its location: name the field itself (the locations' common prefix).
    siblings = [tuple(e["loc"]) for e in errors if e["loc"][:1] == loc[:1]]
    if len(siblings) > 1:
        common = list(loc)
        for other in siblings[1:]:
            n = 0
            while n < min(len(common), len(other)) and common[n] == other[n]:
                n += 1
            common = common[:n]
        loc = tuple(common)
    param = ".".join(str(p) for p in loc) or None
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        msg = "field required"
    return OpenAIError(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_value")
