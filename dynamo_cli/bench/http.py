"""A lean streaming client for OpenAI chat completions: one keep-alive HTTP/1.1 connection per user.

General Python HTTP clients spend about a millisecond of CPU per streamed request, as much as the server
under test; on a small machine the benchmark would measure itself. This client writes the request and
reads the chunked server-sent events with asyncio streams, parsing only the JSON it needs.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import orjson

READ_LIMIT = 1 << 22


class HttpError(Exception):
    """The endpoint answered with an error status or broke the protocol."""


@dataclass
class Streamed:
    """What one streamed chat completion produced, with client-side timestamps (perf_counter)."""

    text: str
    launch: float
    token_times: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.launch if self.token_times else None

    @property
    def mean_itl(self) -> float | None:
        """The request's mean inter-token latency (None with fewer than two tokens)."""
        t = self.token_times
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else None


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    path_prefix: str
    tls: bool

    @classmethod
    def parse(cls, base_url: str) -> Endpoint:
        u = urlparse(base_url if "://" in base_url else "http://" + base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        tls = u.scheme == "https"
        return cls(u.hostname, u.port or (443 if tls else 80), u.path.rstrip("/"), tls)


REQUEST_TIMEOUT_S = 600.0  # a request slower than this counts as failed


class Connection:
    """A keep-alive connection that reconnects after the server closes it."""

    def __init__(
        self, endpoint: Endpoint, api_key: str | None = None, timeout: float = REQUEST_TIMEOUT_S
    ) -> None:
        self.ep = endpoint
        self.timeout = timeout
        self._auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            ctx = ssl.create_default_context() if self.ep.tls else None
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.ep.host, self.ep.port, ssl=ctx, limit=READ_LIMIT), 30
            )
        assert self._reader is not None and self._writer is not None
        return self._reader, self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def get_json(self, path: str) -> Any:
        status, body = await self._exchange("GET", path, b"", stream=False)
        if status != 200:
            raise HttpError(f"GET {path}: HTTP {status}: {body[:300]!r}")
        return orjson.loads(body)

    async def chat_stream(self, body: dict[str, Any]) -> Streamed:
        """POST /v1/chat/completions with stream=True; returns the text, token times and usage."""
        out = Streamed("", time.perf_counter())
        try:
            await asyncio.wait_for(self._chat(body, out), self.timeout)
        except (TimeoutError, asyncio.TimeoutError):
            self.close()
            raise HttpError(f"no complete answer within {self.timeout:g} s") from None
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
            self.close()
            raise HttpError(f"connection failed: {e}") from None
        return out

    async def _chat(self, body: dict[str, Any], out: Streamed) -> None:
        status, rest = await self._exchange("POST", "/chat/completions", orjson.dumps(body), stream=True)
        if status != 200:
            raise HttpError(f"HTTP {status}: {_error_message(rest)}")
        parts: list[str] = []
        buf = b""
        async for chunk in self._chunks():
            now = time.perf_counter()
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        continue
                    _take(orjson.loads(data), out, parts, now)
        out.text = "".join(parts)

    async def _exchange(self, method: str, path: str, body: bytes, stream: bool) -> tuple[int, bytes]:
        """Send a request; read the status and headers (and the body unless streaming)."""
        for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile: retry once
            reader, writer = await self._open()
            head = (
                f"{method} {self.ep.path_prefix}{path} HTTP/1.1\r\nHost: {self.ep.host}:{self.ep.port}\r\n"
                f"{self._auth}Content-Type: application/json\r\nAccept: text/event-stream, application/json"
                f"\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
            )
            writer.write(head.encode() + body)
            try:
                await writer.drain()
                raw = await reader.readuntil(b"\r\n\r\n")
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        lines = raw.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise HttpError(f"not an HTTP response: {lines[0][:80]!r}") from None
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        self._length = int(headers.get("content-length", "-1"))
        self._close_after = headers.get("connection", "").lower() == "close"
        if stream and status == 200:
            return status, b""
        return status, b"".join([c async for c in self._chunks()])

    async def _chunks(self) -> Any:
        assert self._reader is not None
        reader = self._reader
        if self._chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                data = await reader.readexactly(size + 2)
                yield data[:-2]
        elif self._length >= 0:
            yield await reader.readexactly(self._length)
        else:  # no length: the body runs until the server closes the connection
            while data := await reader.read(65536):
                yield data
            self._close_after = True
        if self._close_after:
            self.close()


async def chat_once(
    ep: Endpoint, body: dict[str, Any], timeout: float, api_key: str | None = None
) -> Streamed | None:
    """One streamed chat on a connection of its own (open-loop load); None if it failed."""
    conn = Connection(ep, api_key, timeout=timeout)
    try:
        return await conn.chat_stream(body)
    except HttpError:
        return None
    finally:
        conn.close()


def _take(obj: dict[str, Any], out: Streamed, parts: list[str], now: float) -> None:
    if "error" in obj:
        err = obj["error"]
        raise HttpError(err.get("message", str(err)) if isinstance(err, dict) else str(err))
    for choice in obj.get("choices") or ():
        delta = choice.get("delta") or {}
        piece = delta.get("content") or delta.get("reasoning_content")
        if piece:
            parts.append(piece)
            out.token_times.append(now)
    usage = obj.get("usage")
    if usage:
        out.prompt_tokens = usage.get("prompt_tokens")
        out.completion_tokens = usage.get("completion_tokens")


def _error_message(body: bytes) -> str:
    try:
        err = orjson.loads(body)["error"]
        return str(err.get("message", err)) if isinstance(err, dict) else str(err)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:300].decode(errors="replace")
