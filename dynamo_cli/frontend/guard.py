"""The frontend's door (ASGI middleware, outermost): API keys, per-key rate limits and admission
control, each checked before the body is read, so a refused request costs next to nothing.

- Auth: every /v1 route (and /metrics with frontend.metrics_auth) needs `Authorization: Bearer KEY`
  with one of the configured keys, compared in constant time; else 401. /health, /live, /docs and
  /openapi.json stay open.
- Rate limits (frontend.rate_limit_rps, off by default): a token bucket per key; over it, 429 with
  Retry-After.
- Admission (generation routes): at most `limit()` requests admitted at once, a streamed one until its
  last byte; up to frontend.max_queued more wait, first come first served, for at most
  frontend.queue_timeout_s. Beyond that, 503 with Retry-After: overloaded.
- The frontend's own CPU: while more than frontend.max_accept_queue connections wait in the kernel to
  be accepted, or its event loop runs more than frontend.max_loop_lag_ms behind, new generation
  requests get a 503 at once (reason busy). Admission counts requests, but when the frontend itself is
  the bottleneck, requests wait in the kernel's accept queue, where no limit applies; a refusal costs
  about a tenth of a served request, so refusing is how it catches up.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import math
import socket
import struct
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dynamo_cli.config.frontend import FrontendConfig
from dynamo_cli.frontend.limits import refuse
from dynamo_cli.frontend.metrics import FrontendMetrics
from dynamo_cli.frontend.schemas import OpenAIError

GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
OPEN_PATHS = frozenset({"/health", "/live", "/docs", "/openapi.json", "/docs/oauth2-redirect"})
OVERLOAD_RETRY_AFTER_S = 1
OVERLOAD_HEADERS = [(b"retry-after", str(OVERLOAD_RETRY_AFTER_S).encode())]
# A refused request's body is read and dropped, up to this many bytes and seconds, so the client sees
# the answer.
REFUSAL_DRAIN = (1 << 20, 2.0)


class Admission:
    """At most ``limit()`` holders at once, and a bounded FIFO of waiters."""

    def __init__(
        self,
        limit: Callable[[], int],
        max_queued: int,
        timeout_s: float,
        on_queue: Callable[[int], None] = lambda n: None,
    ):
        self.limit = limit
        self.max_queued = max_queued
        self.timeout_s = timeout_s
        self.on_queue = on_queue  # told the queue's length whenever it changes
        self.active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> bool:
        """True: admitted (call release once done). False: full, or waited too long."""
        if self.active < self.limit() and not self._waiters:
            self.active += 1
            return True
        if len(self._waiters) >= self.max_queued:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.on_queue(len(self._waiters))
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.timeout_s)
            return True
        except (asyncio.TimeoutError, asyncio.CancelledError) as e:
            if fut.done() and not fut.cancelled():  # the slot came as we gave up: pass it on
                self.release()
            else:
                fut.cancel()
                self._discard(fut)
            if isinstance(e, asyncio.CancelledError):
                raise
            return False

    def release(self) -> None:
        self.active -= 1
        self.wake()

    def wake(self) -> None:
        """Hand free slots to waiters (also when the limit grew: more workers)."""
        while self._waiters and self.active < self.limit():
            fut = self._waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)
        self.on_queue(len(self._waiters))

    def _discard(self, fut: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(fut)
        except ValueError:
            return
        self.on_queue(len(self._waiters))


class LoopLag:
    """How late the event loop runs: a timer every PERIOD_S, and how late it fired last."""

    PERIOD_S = 0.05

    def __init__(self) -> None:
        self.lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.PERIOD_S)
            self.lag_s = max(0.0, loop.time() - t0 - self.PERIOD_S)


class AcceptQueue:
    """Connections the kernel holds for a listening socket that are not accepted yet (Linux: TCP_INFO's
    tcpi_unacked is the accept queue's length on a listening socket). 0 where that cannot be read."""

    def __init__(self, sock: socket.socket | None):
        self.sock = sock

    def length(self) -> int:
        if self.sock is None:
            return 0
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
            return int(struct.unpack_from("I", info, 24)[0])
        except (OSError, AttributeError, struct.error):  # not Linux, or not TCP
            self.sock = None
            return 0


class RateLimiter:
    """A token bucket per key: ``rate`` requests a second, ``burst`` at once."""

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str) -> float:
        """0: allowed. Otherwise the seconds until a request would be."""
        now = time.monotonic()
        tokens, when = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        cfg: FrontendConfig,
        keys: list[str],
        metrics: FrontendMetrics,
        model: str,
        admission_limit: Callable[[], int],
        listening: socket.socket | None = None,
    ):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.metrics_auth = cfg.metrics_auth
        self.metrics = metrics
        self.model = model
        self.admission = Admission(
            admission_limit, cfg.max_queued, cfg.queue_timeout_s, on_queue=metrics.queued.set
        )
        self.lag = LoopLag()
        self.max_lag_s = cfg.max_loop_lag_ms / 1000
        self.accept_queue = AcceptQueue(listening)
        self.max_accept_queue = cfg.max_accept_queue
        rate = cfg.rate_limit_rps
        self.rates = None if rate is None else RateLimiter(rate, cfg.rate_limit_burst or max(1, int(rate)))

    def _needs_key(self, path: str) -> bool:
        if path.startswith("/v1/") or path == "/v1":
            return True
        return path == "/metrics" and self.metrics_auth

    def _key(self, scope: Scope) -> bytes | None:
        """The configured key the request carries, or None."""
        for name, value in scope.get("headers") or []:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    return None
                token = token.strip()
                found = None
                for key in self.keys:  # every key compared, each in constant time
                    if hmac.compare_digest(token, key):
                        found = key
                return found
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        key = b""
        if self.keys and self._needs_key(path):
            found = self._key(scope)
            if found is None:
                self._count("unauthorized")
                err = OpenAIError(
                    401,
                    "a valid API key is needed: send it as 'Authorization: Bearer KEY'",
                    type_="invalid_request_error",
                    code="invalid_api_key",
                )
                await refuse(err, receive, send, [(b"www-authenticate", b"Bearer")], REFUSAL_DRAIN)
                return
            key = found
        generation = path in GENERATION_PATHS and scope.get("method") == "POST"
        if not generation:
            await self.app(scope, receive, send)
            return
        if self.rates is not None:
            wait = self.rates.take(key.decode())
            if wait > 0:
                self._count("rate_limited")
                err = OpenAIError(
                    429,
                    f"rate limit reached: at most {self.rates.rate:g} requests/s for this key "
                    "(frontend.rate_limit_rps)",
                    type_="rate_limit_error",
                    code="rate_limit_exceeded",
                )
                await refuse(
                    err, receive, send, [(b"retry-after", str(math.ceil(wait)).encode())], REFUSAL_DRAIN
                )
                return
        self.lag.start()
        waiting = self.accept_queue.length()
        if waiting > self.max_accept_queue or self.lag.lag_s > self.max_lag_s:
            self._count("busy")
            err = OpenAIError(
                503,
                f"the server is busy ({waiting} connections wait to be accepted, its loop runs "
                f"{self.lag.lag_s * 1000:.0f} ms behind); retry shortly",
                code="overloaded",
            )
            await refuse(
                err, receive, send, [(b"retry-after", str(OVERLOAD_RETRY_AFTER_S).encode())], REFUSAL_DRAIN
            )
            return
        adm = self.admission
        if not await adm.acquire():
            self._count("overloaded")
            err = OpenAIError(
                503,
                f"the server is overloaded ({adm.active} requests in progress, {adm.queued} waiting); "
                "retry shortly",
                code="overloaded",
            )
            await refuse(
                err, receive, send, [(b"retry-after", str(OVERLOAD_RETRY_AFTER_S).encode())], REFUSAL_DRAIN
            )
            return
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                adm.release()

        async def sending(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()  # the last byte is out: the client may send its next request now

        try:
            await self.app(scope, receive, sending)
        finally:
            release()

    def _count(self, reason: str) -> None:
        self.metrics.rejected.labels(self.model, reason).inc()


def admission_limit(cfg: FrontendConfig, live_workers: Callable[[], int]) -> Callable[[], int]:
    """frontend.max_inflight, or inflight_per_worker for each worker serving now (one while none is)."""
    fixed = cfg.max_inflight
    if fixed is not None:
        return lambda: fixed
    per = cfg.inflight_per_worker
    return lambda: per * max(1, live_workers())
