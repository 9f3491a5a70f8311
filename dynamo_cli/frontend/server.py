"""The OpenAI-compatible HTTP API (FastAPI): chat and text completions, models, health, metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from dynamo_cli.errors import UsageError
from dynamo_cli.frontend.choice_runs import ChoiceRun, interleaved, run_all
from dynamo_cli.frontend.client import WorkerFailure
from dynamo_cli.frontend.completion_bodies import CompletionBodies
from dynamo_cli.frontend.fields import Endpoint, UnknownFields, check_refused
from dynamo_cli.frontend.http_responses import (
    DONE,
    SSEResponse,
    error_response,
    json_response,
    race_disconnect,
    sse,
    sse_event,
)
from dynamo_cli.frontend.limits import BodyLimit
from dynamo_cli.frontend.openapi import install_openapi
from dynamo_cli.frontend.outputs import LogprobFormatter, call_delta
from dynamo_cli.frontend.pipeline import Generation, build_generation, new_request_id, run_generation
from dynamo_cli.frontend.prepare import Prepared, prepare
from dynamo_cli.frontend.responses import ResponseEvents, ResponseShape
from dynamo_cli.frontend.responses_request import ResponsesRequest, to_chat
from dynamo_cli.frontend.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    Req,
    Sampling,
    validation_error,
)
from dynamo_cli.frontend.state import FrontendState
from dynamo_cli.models.logprob_json import chat_logprobs
from dynamo_cli.routing.policies import NoWorkersError

logger = logging.getLogger(__name__)

# A body this small templates and tokenises in about a millisecond: cheaper in place than the thread
# hop, which also waits for the GIL (benchmarks.preprocess: 0.7 ms and a 2.7 ms loop stall inline for a
# 1.3k-token chat, against 1.0 ms and 4.0 ms through a thread).
INLINE_PREPROCESS_BYTES = 16 * 1024

ENDPOINTS: dict[str, Endpoint] = {"chatcmpl": "chat", "cmpl": "completions", "resp": "responses"}


class Api(CompletionBodies):
    def __init__(self, state: FrontendState):
        self.s = state
        self.unknown = UnknownFields(
            lambda name: state.metrics.unknown_fields.labels(state.model, name).inc()
        )
        self.logprobs = LogprobFormatter(state.tokenizer)

    # ---- common -----------------------------------------------------------------------------------
    async def _parse(
        self, request: Request, model_cls: type[Req], endpoint: Endpoint
    ) -> tuple[Any, int, dict[str, Any]]:
        """The validated request, its body's size, and the body as parsed."""
        body = await request.body()
        data = await self.s.parser.parse(body, chat=endpoint != "completions")
        if isinstance(data, dict):
            check_refused(data, endpoint)
            self.unknown.note(data, endpoint)
        try:
            parsed = model_cls.model_validate(data)
        except ValidationError as e:
            raise validation_error(e) from None
        if parsed.model != self.s.model:  # type: ignore[attr-defined]
            raise OpenAIError(
                404, f"the model '{parsed.model}' does not exist; this server has '{self.s.model}'",  # type: ignore[attr-defined]
                param="model", code="model_not_found",
            )  # fmt: skip
        return parsed, len(body), data

    def _translate(self, e: BaseException) -> OpenAIError:
        if isinstance(e, OpenAIError):
            return e
        if isinstance(e, NoWorkersError):
            return OpenAIError(503, f"no worker is available for '{self.s.model}' ({e})", code="no_workers")
        if isinstance(e, WorkerFailure):
            return OpenAIError(502, str(e), type_="server_error", code="worker_failed")
        if isinstance(e, UsageError):
            return OpenAIError(400, e.message, code="invalid_value")
        logger.exception("unexpected error")
        return OpenAIError(500, f"internal error: {type(e).__name__}: {e}", code="internal")

    async def _prepare(self, body: Sampling, size: int) -> Prepared:
        args = (body, self.s.tokenizer, self.s.parser.limits, self.s.setup)
        # A grammar to check (llguidance validates a 16 KiB one in up to ~20 ms) always goes off the loop.
        if size <= INLINE_PREPROCESS_BYTES and not body.constrained:
            return prepare(*args)
        return await asyncio.get_running_loop().run_in_executor(self.s.preprocess, prepare, *args)

    def _runs(self, body: Sampling, prep: Prepared, kind: str) -> list[ChoiceRun]:
        base = build_generation(
            new_request_id(kind), prep.prompt_ids, body, self.s.tokenizer, structured=prep.structured
        )
        gens = [base] if body.n == 1 else [base.choice(i, f"{base.request_id}-{i}") for i in range(body.n)]
        s = self.s
        return [
            ChoiceRun(g, prep.shaper(s.setup), run_generation(g, s.model, s.client, s.tokenizer, s.metrics))
            for g in gens
        ]

    async def _handle(
        self, request: Request, endpoint: str, model_cls: type[Sampling], kind: str
    ) -> Response:
        m = self.s.metrics
        m.inflight.inc()
        t0 = time.perf_counter()
        status = 200
        runs: list[ChoiceRun] = []
        try:
            try:
                shape: ResponseShape | None = None
                if kind == "resp":
                    raw, size, data = await self._parse(request, ResponsesRequest, "responses")
                    data = to_chat(raw, data)
                    try:
                        body = ChatCompletionRequest.model_validate(data)
                    except ValidationError as e:
                        raise validation_error(e) from None
                    shape = ResponseShape(raw, body, self.s.model)
                else:
                    body, size, _ = await self._parse(request, model_cls, ENDPOINTS[kind])
                prep = await self._prepare(body, size)
                runs = self._runs(body, prep, kind)
                if body.stream:
                    # Start every choice first: routing errors surface here, before any byte is sent.
                    disconnected, _ = await race_disconnect(request.receive, run_all(runs, ChoiceRun.start))
                    if disconnected:
                        status = 499
                        return Response(status_code=499)
                    if shape is not None:
                        stream = self._response_stream(runs[0], shape)
                    else:
                        stream = self._stream(runs, body, kind, prep)
                    runs = []
                    return SSEResponse(stream)
                disconnected, _ = await race_disconnect(request.receive, run_all(runs, ChoiceRun.collect))
                if disconnected:
                    status = 499
                    return Response(status_code=499)
                if shape is not None:
                    return json_response(shape.full(runs[0].gen, runs[0].shaper))
                return json_response(self._full(runs, kind, prep))
            except BaseException as e:
                if isinstance(e, asyncio.CancelledError):
                    raise
                err = self._translate(e)
                status = err.status
                return error_response(err)
        finally:
            for run in runs:
                await run.close()
            m.inflight.dec()
            m.count(endpoint, status)
            m.duration.observe(time.perf_counter() - t0)

    async def _response_stream(self, run: ChoiceRun, shape: ResponseShape) -> AsyncIterator[bytes]:
        events = ResponseEvents(shape)
        try:
            for event in events.start():
                yield sse_event(event)
            async for _, text in interleaved([run]):
                piece = run.shaper.finish() if text is None else run.shaper.feed(text)
                for event in events.piece(piece):
                    yield sse_event(event)
            for event in events.finish(run.gen):
                yield sse_event(event)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            err = self._translate(e)
            yield sse_event(events._event("error", message=err.message, code=err.code, param=err.param))
        finally:
            await run.close()

    async def _stream(
        self, runs: list[ChoiceRun], body: Sampling, kind: str, prep: Prepared
    ) -> AsyncIterator[bytes]:
        created = int(time.time())
        chat = kind == "chatcmpl"
        obj = "chat.completion.chunk" if chat else "text_completion"
        rid = runs[0].gen.request_id.rsplit("-", 1)[0] if len(runs) > 1 else runs[0].gen.request_id
        head = {"id": rid, "object": obj, "created": created, "model": self.s.model}
        fmt = self.logprobs
        offsets = dict.fromkeys(range(len(runs)), 0)

        def completion_chunk(gen: Generation, text: str, finish: str | None, entries: list[Any]) -> bytes:
            lp = None
            if gen.sampling.logprobs is not None:
                lp, offsets[gen.index] = fmt.completion(entries, offsets[gen.index])
            choice = {"index": gen.index, "text": text, "logprobs": lp, "finish_reason": finish}
            return sse({**head, "choices": [choice]})

        def chat_chunk(gen: Generation, delta: dict[str, Any], finish: str | None, lp: Any) -> bytes:
            choice = {"index": gen.index, "delta": delta, "logprobs": lp, "finish_reason": finish}
            return sse({**head, "choices": [choice]})

        try:
            for run in runs:
                gen = run.gen
                if chat:
                    yield chat_chunk(gen, {"role": "assistant", "content": ""}, None, None)
                elif prep.prompt_text is not None:  # echo: the prompt comes first
                    echoed = self._prompt_entries(gen) if gen.prompt_logprobs is not None else []
                    yield completion_chunk(gen, prep.prompt_text, None, echoed)
            async for run, text in interleaved(runs):
                gen, shaper = run.gen, run.shaper
                want_lp = gen.sampling.logprobs is not None
                ended = text is None
                piece = shaper.finish() if ended else shaper.feed(text)  # type: ignore[arg-type]
                entries = gen.take_logprobs() if want_lp else []
                if chat:
                    delta: dict[str, Any] = {}
                    if piece.reasoning:
                        delta["reasoning_content"] = piece.reasoning
                    if piece.content:
                        delta["content"] = piece.content
                    if piece.calls:
                        delta["tool_calls"] = [call_delta(d) for d in piece.calls]
                    if delta or entries:
                        yield chat_chunk(gen, delta, None, chat_logprobs(entries) if want_lp else None)
                    if ended:
                        yield chat_chunk(gen, {}, shaper.finish_reason(gen.finish_reason), None)
                else:
                    if piece.content or entries:
                        yield completion_chunk(gen, piece.content, None, entries)
                    if ended:
                        yield completion_chunk(gen, "", gen.finish_reason, [])
            if body.include_usage:
                yield sse({**head, "choices": [], "usage": self._usage(runs)})
            yield DONE
        except asyncio.CancelledError:
            raise
        except Exception as e:
            err = self._translate(e)
            yield sse(err.body())
        finally:
            for run in runs:
                await run.close()

    # ---- endpoints --------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await self._handle(request, "chat_completions", ChatCompletionRequest, "chatcmpl")

    async def completions(self, request: Request) -> Response:
        return await self._handle(request, "completions", CompletionRequest, "cmpl")

    async def responses(self, request: Request) -> Response:
        return await self._handle(request, "responses", ChatCompletionRequest, "resp")

    async def models(self, request: Request) -> Response:
        data = [
            {
                "id": self.s.model,
                "object": "model",
                "created": 0,
                "owned_by": "dynamo",
                "max_model_len": self.s.tokenizer.context_length,  # as vLLM's own server names it
            }
        ]
        return json_response({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        n = self.s.workers.models().get(self.s.model, 0)
        self.s.metrics.workers.set(n)
        body = {"status": "ready" if n else "no_workers", "model": self.s.model, "workers": n}
        return json_response(body, 200 if n else 503)

    async def live(self, request: Request) -> Response:
        return json_response({"status": "live"})

    async def metrics(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self.s.metrics.workers.set(self.s.workers.models().get(self.s.model, 0))
        body = generate_latest(self.s.metrics.registry)
        if self.s.routing is not None:  # embedded router: its metrics are ours
            body += generate_latest(self.s.routing.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def build_app(state: FrontendState) -> BodyLimit:
    api = Api(state)
    app = FastAPI(title="dynamo-cli frontend", version="0.1.0", docs_url="/docs", redoc_url=None)
    install_openapi(app)  # the routes read their bodies themselves: the schemas are published by hand
    route: Callable[..., Any] = app.router.add_route
    route("/v1/chat/completions", api.chat, methods=["POST"])
    route("/v1/completions", api.completions, methods=["POST"])
    route("/v1/responses", api.responses, methods=["POST"])
    route("/v1/models", api.models, methods=["GET"])
    route("/health", api.health, methods=["GET"])
    route("/live", api.live, methods=["GET"])
    route("/metrics", api.metrics, methods=["GET"])

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        code = (
            "not_found"
            if exc.status_code == 404
            else "method_not_allowed"
            if exc.status_code == 405
            else None
        )
        return error_response(
            OpenAIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code)
        )

    return BodyLimit(app, state.max_body)
