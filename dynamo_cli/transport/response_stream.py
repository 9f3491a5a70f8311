"""The NATS request plane's frames, and the client side of one request: its response stream.

Every frame back to the client starts with one byte, its kind: ``A`` accepted, ``D`` data, ``E`` end,
``X`` error (JSON ``{"message", "code"}``), ``K`` keepalive. A NATS reply with header ``Status: 503``
means nobody listens on the subject. ``messaging`` sends requests and serves endpoints with these.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import orjson

from dynamo_cli.errors import NoRespondersError, RemoteError, RequestTimeoutError

if TYPE_CHECKING:
    from dynamo_cli.transport.messaging import NatsRequestPlane

ACK, DATA, END, ERR, KEEP = b"A", b"D", b"E", b"X", b"K"
STATUS = "Status"
NO_RESPONDERS = "503"


class ResponseStream(abc.ABC):
    """Response chunks of one request. Iterate for data; ``cancel()`` tells the remote side to stop."""

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    @abc.abstractmethod
    async def cancel(self) -> None: ...

    @abc.abstractmethod
    def fail(self, exc: BaseException) -> None:
        """End the iteration with ``exc`` (raised to the reader after what it has not read yet)."""


def error_frame(message: str, code: str) -> bytes:
    return ERR + orjson.dumps({"message": message, "code": code})


class NatsResponseStream(ResponseStream):
    __slots__ = (
        "_accept_deadline",
        "_ctl",
        "_done",
        "_idle",
        "_payload",
        "_plane",
        "_queue",
        "_republished",
        "_subject",
        "accepted",
        "last_seen",
        "reply",
    )

    def __init__(
        self,
        plane: NatsRequestPlane,
        subject: str,
        payload: bytes,
        reply: str,
        accept_timeout: float,
        idle: float,
    ):
        self._plane = plane
        self._subject = subject
        self._payload = payload
        self._republished = False
        self.reply = reply
        self._ctl = subject + ".ctl"
        self._queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self.accepted = False
        now = time.monotonic()
        self.last_seen = now
        self._accept_deadline = now + accept_timeout
        self._idle = idle
        self._done = False

    def feed(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        self._queue.put_nowait(data)

    def fail(self, exc: BaseException) -> None:
        self._queue.put_nowait(exc)

    def check(self, now: float) -> None:
        if self._done:
            return
        if not self.accepted and now > self._accept_deadline:
            self.fail(RequestTimeoutError("the instance did not accept the request in time"))
            self._done = True
        elif self.accepted and now - self.last_seen > self._idle:
            self.fail(RequestTimeoutError(f"the instance went silent for {self._idle:g} s (is it alive?)"))
            self._done = True

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, NoRespondersError) and not self._republished:
                    # Seen rarely right after a subscription was made on another connection: ask once
                    # more before concluding that nobody listens (a dead instance costs 50 ms more).
                    self._republished = True
                    await asyncio.sleep(0.05)
                    await self._plane._nc.publish(self._subject, self._payload, reply=self.reply)
                    continue
                if isinstance(item, BaseException):
                    self._done = True  # failed or timed out: nothing more will come
                    raise item
                kind = item[:1]
                if kind == DATA:
                    yield item[1:]
                elif kind == END:
                    self._done = True
                    return
                elif kind == ERR:
                    self._done = True
                    err = orjson.loads(item[1:])
                    raise RemoteError(err.get("message", "remote error"), err.get("code", "internal"))
                elif kind == ACK:
                    self.accepted = True
                # keepalives only refresh last_seen
        finally:
            # Local iteration is over; the remote side may still be running (then cancel() stops it).
            self._plane._streams.pop(self.reply, None)

    async def cancel(self) -> None:
        """Tell the remote side to stop, unless it already finished."""
        if self._done:
            return
        self._done = True
        self._plane._streams.pop(self.reply, None)
        with contextlib.suppress(Exception):
            await self._plane._nc.publish(self._ctl, self.reply.encode())
