"""Process lifecycle helpers: the one place that installs signal handlers, and readiness reporting."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import orjson

logger = logging.getLogger(__name__)

READY_FD_ENV = "DYNAMO_READY_FD"
PARENT_PID_ENV = "DYNAMO_PARENT_PID"
LEASE_LOST_EXIT = 75  # a role that lost its discovery lease (EX_TEMPFAIL): start it again once etcd answers


class Shutdown:
    """First SIGINT/SIGTERM sets ``requested`` (drain); a second one calls ``on_force`` (default: exit)."""

    def __init__(self, on_force: Callable[[], None] | None = None):
        self.requested = asyncio.Event()
        self.signal: int | None = None
        self._on_force = on_force or (lambda: os._exit(130))

    def _handle(self, sig: int) -> None:
        if self.requested.is_set():
            logger.warning("second %s: forcing exit", signal.Signals(sig).name)
            self._on_force()
            return
        self.signal = sig
        self.requested.set()


def install_signal_handlers(on_force: Callable[[], None] | None = None) -> Shutdown:
    """Install the process's SIGINT/SIGTERM handlers on the running loop. Call exactly once."""
    shutdown = Shutdown(on_force)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, shutdown._handle, sig)
    return shutdown


def report_ready(info: dict[str, Any] | None = None) -> None:
    """Tell the launcher (if any) that this role is ready, with optional details (e.g. its URL)."""
    fd = os.environ.get(READY_FD_ENV)
    if not fd:
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), orjson.dumps(info or {}) + b"\n")
        os.close(int(fd))


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: get SIGTERM when the launcher dies, so no role outlives a killed `dynamo run`."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and os.getppid() != int(expected):  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def configure_logging(level: str, prefix: str | None = None) -> None:
    """Configure logging once, at process start. Role processes prefix nothing: the launcher does."""
    fmt = (
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
        if prefix is None
        else "%(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    for noisy in ("uvicorn.access", "nats", "grpc", "aetcd", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def run_async(coro: Any) -> Any:
    """Run a process's main coroutine, on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)  # an ImportError raised by the program itself must not land above
