"""NIXL (UCX) backend of `KvTransferAgent`: the reader pulls a peer's region with a one-sided READ.

What this module works around, measured with nixl 1.5.1 on a CPU-only machine:
- ``import nixl`` imports torch (~1 s) when a CPU-only torch is installed, to guess a CUDA version;
  the ``nixl_cu12._api`` module it forwards to imports in ~0.1 s, so that is imported directly.
- ``nixl_agent`` hard-codes a zero progress-thread delay: its UCX progress thread busy-polls one core
  at 100%, forever. Without the thread the *serving* side never answers UCX wire-up and TCP-emulated
  reads. So the agent is built with the thread and a 10 ms delay, which makes the thread sleep in
  poll() on UCX's event fd (~0.5% of a core when idle).
- NIXL and UCX log to stdout, and NIXL sets ``logging.raiseExceptions`` on import: NIXL's records go
  to our logging instead, UCX's lines to stderr (``UCX_LOG_FILE``), and the flag is put back.
- Between processes of one host UCX reads with cross-memory attach (process_vm_readv): the copy
  happens inside ``transfer()`` (GIL released), so all NIXL calls run on one worker thread, which
  also serialises them (the agent is created without its own locking).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from dynamo_cli.kv.region import HEADER, HEADER_STRUCT, TransferError

logger = logging.getLogger(__name__)

PROGRESS_DELAY_US = 10_000  # how long NIXL's UCX progress thread sleeps in poll() between wake-ups
_POLL_FIRST_S, _POLL_MAX_S = 0.0002, 0.002  # completion polling of a transfer still in progress
_PATCH_LOCK = threading.Lock()
T = TypeVar("T")


def import_nixl_api() -> ModuleType:
    """NIXL's Python API (`nixl._api`), without the meta package's torch import."""
    os.environ.setdefault("UCX_LOG_FILE", "stderr")  # UCX logs to stdout otherwise
    raise_exc = logging.raiseExceptions
    try:
        for flavour in ("nixl_cu13", "nixl_cu12", "nixl_rocm"):
            try:
                api = importlib.import_module(f"{flavour}._api")
                break
            except ModuleNotFoundError as e:
                if e.name != flavour:
                    raise
        else:
            api = importlib.import_module("nixl._api")
    finally:
        logging.raiseExceptions = raise_exc
    nixl_logger = logging.getLogger("nixl")  # NIXL configured its own stdout handler: use ours
    for handler in list(nixl_logger.handlers):
        nixl_logger.removeHandler(handler)
    nixl_logger.propagate = True
    if not os.environ.get("NIXL_LOG_LEVEL"):
        nixl_logger.setLevel(logging.WARNING)
    return api


@contextlib.contextmanager
def progress_thread_delay(api: Any) -> Iterator[None]:
    """While open, agents built with ``api.nixl_agent`` get a progress thread that sleeps between
    events instead of spinning (see above). Also used for vLLM's own NIXL agents."""
    bind = api.nixlBind
    base = bind.nixlAgentConfig

    class _Config(base):  # type: ignore[misc,valid-type]
        @property
        def pthrDelay(self) -> int:
            return base.pthrDelay.__get__(self)  # type: ignore[no-any-return]

        @pthrDelay.setter
        def pthrDelay(self, _value: int) -> None:
            base.pthrDelay.__set__(self, PROGRESS_DELAY_US)

    with _PATCH_LOCK:
        bind.nixlAgentConfig = _Config
        try:
            yield
        finally:
            bind.nixlAgentConfig = base


def _new_agent(api: Any, name: str) -> Any:
    """An nixl_agent with a UCX backend whose progress thread sleeps between events (see above)."""
    with progress_thread_delay(api):
        agent = api.nixl_agent(name, api.nixl_agent_config(enable_prog_thread=True, backends=["UCX"]))
    if "UCX" not in agent.backends:
        raise TransferError(f"NIXL has no UCX backend (plugins: {agent.get_plugin_list()})")
    return agent


def _verify_header(header: bytes, desc: dict[str, Any]) -> None:
    """TransferError unless a region's header, read after its payload, still names this descriptor."""
    if HEADER_STRUCT.unpack_from(header) != (desc["incarnation"], desc["generation"], desc["nbytes"]):
        raise TransferError(
            f"region {desc['offset']} of {desc['agent']} was released or reused before the read ended"
        )


class _Read:
    __slots__ = ("handle", "steps")

    def __init__(self, steps: list[tuple[int, int, int]]) -> None:
        self.steps = steps  # (local address, remote address, bytes) still to post
        self.handle: Any = None  # the NIXL transfer in flight


class NixlBackend:
    name = "nixl"

    def __init__(self, agent: Any, arena: np.ndarray, executor: ThreadPoolExecutor) -> None:
        self._agent = agent
        self._arena = arena  # kept alive while NIXL has it registered
        self._base = int(arena.ctypes.data)
        self._ex = executor
        self._reg = agent.register_memory([(self._base, arena.nbytes, 0, "")], "DRAM")
        self._md: bytes = agent.get_agent_metadata()
        self._peers: dict[str, int] = {}  # remote agent name -> incarnation loaded into NIXL
        self._reads: dict[int, _Read] = {}  # local offset -> a read in progress (NIXL thread only)

    @classmethod
    async def create(cls, name: str, arena: np.ndarray) -> NixlBackend:
        loop = asyncio.get_running_loop()
        ex = ThreadPoolExecutor(1, thread_name_prefix=f"nixl-{name}")
        try:
            api = await loop.run_in_executor(ex, import_nixl_api)
            return await loop.run_in_executor(ex, lambda: cls(_new_agent(api, name), arena, ex))
        except BaseException:
            ex.shutdown(wait=False)
            raise

    def metadata(self) -> dict[str, Any]:
        return {"nixl": self._md, "base": self._base}

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._ex, fn, *args)

    async def read(self, peer: dict[str, Any], desc: dict[str, Any], local_off: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        name, n = peer["name"], desc["nbytes"]
        local, remote = self._base + local_off, peer["base"] + desc["offset"]
        # The payload first, then the header: a region released before the payload read ended has a
        # cleared header by the time the second read looks at it.
        steps = [(local + HEADER, remote + HEADER, n), (local, remote, HEADER_STRUCT.size)]
        try:
            # One hop to the NIXL thread in the common case: between processes of one host UCX copies
            # inside transfer(), so both reads are done when it returns.
            state = await asyncio.wait_for(self._call(self._start, peer, steps, local_off), timeout)
            delay = _POLL_FIRST_S
            while state != "DONE":
                if loop.time() >= deadline:
                    raise asyncio.TimeoutError
                await asyncio.sleep(delay)
                delay = min(delay * 2, _POLL_MAX_S)
                state = await self._call(self._advance, name, local_off)
        except asyncio.TimeoutError:
            raise TransferError(f"NIXL read from {name} timed out after {timeout} s") from None
        header = bytes(self._arena[local_off : local_off + HEADER_STRUCT.size])
        self._arena[local_off : local_off + HEADER_STRUCT.size] = 0  # our own header: never a valid region
        _verify_header(header, desc)

    def discard_local(self, local_off: int, free: Callable[[], None]) -> asyncio.Future[bool]:
        """Free a failed fetch's local region once nothing can write into it: after every NIXL call
        queued before (one FIFO thread) and the release of its transfer, if that succeeds."""

        def done(f: asyncio.Future[bool]) -> None:
            if not f.cancelled() and f.exception() is None and f.result():
                free()
            else:
                logger.warning("a NIXL read into arena offset %d could not be cancelled: leaked", local_off)

        fut = asyncio.wrap_future(self._ex.submit(self._release, local_off))
        fut.add_done_callback(done)
        return fut

    # -- on the NIXL thread ------------------------------------------------------------------------
    def _ensure_peer(self, peer: dict[str, Any]) -> None:
        name = peer["name"]
        if self._peers.get(name) == peer["incarnation"]:
            return
        if name in self._peers:  # the peer restarted under the same name: forget the old one
            self._forget(name)
        try:
            loaded = self._agent.add_remote_agent(peer["nixl"])
        except Exception as e:
            raise TransferError(
                f"cannot reach {name} over NIXL ({type(e).__name__}: {e}): is it still running?"
            ) from e
        loaded = loaded.decode() if isinstance(loaded, bytes) else loaded
        if loaded != name:
            self._agent.remove_remote_agent(loaded)
            raise TransferError(f"NIXL metadata of {name} names agent {loaded!r}")
        self._peers[name] = peer["incarnation"]
        try:
            self._agent.make_connection(name)  # start the UCX wire-up now
        except Exception as e:
            self._forget(name)
            raise TransferError(f"cannot connect to {name} over NIXL: {type(e).__name__}: {e}") from e

    def _forget(self, name: str) -> None:
        self._peers.pop(name, None)
        try:
            self._agent.remove_remote_agent(name)
        except Exception as e:  # already gone on NIXL's side
            logger.debug("removing NIXL agent %s: %s", name, e)

    def _start(self, peer: dict[str, Any], steps: list[tuple[int, int, int]], local_off: int) -> str:
        if self._agent is None:
            raise TransferError("the NIXL agent is closed")
        self._ensure_peer(peer)
        self._reads[local_off] = _Read(steps)
        return self._advance(peer["name"], local_off)

    def _advance(self, name: str, local_off: int) -> str:
        """Post the read's steps one after the other: "PROC" while one is in flight, "DONE" at the end."""
        read, agent = self._reads.get(local_off), self._agent
        if read is None or agent is None:
            raise TransferError("the NIXL agent was closed during the read")
        try:
            while True:
                if read.handle is None:
                    if not read.steps:
                        del self._reads[local_off]
                        return "DONE"
                    local, remote, n = read.steps.pop(0)
                    read.handle = agent.initialize_xfer(
                        "READ",
                        agent.get_xfer_descs([(local, n, 0)], "DRAM"),
                        agent.get_xfer_descs([(remote, n, 0)], "DRAM"),
                        name,
                    )
                    state = agent.transfer(read.handle)
                else:
                    state = agent.check_xfer_state(read.handle)
                if state == "PROC":
                    return state
                if state != "DONE":
                    raise TransferError(f"NIXL read from {name} failed ({state})")
                handle, read.handle = read.handle, None
                agent.release_xfer_handle(handle)
        except Exception as e:  # e.g. nixlRemoteDisconnectError: the peer is gone
            self._forget(name)
            if isinstance(e, TransferError):
                raise
            raise TransferError(f"NIXL read from {name} failed: {type(e).__name__}: {e}") from e

    def _release(self, local_off: int) -> bool:
        read = self._reads.pop(local_off, None)
        if read is None or read.handle is None:
            return True
        try:
            self._agent.release_xfer_handle(read.handle)
            return True
        except Exception as e:  # still in flight and not cancellable
            logger.warning("cannot release a NIXL transfer: %s", e)
            return False

    def _shutdown(self) -> None:
        for local_off in list(self._reads):
            self._release(local_off)
        for name in list(self._peers):
            self._forget(name)
        try:
            self._agent.deregister_memory(self._reg)
        except Exception as e:
            logger.debug("NIXL deregister: %s", e)
        self._agent = None  # the agent's destructor stops its progress thread

    async def close(self) -> None:
        await self._call(self._shutdown)
        self._ex.shutdown(wait=True)
