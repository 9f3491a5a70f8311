"""The API's OpenAPI 3.1 document, served at /openapi.json and rendered at /docs.

The handlers read and parse the raw body themselves (streaming body limit, JSON caps, errors in OpenAI's
shape), so FastAPI, which sees only raw routes, would describe nothing. This module writes the document
by hand: each request body is the JSON schema of the pydantic model the handler validates with, each
response one of the small models below. They document; nothing validates a response with them (the
fuzz test, tests/e2e/test_fuzz.py, checks real answers against this document).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from dynamo_cli.frontend.responses_request import ResponsesRequest
from dynamo_cli.frontend.schemas import ChatCompletionRequest, CompletionRequest

REF = "#/components/schemas/{model}"
EXAMPLE_MODEL = "SmolLM2-135M-Instruct"  # the embedded default; GET /v1/models names the served one


# ---- errors ---------------------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, server_error, service_unavailable, ...")
    param: str | None = Field(description="The request field at fault, dotted (messages.0.role).")
    code: str | None = Field(description="A stable code: invalid_json, model_not_found, limit_exceeded...")


class ErrorResponse(BaseModel):
    """Every error of every route, OpenAI's shape."""

    error: ErrorDetail


# ---- chat completions -----------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="The arguments as a JSON text.")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(
        None, description="index, and id, type and function.name once; function.arguments in pieces."
    )


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed chat completion; the last, with stream_options.include_usage, has
    no choices and the usage."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# ---- completions ----------------------------------------------------------------------------------------
class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: str | None
    prompt_logprobs: list[dict[str, Any] | None] | None = Field(None, description="vLLM's, when asked.")


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(BaseModel):
    """One `data:` event of a streamed completion."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# ---- responses ------------------------------------------------------------------------------------------
class ResponseObject(BaseModel):
    """OpenAI's response object; nothing is kept on the server (store is always false)."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress"]
    model: str
    output: list[dict[str, Any]] = Field(description="message, reasoning and function_call items.")
    usage: dict[str, Any] | None
    store: Literal[False]


class ResponseStreamEvent(BaseModel):
    """One event of a streamed response: response.created, response.output_text.delta, ...,
    response.completed (or response.incomplete, or error); its type is on the `event:` line too."""

    type: str
    sequence_number: int


# ---- the rest ---------------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int = Field(description="The model's context, in tokens (as vLLM names it).")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ready", "no_workers"]
    model: str
    workers: int


class Live(BaseModel):
    status: Literal["live"]


# ---- the document ---------------------------------------------------------------------------------------
_REQUESTS: tuple[type[BaseModel], ...] = (ChatCompletionRequest, CompletionRequest, ResponsesRequest)
_RESPONSES: tuple[type[BaseModel], ...] = (
    ErrorResponse, ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk, ResponseObject,
    ResponseStreamEvent, ModelList, Health, Live,
)  # fmt: skip

_ERRORS = {
    "400": "The request is invalid: not JSON, a wrong field, over a limit, too long for the context.",
    "401": "No API key, or not a valid one (when the frontend has keys).",
    "404": "The model named is not served here.",
    "413": "The body is larger than frontend.max_body_mb.",
    "429": "Over the key's rate limit (Retry-After says when to try again).",
    "500": "A bug: the message names it.",
    "502": "A worker failed the request.",
    "503": "No worker is ready, or the frontend is overloaded (Retry-After).",
}
_GET_ERRORS = ("401", "429", "500")
_POST_ERRORS = tuple(_ERRORS)

_HI = [{"role": "user", "content": "What is the capital of France?"}]
EXAMPLES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": EXAMPLE_MODEL, "messages": _HI, "max_tokens": 16},
    "/v1/completions": {"model": EXAMPLE_MODEL, "prompt": "The capital of France is", "max_tokens": 8},
    "/v1/responses": {"model": EXAMPLE_MODEL, "input": "What is the capital of France?"},
}
_TEXT = {"type": "string"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


def _event_stream(chunk: str, done: bool) -> dict[str, Any]:
    """Server-sent events. Per OpenAPI before 3.2, the schema is one event's ({event, data}): its data is
    JSON (``chunk``, or an error in OpenAI's shape), or with ``done`` the closing `[DONE]`."""
    json_data: dict[str, Any] = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [_ref(chunk), _ref("ErrorResponse")]},
    }
    data = {"if": {"const": "[DONE]"}, "then": {"type": "string"}, "else": json_data} if done else json_data
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {"event": {"type": "string"}, "data": data},
        "description": f"Each event's data is one {chunk} (JSON)"
        + (", and the last is the text [DONE]." if done else "; its type is on the event line too."),
    }
    return {"text/event-stream": {"schema": event}}


def _errors(codes: tuple[str, ...]) -> dict[str, Any]:
    return {code: {"description": _ERRORS[code], "content": _json("ErrorResponse")} for code in codes}


def _generation(path: str, summary: str, request: str, whole: str, chunk: str) -> dict[str, Any]:
    done = path != "/v1/responses"
    ok = {
        "description": f"The whole {whole}, or with stream: true its events.",
        "content": {**_json(whole), **_event_stream(chunk, done)},
    }
    body = {
        "required": True,
        "content": {
            "application/json": {"schema": _ref(request), "examples": {"short": {"value": EXAMPLES[path]}}}
        },
    }
    op = {
        "operationId": path.removeprefix("/v1/").replace("/", "_"),
        "summary": summary,
        "requestBody": body,
        "responses": {"200": ok, **_errors(_POST_ERRORS)},
        "security": [{"bearerAuth": []}],
    }
    return {"post": op}


def _get(operation_id: str, summary: str, responses: dict[str, Any], v1: bool) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary, "responses": responses}
    if v1:
        op["security"] = [{"bearerAuth": []}]
    return {"get": op}


def _components() -> dict[str, Any]:
    keyed: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "validation") for m in _REQUESTS]
    keyed += [(m, "serialization") for m in _RESPONSES]
    _, defs = models_json_schema(keyed, ref_template=REF)
    return defs["$defs"]


def openapi_document(title: str, version: str) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document of the routes `server.build_app` adds."""
    paths = {
        "/v1/chat/completions": _generation(
            "/v1/chat/completions", "Chat completion", "ChatCompletionRequest", "ChatCompletion",
            "ChatCompletionChunk",
        ),
        "/v1/completions": _generation(
            "/v1/completions", "Text completion", "CompletionRequest", "Completion", "CompletionChunk"
        ),
        "/v1/responses": _generation(
            "/v1/responses", "Response (OpenAI's Responses API)", "ResponsesRequest", "ResponseObject",
            "ResponseStreamEvent",
        ),
        "/v1/models": _get(
            "list_models", "The served model",
            {"200": {"description": "OK", "content": _json("ModelList")}, **_errors(_GET_ERRORS)}, v1=True,
        ),
        "/health": _get(
            "health", "Ready to serve: a worker is registered",
            {
                "200": {"description": "Ready", "content": _json("Health")},
                "503": {"description": "No worker yet, or draining", "content": _json("Health")},
            },
            v1=False,
        ),
        "/live": _get(
            "live", "The process answers", {"200": {"description": "Live", "content": _json("Live")}},
            v1=False,
        ),
        "/metrics": _get(
            "metrics", "Prometheus metrics",
            {
                "200": {"description": "Prometheus text", "content": {"text/plain": {"schema": _TEXT}}},
                **_errors(_GET_ERRORS),
            },
            v1=False,
        ),
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "OpenAI-compatible API. Every error is OpenAI's error object with its status.",
        },
        "paths": paths,
        "components": {
            "schemas": _components(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the frontend's API keys; needed only when it has some.",
                }
            },
        },
    }


def install_openapi(app: FastAPI) -> None:
    """Serve `openapi_document` as the app's schema (/openapi.json, /docs), made once on first use."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app.title, app.version)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
