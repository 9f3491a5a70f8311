"""The API's OpenAPI document (/openapi.json, /docs): a valid OpenAPI 3.1 document describing every route's
request and responses, published without FastAPI validating any body (errors stay OpenAI's 400)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
import schemathesis
from fastapi import FastAPI
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.routing import Route
from starlette.testclient import TestClient

from dynamo_cli.config.models import FrontendConfig
from dynamo_cli.frontend.limits import RequestLimits
from dynamo_cli.frontend.metrics import FrontendMetrics
from dynamo_cli.frontend.openapi import EXAMPLES, install_openapi, openapi_document
from dynamo_cli.frontend.parsing import BodyParser
from dynamo_cli.frontend.responses_request import ResponsesRequest
from dynamo_cli.frontend.schemas import ChatCompletionRequest, CompletionRequest, OpenAIError
from dynamo_cli.frontend.server import build_app

DOC = openapi_document("dynamo-cli frontend", "0.1.0")
REQUESTS = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/responses": ResponsesRequest,
}
ERROR_STATUSES = {"400", "401", "404", "413", "429", "500", "502", "503"}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
# Bodies as real clients send them (the openai SDK, vLLM's examples), beyond the document's own examples.
REAL_BODIES: list[tuple[str, dict[str, Any]]] = [
    *EXAMPLES.items(),
    ("/v1/chat/completions", {
        "model": "m", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "tools": [TOOL], "tool_choice": "auto", "stream": True, "stream_options": {"include_usage": True},
        "temperature": 0.7, "top_p": 0.9, "seed": 7, "stop": ["\n\n"], "logprobs": True, "top_logprobs": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
        "user": "someone",
    }),
    ("/v1/completions", {"model": "m", "prompt": [1, 2, 3], "echo": True, "logprobs": 1, "max_tokens": 4}),
    ("/v1/responses", {
        "model": "m", "instructions": "Be brief.", "max_output_tokens": 32,
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "text": {"format": {"type": "json_object"}}, "stream": True,
    }),
]  # fmt: skip


def _validator(name: str) -> jsonschema.Draft202012Validator:
    """A JSON-schema validator for the document's component ``name``, its references resolved."""
    registry = Registry().with_resource("urn:doc", Resource.from_contents(DOC, DRAFT202012))
    return jsonschema.Draft202012Validator({"$ref": f"urn:doc#/components/schemas/{name}"}, registry=registry)


def _schema_name(ref: dict[str, str]) -> str:
    return ref["$ref"].rsplit("/", 1)[1]


def _fastapi(app: Any) -> FastAPI:
    """The FastAPI app inside build_app's middleware."""
    while not isinstance(app, FastAPI):
        app = app.app
    return app


@pytest.fixture
def client() -> Iterator[TestClient]:
    limits = RequestLimits.build(FrontendConfig(), context=8192, longest_token=81)
    parser = BodyParser(limits, processes=1)  # small bodies are parsed in place: no process starts
    state = SimpleNamespace(
        model="m", tokenizer=SimpleNamespace(context_length=8192), metrics=FrontendMetrics("m"),
        parser=parser, max_body=1 << 20,
    )  # fmt: skip
    outer = build_app(state)  # type: ignore[arg-type]
    install_openapi(_fastapi(outer))
    with TestClient(outer) as c:
        yield c
    parser.close()


def test_the_document_is_valid_openapi_3_1() -> None:
    schemathesis.openapi.from_dict(DOC).validate()  # the official OpenAPI 3.1 meta-schema
    for schema in DOC["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    # The check is not blind: a response without its description is not OpenAPI.
    broken = copy.deepcopy(DOC)
    del broken["paths"]["/live"]["get"]["responses"]["200"]["description"]
    with pytest.raises(Exception, match="description"):
        schemathesis.openapi.from_dict(broken).validate()


def test_every_route_is_documented_with_its_request_and_responses(client: TestClient) -> None:
    app = _fastapi(client.app)
    own = {app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url}
    routes = {
        (r.path, m.lower()) for r in app.routes if isinstance(r, Route) and r.path not in own
        for m in r.methods or () if m != "HEAD"
    }  # fmt: skip
    documented = {(path, method) for path, item in DOC["paths"].items() for method in item}
    assert routes == documented and len(routes) == 7
    for path, model in REQUESTS.items():
        op = DOC["paths"][path]["post"]
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert _schema_name(schema) == model.__name__
        published = DOC["components"]["schemas"][model.__name__]["properties"]
        assert set(published) == {f.alias or name for name, f in model.model_fields.items()}
        ok = op["responses"]["200"]["content"]
        assert set(ok) == {"application/json", "text/event-stream"}
        assert set(op["responses"]) == {"200", *ERROR_STATUSES}
        for status in ERROR_STATUSES:
            error = op["responses"][status]["content"]["application/json"]["schema"]
            assert _schema_name(error) == "ErrorResponse"
        assert op["security"] == [{"bearerAuth": []}]
    for path, item in DOC["paths"].items():
        for op in item.values():
            assert op["responses"]["200"]["content"], path
            assert ("security" in op) == path.startswith("/v1/"), path
    bearer = DOC["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")


@pytest.mark.parametrize(("path", "body"), REAL_BODIES, ids=lambda v: v if isinstance(v, str) else "")
def test_real_request_bodies_fit_the_published_schema(path: str, body: dict[str, Any]) -> None:
    _validator(REQUESTS[path].__name__).validate(body)
    REQUESTS[path].model_validate(body)  # and the handler's model takes them


def test_the_schema_refuses_what_the_model_refuses() -> None:
    chat = _validator("ChatCompletionRequest")
    for wrong in (
        {"model": "m", "messages": []},
        {"model": "m", "messages": [{"role": "wizard", "content": "hi"}]},
        {"model": "m", "messages": "hi"},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 3},
        {"messages": [{"role": "user", "content": "hi"}]},
    ):
        assert not chat.is_valid(wrong), wrong
        with pytest.raises(ValueError):
            ChatCompletionRequest.model_validate(wrong)


def test_served_at_openapi_json_and_rendered_at_docs(client: TestClient) -> None:
    assert client.get("/openapi.json").json() == DOC
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text and "/openapi.json" in docs.text


def test_bodies_still_reach_the_handlers_raw(client: TestClient) -> None:
    """No FastAPI validation in front: a wrong body is the handler's 400 in OpenAI's shape, not a 422."""
    errors = _validator("ErrorResponse")
    for body, param, code in (
        (b'{"model": "m", "messages": "hi"}', "messages", "invalid_value"),
        (b'{"model": "m", "messages": [', None, "invalid_json"),
    ):
        r = client.post("/v1/chat/completions", content=body)
        assert r.status_code == 400, r.text
        errors.validate(r.json())
        assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code)


def test_the_response_models_describe_real_answers(client: TestClient) -> None:
    _validator("ModelList").validate(client.get("/v1/models").json())
    _validator("Live").validate(client.get("/live").json())
    _validator("ErrorResponse").validate(OpenAIError(413, "too big", code="request_too_large").body())
    _validator("ErrorResponse").validate(client.get("/v1/nowhere").json())
    assert not _validator("ErrorResponse").is_valid({"detail": [{"msg": "field required"}]})  # FastAPI's 422
