"""Request bodies to dicts without stalling the event loop.

orjson holds the GIL for the whole parse, and what it costs depends on the body's shape as much as its
size (measured here: 15 MiB of one string 21 ms, 2 MiB of small nested arrays 330 ms, 15 MiB of empty
arrays 640 ms), so a thread cannot take it off the loop. Bodies up to `INLINE_BYTES` (a few ms at worst)
are parsed in place; larger ones in a small pool of processes (spawned, never forked: this process has
gRPC threads) that parse, apply the caps, and send back the dict, which unpickles in a few ms (15 MiB of
text: 2.5 ms, against 21 ms to parse it again).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import orjson

from dynamo_cli.frontend.limits import RequestLimits
from dynamo_cli.frontend.schemas import OpenAIError

logger = logging.getLogger(__name__)

INLINE_BYTES = 32 * 1024  # worst shape ("[],[],..."): ~11k arrays, under 3 ms
PARSE_PROCESSES = 2

_limits: RequestLimits | None = None  # in a parsing process: set by _init


def parse_body(body: bytes, limits: RequestLimits, chat: bool) -> dict[str, Any]:
    """JSON -> dict, refusing (OpenAIError) what is not an object or is over a cap."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise OpenAIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "the request body must be a JSON object", code="invalid_json")
    limits.precheck(data, chat)
    limits.check_values(data)
    return data


def _init(limits: RequestLimits) -> None:
    global _limits
    _limits = limits
    # This process only parses: reference counting frees everything, and the cyclic collector, run
    # as millions of containers are made, would cost more than the parse (5M arrays: 3.3 s, not 0.8).
    gc.disable()
    # Go when the frontend goes (the pool's own pipes would tell it too, but only once it reads them).
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _parse_in_child(body: bytes, chat: bool) -> tuple[dict[str, Any] | None, tuple[Any, ...] | None]:
    """(data, None), or (None, the error's fields): exceptions with keyword arguments do not pickle."""
    assert _limits is not None
    try:
        return parse_body(body, _limits, chat), None
    except OpenAIError as e:
        return None, (e.status, e.message, e.type, e.param, e.code)


def _ready() -> bool:
    return True


class BodyParser:
    def __init__(self, limits: RequestLimits, processes: int = PARSE_PROCESSES):
        self.limits = limits
        self._processes = processes
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self._processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init,
            initargs=(self.limits,),
        )

    async def warm_up(self) -> None:
        """Start the processes now rather than on the first large body."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, _ready) for _ in range(self._processes)))

    async def parse(self, body: bytes, chat: bool) -> dict[str, Any]:
        if len(body) <= INLINE_BYTES:
            return parse_body(body, self.limits, chat)
        loop = asyncio.get_running_loop()
        try:
            data, err = await loop.run_in_executor(self._pool, _parse_in_child, body, chat)
        except BrokenProcessPool:
            logger.error("a request-parsing process died; starting new ones")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            raise OpenAIError(
                503, "the request could not be parsed; try again", code="parser_restarted"
            ) from None
        if err is not None:
            status, message, type_, param, code = err
            raise OpenAIError(status, message, type_=type_, param=param, code=code)
        assert data is not None
        return data

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
