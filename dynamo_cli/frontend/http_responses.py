"""The HTTP responses the API sends: JSON bodies, OpenAI errors, and server-sent events (chat and
completion chunks, Responses API events) cancelled as soon as the client disconnects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dynamo_cli.frontend.schemas import OpenAIError

_JSON = "application/json"
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
DONE = b"data: [DONE]\n\n"


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON)


def error_response(err: OpenAIError) -> Response:
    return json_response(err.body(), err.status)


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def race_disconnect(receive: Receive, work: Awaitable[Any]) -> tuple[bool, Any]:
    """Run ``work``; cancel it if the client goes away. Returns (disconnected, result)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task.done():
        return False, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return True, None


class SSEResponse(Response):
    """Server-sent events; the generation is cancelled as soon as the client disconnects."""

    def __init__(self, chunks: AsyncIterator[bytes]):
        self._chunks = chunks
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            async for chunk in self._chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await race_disconnect(receive, pump())
        except OSError:  # the client went away between two sends
            pass
        finally:
            await self._chunks.aclose()  # type: ignore[attr-defined]


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def sse_event(obj: dict[str, Any]) -> bytes:
    """A Responses API event: its type named on the event line too."""
    return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"
