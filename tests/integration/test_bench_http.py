"""The bench's lean HTTP client against a loopback server that splits and closes things awkwardly."""

from __future__ import annotations

import asyncio
import json

import pytest

from dynamo_cli.bench.http import Connection, Endpoint, HttpError

pytestmark = pytest.mark.integration


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


async def _serve(responses: list[bytes]) -> tuple[asyncio.Server, int, list[bytes]]:
    """Answers successive requests with the given raw responses (on one connection or several)."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while responses:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            seen.append(head + await reader.readexactly(length))
            raw = responses.pop(0)
            writer.write(raw)
            await writer.drain()
            if b"connection: close" in raw.lower():
                writer.close()
                return
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


def test_stream_with_events_split_across_chunks_then_an_error_then_a_closed_connection() -> None:
    events = (
        _event({"choices": [{"delta": {"role": "assistant"}}]})
        + _event({"choices": [{"delta": {"content": "Hel"}}]})
        + _event({"choices": [{"delta": {"content": "lo"}}]})
        + _event({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2}})
        + b"data: [DONE]\n\n"
    )
    ok = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    ok += _chunked([events[:30], events[30:31], events[31:97], events[97:]])
    err_body = json.dumps({"error": {"message": "The model `x` does not exist.", "code": 404}}).encode()
    err = b"HTTP/1.1 404 Not Found\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (
        len(err_body),
        err_body,
    )

    async def go() -> None:
        server, port, seen = await _serve([ok, err])
        server2, port2, _ = await _serve([ok])
        async with server, server2:
            conn = Connection(Endpoint.parse(f"http://127.0.0.1:{port}/v1"), api_key="k", timeout=5)
            got = await conn.chat_stream({"model": "m", "messages": []})
            assert got.text == "Hello" and len(got.token_times) == 2
            assert (got.prompt_tokens, got.completion_tokens) == (12, 2)
            with pytest.raises(HttpError, match=r"HTTP 404: The model `x` does not exist\."):
                await conn.chat_stream({"model": "x", "messages": []})
            assert seen[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
            assert b"Authorization: Bearer k\r\n" in seen[0]
            # the server closed after the error: the next request opens a new connection
            conn.ep = Endpoint.parse(f"http://127.0.0.1:{port2}/v1")
            assert (await conn.chat_stream({"model": "m", "messages": []})).text == "Hello"
            conn.close()

    asyncio.run(go())


def test_an_error_inside_the_stream_fails_the_request() -> None:
    body = _event({"choices": [{"delta": {"content": "a"}}]}) + _event({"error": {"message": "engine died"}})
    raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + _chunked([body])

    async def go() -> None:
        server, port, _ = await _serve([raw])
        async with server:
            conn = Connection(Endpoint.parse(f"127.0.0.1:{port}/v1"), timeout=5)
            with pytest.raises(HttpError, match="engine died"):
                await conn.chat_stream({"model": "m", "messages": []})
            conn.close()

    asyncio.run(go())


def test_nothing_listening_is_a_connection_error() -> None:
    from dynamo_cli.transport.ports import free_port

    async def go() -> None:
        conn = Connection(Endpoint.parse(f"http://127.0.0.1:{free_port()}/v1"), timeout=5)
        with pytest.raises(HttpError, match="connection failed"):
            await conn.chat_stream({"model": "m", "messages": []})

    asyncio.run(go())
