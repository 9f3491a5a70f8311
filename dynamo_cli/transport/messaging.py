"""The request plane: send a request to one chosen instance and stream its response chunks back.

`RequestPlane` is the small interface roles use; `NatsRequestPlane` implements it on NATS:

- an endpoint instance listens on its own subject; cancellations arrive on ``<subject>.ctl``;
- each client has one inbox subscription (``_INBOX.<client>.*``); a request's reply subject is unique
  and doubles as its id;
- frames back to the client start with one byte: ``A`` accepted, ``D`` data, ``E`` end, ``X`` error
  (JSON ``{"message", "code"}``), ``K`` keepalive (sent while a request is quiet);
- a request to a subject nobody listens on fails at once (NATS "no responders");
- one watchdog per client fails streams that are not accepted in time or go silent (dead instance).

The frame kinds and the client's response stream live in ``response_stream``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.msg import Msg

from dynamo_cli.errors import NoRespondersError, RemoteError, RequestError
from dynamo_cli.transport.ports import without_secret
from dynamo_cli.transport.response_stream import (
    ACK,
    DATA,
    END,
    KEEP,
    NO_RESPONDERS,
    STATUS,
    NatsResponseStream,
    ResponseStream,
    error_frame,
)

logger = logging.getLogger(__name__)

Handler = Callable[[bytes, "RequestContext"], AsyncIterator[bytes]]


@dataclass(slots=True)
class RequestContext:
    """What a handler knows about the request it serves."""

    request_id: str
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


class Endpoint(abc.ABC):
    """A served endpoint instance."""

    subject: str

    @property
    @abc.abstractmethod
    def in_flight(self) -> int: ...

    @abc.abstractmethod
    async def stop_accepting(self) -> None:
        """New requests are refused (the client tries another instance); in-flight ones go on."""

    @abc.abstractmethod
    async def drain(self, timeout: float) -> bool:
        """Wait for in-flight requests to finish; True if they all did."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class RequestPlane(abc.ABC):
    @abc.abstractmethod
    async def serve(self, subject: str, handler: Handler) -> Endpoint: ...

    @abc.abstractmethod
    async def request(
        self, subject: str, payload: bytes, *, accept_timeout: float, idle_timeout: float
    ) -> ResponseStream: ...

    @abc.abstractmethod
    async def publish(self, subject: str, payload: bytes) -> None: ...

    @abc.abstractmethod
    async def subscribe(
        self, subject: str, callback: Callable[[bytes], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        """Subscribe to broadcast messages; returns an unsubscribe coroutine function."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class _NatsEndpoint(Endpoint):
    def __init__(self, plane: NatsRequestPlane, subject: str, handler: Handler, keepalive_s: float):
        self._plane = plane
        self.subject = subject
        self._handler = handler
        self._keepalive_s = keepalive_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last_sent: dict[str, float] = {}
        self._accepting = True
        self._subs: list = []
        self._keepalive_task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        nc = self._plane._nc
        self._subs.append(await nc.subscribe(self.subject, cb=self._on_request))
        self._subs.append(await nc.subscribe(self.subject + ".ctl", cb=self._on_ctl))
        # The server must know our subscriptions before anyone is told (via discovery) to use them.
        await nc.flush()
        self._keepalive_task = asyncio.create_task(self._keepalive(), name=f"keepalive:{self.subject}")

    async def _on_request(self, msg: Msg) -> None:
        reply = msg.reply
        if not reply:
            return
        nc = self._plane._nc
        if not self._accepting:
            await nc.publish(reply, error_frame("instance is shutting down", "unavailable"))
            return
        ctx = RequestContext(request_id=reply)
        self._idle.clear()
        task = asyncio.create_task(self._run(msg.data, reply, ctx), name=f"req:{reply}")
        self._tasks[reply] = task
        task.add_done_callback(functools.partial(self._finished_cb, reply))

    def _finished_cb(self, reply: str, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(reply, None)
        self._last_sent.pop(reply, None)
        if not self._tasks:
            self._idle.set()

    async def _run(self, data: bytes, reply: str, ctx: RequestContext) -> None:
        nc = self._plane._nc
        publish = nc.publish
        last_sent = self._last_sent
        try:
            await publish(reply, ACK)
            last_sent[reply] = time.monotonic()
            async for chunk in self._handler(data, ctx):
                await publish(reply, DATA + chunk)
                last_sent[reply] = time.monotonic()
            await publish(reply, END)
        except asyncio.CancelledError:
            ctx.cancelled.set()
            raise
        except RemoteError as e:
            await publish(reply, error_frame(str(e), e.code))
        except Exception as e:
            logger.exception("handler for %s failed", self.subject)
            with contextlib.suppress(Exception):
                await publish(reply, error_frame(f"{type(e).__name__}: {e}", "internal"))

    async def _on_ctl(self, msg: Msg) -> None:
        task = self._tasks.get(msg.data.decode())
        if task is not None:
            task.cancel()

    async def _keepalive(self) -> None:
        nc = self._plane._nc
        while True:
            await asyncio.sleep(self._keepalive_s)
            cutoff = time.monotonic() - self._keepalive_s
            for reply, t in list(self._last_sent.items()):
                if t < cutoff:
                    with contextlib.suppress(Exception):
                        await nc.publish(reply, KEEP)
                    self._last_sent[reply] = time.monotonic()

    async def stop_accepting(self) -> None:
        self._accepting = False

    async def drain(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        self._accepting = False
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        if self._tasks:  # unfinished: the caller hears at once and can move them (frontends migrate)
            frame = error_frame("the instance stopped before finishing the request", "unavailable")
            with contextlib.suppress(Exception):
                for reply in list(self._tasks):
                    await self._plane._nc.publish(reply, frame)
                await self._plane._nc.flush(timeout=1)
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive_task


class NatsRequestPlane(RequestPlane):
    """Request plane over one NATS connection."""

    def __init__(self, nc: nats.NATS, *, keepalive_s: float = 1.0):
        self._nc = nc
        self._keepalive_s = keepalive_s
        self._client = f"{os.getpid():x}{os.urandom(4).hex()}"
        self._inbox_prefix = f"_INBOX.{self._client}."
        self._seq = itertools.count(1)
        self._streams: dict[str, NatsResponseStream] = {}
        self._inbox_sub: Any = None
        self._watchdog: asyncio.Task[None] | None = None
        self._endpoints: list[_NatsEndpoint] = []

    @classmethod
    async def connect(cls, url: str, *, name: str = "dynamo", keepalive_s: float = 1.0) -> NatsRequestPlane:
        nc = await connect_nats(url, name=name)
        return cls(nc, keepalive_s=keepalive_s)

    @property
    def nc(self) -> nats.NATS:
        return self._nc

    async def serve(self, subject: str, handler: Handler) -> Endpoint:
        ep = _NatsEndpoint(self, subject, handler, self._keepalive_s)
        await ep.start()
        self._endpoints.append(ep)
        return ep

    async def _ensure_inbox(self) -> None:
        if self._inbox_sub is None:
            self._inbox_sub = await self._nc.subscribe(self._inbox_prefix + "*", cb=self._on_reply)
            self._watchdog = asyncio.create_task(self._watch(), name="request-plane-watchdog")

    async def _on_reply(self, msg: Msg) -> None:
        stream = self._streams.get(msg.subject)
        if stream is None:
            return
        if msg.headers and msg.headers.get(STATUS) == NO_RESPONDERS:
            stream.fail(NoRespondersError("no instance listens on that address"))
            return
        stream.feed(msg.data)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for stream in list(self._streams.values()):
                stream.check(now)

    async def request(
        self, subject: str, payload: bytes, *, accept_timeout: float, idle_timeout: float
    ) -> ResponseStream:
        await self._ensure_inbox()
        reply = f"{self._inbox_prefix}{next(self._seq)}"
        stream = NatsResponseStream(self, subject, payload, reply, accept_timeout, idle_timeout)
        self._streams[reply] = stream
        try:
            await self._nc.publish(subject, payload, reply=reply)
        except Exception as e:
            self._streams.pop(reply, None)
            raise RequestError(f"cannot send request: {e}") from e
        return stream

    async def publish(self, subject: str, payload: bytes) -> None:
        await self._nc.publish(subject, payload)

    async def subscribe(
        self, subject: str, callback: Callable[[bytes], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        async def on_msg(msg: Msg) -> None:
            await callback(msg.data)

        sub = await self._nc.subscribe(subject, cb=on_msg)
        await self._nc.flush()  # live at the server when we return: nothing published after is missed
        return sub.unsubscribe

    async def close(self) -> None:
        for ep in self._endpoints:
            await ep.close()
        self._endpoints.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        for stream in list(self._streams.values()):
            stream.fail(RequestError("the connection is closing"))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._nc.drain(), 5)
        if not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.close()


async def connect_nats(url: str, *, name: str, timeout: float = 5.0) -> nats.NATS:
    """Connect with bounded retries; reconnects forever once connected (the server may restart)."""

    async def _err(e: Exception) -> None:
        logger.warning("NATS: %s", e)

    connect = nats.connect(
        url,
        name=name,
        connect_timeout=timeout,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        error_cb=_err,
        pending_size=64 * 1024 * 1024,
        flush_timeout=timeout,
    )
    try:
        return await asyncio.wait_for(connect, timeout)
    except (asyncio.TimeoutError, OSError, nats.errors.Error) as e:
        raise RequestError(f"cannot reach NATS at {without_secret(url)}") from e
