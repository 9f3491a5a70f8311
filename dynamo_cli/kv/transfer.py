"""KV transfer: move a request's KV bytes from a prefill worker's memory into a decode worker's.

Each worker process owns one `KvTransferAgent`: a host-memory arena, registered once (with NIXL when
used). The prefill side `stage()`s a region, writes the KV bytes into it and hands the region's
`descriptor` to the decode side, which `fetch()`es it into a region of its own arena: the decode side
pulls, as in vLLM's NixlConnector. Backends:

- ``nixl``: a one-sided NIXL READ over UCX (cross-memory attach between processes on one host, TCP or
  RDMA across hosts). See `dynamo_cli.kv.nixl_backend`.
- ``tcp``: the stager serves its regions on an asyncio socket (on `host`, which peers must be able to
  reach); the reader receives straight into its arena with ``loop.sock_recv_into``.

Every region starts with a small header (agent incarnation, generation, size). A released region's
header is cleared at once, and the reader checks the header *after* the bytes arrived (NIXL) or the
stager refuses to serve it and holds it until a send in flight ends (TCP), so a released or reused
region gives `TransferError`, never somebody else's bytes.
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import itertools
import logging
import secrets
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import numpy as np

from dynamo_cli.kv.region import HEADER, HEADER_STRUCT, TransferError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

T = TypeVar("T")

logger = logging.getLogger(__name__)

_PEER_KEYS = {"tcp": ("host", "port"), "nixl": ("nixl", "base")}  # what each backend reads of a peer


Backend = Literal["auto", "nixl", "tcp"]


class ArenaFull(TransferError):
    """No free region of the asked size in the arena."""


async def when_room(make: Callable[[], T | Awaitable[T]], wait_s: float) -> T:
    """``make()`` (a stage or a fetch), retried while the arena is full for at most ``wait_s``: other
    requests' KV in transit is released within moments."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            result = make()
            return await result if inspect.isawaitable(result) else result
        except ArenaFull:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.005)


@dataclass(frozen=True)
class TransferResult:
    nbytes: int
    seconds: float
    backend: str

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / 1e9 if self.seconds > 0 else float("inf")


class _Region:
    __slots__ = ("generation", "nbytes", "offset", "pins", "released", "size")

    def __init__(self, offset: int, size: int, nbytes: int, generation: int) -> None:
        self.offset, self.size, self.nbytes, self.generation = offset, size, nbytes, generation
        self.pins = 0  # TCP sends in flight: the region is freed only when they end
        self.released = False


class _Arena:
    """A numpy byte array with a first-fit free list of (offset, size), kept sorted and coalesced."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        # numpy asks for transparent huge pages for large arrays (CMA reads run ~2x faster from them
        # than from 4 KiB pages); every page is touched now rather than faulted in by the first
        # transfers, so the arena costs its full size in memory from the start.
        self.array = np.zeros(nbytes, dtype=np.uint8)
        self.array[::4096] = 0
        self.view = self.array.data  # a memoryview of the whole arena
        self._free: list[tuple[int, int]] = [(0, nbytes)]

    @property
    def free_bytes(self) -> int:
        return sum(size for _, size in self._free)

    def alloc(self, size: int) -> int:
        for i, (off, avail) in enumerate(self._free):
            if avail >= size:
                if avail == size:
                    del self._free[i]
                else:
                    self._free[i] = (off + size, avail - size)
                return off
        raise ArenaFull(
            f"no free region of {size} bytes in the {self.nbytes}-byte KV transfer arena "
            f"({self.free_bytes} bytes free in {len(self._free)} pieces)"
        )

    def free(self, off: int, size: int) -> None:
        i = bisect.bisect(self._free, (off, size))
        if i < len(self._free) and self._free[i][0] == off + size:  # merge with the next piece
            size += self._free.pop(i)[1]
        if i > 0 and sum(self._free[i - 1]) == off:  # and with the previous one
            off, size = self._free[i - 1][0], self._free[i - 1][1] + size
            i -= 1
            del self._free[i]
        self._free.insert(i, (off, size))


class Staged:
    """A region of our arena served to peers: write the KV bytes into `view`, send `descriptor`."""

    def __init__(self, agent: KvTransferAgent, region: _Region, descriptor: dict[str, Any]) -> None:
        self._agent, self._region = agent, region
        self.view = agent._arena.view[region.offset + HEADER : region.offset + HEADER + region.nbytes]
        self.descriptor = descriptor

    def release(self) -> None:
        """Stop serving the region (idempotent); a fetch of it from now on fails."""
        self._agent._release(self._region)
        _drop_view(self.view)


class Fetched:
    """A peer's region, copied into a region of our arena."""

    def __init__(self, agent: KvTransferAgent, region: _Region, result: TransferResult) -> None:
        self._agent, self._region = agent, region
        self.view = agent._arena.view[region.offset + HEADER : region.offset + HEADER + region.nbytes]
        self.result = result

    def release(self) -> None:
        """Give the region back to the arena (idempotent)."""
        self._agent._release(self._region)
        _drop_view(self.view)


def _drop_view(view: memoryview) -> None:
    try:  # later use of the view fails loudly instead of reading or writing reused memory
        view.release()
    except BufferError:  # the caller still holds an export (np.frombuffer): leave it be
        pass


class _Backend(Protocol):
    name: str

    def metadata(self) -> dict[str, Any]: ...
    async def read(
        self, peer: dict[str, Any], desc: dict[str, Any], local_off: int, timeout: float
    ) -> None: ...
    def discard_local(self, local_off: int, free: Callable[[], None]) -> asyncio.Future[Any] | None: ...
    async def close(self) -> None: ...


class KvTransferAgent:
    """One per worker process: a host-memory arena registered once (with NIXL when used), from which
    staged regions are served to peers, and into which regions of peers are read."""

    def __init__(self, name: str, arena: _Arena) -> None:
        self.name = name
        self.incarnation = secrets.randbits(62) + 1  # tells a restarted peer of the same name apart
        self._arena = arena
        self._regions: dict[int, _Region] = {}
        self._generations = itertools.count(1)
        self._backend: _Backend
        self.backend: str = ""
        self._closed = False

    @classmethod
    async def create(
        cls,
        name: str,
        *,
        backend: Backend = "auto",
        arena_bytes: int = 256 << 20,
        host: str = "127.0.0.1",
    ) -> KvTransferAgent:
        """ "auto": NIXL (UCX) if it imports and initialises, else TCP. `host` is where the TCP backend
        listens and what it advertises (NIXL/UCX picks its own interfaces)."""
        if backend not in ("auto", "nixl", "tcp"):
            raise ValueError(f"unknown KV transfer backend {backend!r} (auto, nixl or tcp)")
        if arena_bytes < 2 * HEADER:
            raise ValueError(f"arena_bytes={arena_bytes} is too small")
        arena = await asyncio.get_running_loop().run_in_executor(None, _Arena, arena_bytes)
        self = cls(name, arena)
        if backend in ("auto", "nixl"):
            try:
                from dynamo_cli.kv.nixl_backend import NixlBackend

                self._backend = await NixlBackend.create(name, self._arena.array)
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
                if backend == "nixl":
                    raise TransferError(
                        f"NIXL is not usable ({reason}); install it with scripts/install.sh"
                    ) from e
                logger.warning("KV transfer over TCP: NIXL is not usable (%s)", reason)
        if not hasattr(self, "_backend"):
            from dynamo_cli.kv.tcp_backend import TcpBackend

            tcp = TcpBackend(self, host)
            await tcp.start()
            self._backend = tcp
        self.backend = self._backend.name
        logger.info("KV transfer agent %s: %s, arena %d MiB", name, self.backend, arena_bytes >> 20)
        return self

    @property
    def arena_bytes(self) -> int:
        return self._arena.nbytes

    @property
    def free_bytes(self) -> int:
        return self._arena.free_bytes

    def metadata(self) -> dict[str, Any]:
        """Everything a peer needs to read from us (bytes/str/int only: msgpack-able)."""
        return {
            "name": self.name,
            "backend": self.backend,
            "incarnation": self.incarnation,
            "arena_bytes": self._arena.nbytes,
            **self._backend.metadata(),
        }

    def stage(self, nbytes: int) -> Staged:
        """A region of `nbytes` to serve to peers; ArenaFull if there is no room."""
        region = self._new_region(nbytes)
        HEADER_STRUCT.pack_into(self._arena.view, region.offset, self.incarnation, region.generation, nbytes)
        desc = {
            "agent": self.name,
            "incarnation": self.incarnation,
            "offset": region.offset,
            "nbytes": nbytes,
            "generation": region.generation,
        }
        return Staged(self, region, desc)

    async def fetch(
        self, peer: dict[str, Any], descriptor: dict[str, Any], *, timeout: float = 10.0
    ) -> Fetched:
        """Read a peer's staged region into a region of our arena; TransferError on any failure."""
        self._check(peer, descriptor)
        region = self._new_region(descriptor["nbytes"])
        try:
            t0 = time.perf_counter()
            await self._backend.read(peer, descriptor, region.offset, timeout)
        except BaseException as exc:
            # The backend frees the region once nothing can write into it any more; when it has to
            # wait for that, so does the caller, unless it is cancelling us.
            del self._regions[region.offset]
            pending = self._backend.discard_local(
                region.offset, lambda: self._arena.free(region.offset, region.size)
            )
            if pending is not None and not isinstance(exc, asyncio.CancelledError):
                await asyncio.wait([pending], timeout=timeout)
            raise
        result = TransferResult(region.nbytes, time.perf_counter() - t0, self.backend)
        return Fetched(self, region, result)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if hasattr(self, "_backend"):
            await self._backend.close()

    # -- internals ---------------------------------------------------------------------------------
    def _new_region(self, nbytes: int) -> _Region:
        if self._closed:
            raise TransferError(f"KV transfer agent {self.name} is closed")
        if not isinstance(nbytes, int) or nbytes <= 0:
            raise ValueError(f"a region needs a positive number of bytes, not {nbytes!r}")
        size = HEADER + -(-nbytes // HEADER) * HEADER
        region = _Region(self._arena.alloc(size), size, nbytes, next(self._generations))
        self._regions[region.offset] = region
        return region

    def _release(self, region: _Region) -> None:
        if region.released:
            return
        region.released = True
        HEADER_STRUCT.pack_into(self._arena.view, region.offset, 0, 0, 0)  # readers now see it is gone
        if region.pins == 0:
            self._free(region)

    def _free(self, region: _Region) -> None:
        if self._regions.get(region.offset) is region:
            del self._regions[region.offset]
            self._arena.free(region.offset, region.size)

    def _pin(self, incarnation: int, offset: int, nbytes: int, generation: int) -> _Region | None:
        r = self._regions.get(offset)
        if incarnation != self.incarnation or r is None or r.released:
            return None
        if r.generation != generation or r.nbytes != nbytes:
            return None
        r.pins += 1
        return r

    def _unpin(self, region: _Region) -> None:
        region.pins -= 1
        if region.pins == 0 and region.released:
            self._free(region)

    def _check(self, peer: dict[str, Any], desc: dict[str, Any]) -> None:
        try:
            if peer["backend"] != self.backend:
                raise TransferError(
                    f"peer {peer['name']} moves KV bytes with {peer['backend']}, this worker with "
                    f"{self.backend}: install NIXL everywhere (scripts/install.sh) or nowhere"
                )
            if desc["agent"] != peer["name"] or desc["incarnation"] != peer["incarnation"]:
                raise TransferError(
                    f"descriptor of {desc['agent']} (incarnation {desc['incarnation']}) does not belong "
                    f"to peer {peer['name']} (incarnation {peer['incarnation']}): did the peer restart?"
                )
            for key, where in [*((k, peer) for k in _PEER_KEYS[self.backend]), ("generation", desc)]:
                if key not in where:
                    raise KeyError(key)
            end = desc["offset"] + HEADER + desc["nbytes"]
            if desc["offset"] < 0 or desc["nbytes"] <= 0 or end > peer["arena_bytes"]:
                raise TransferError(f"descriptor {desc} lies outside the peer's arena")
        except KeyError as e:
            raise TransferError(f"malformed KV transfer metadata or descriptor: missing {e}") from e


_U64 = 0xFFFF_FFFF_FFFF_FFFF


def _slots(view: memoryview, n_blocks: int, bytes_per_block: int) -> np.ndarray | None:
    """The first 8 bytes of each block as little-endian u64s (a strided numpy view), when aligned."""
    if bytes_per_block < 8:
        raise ValueError(f"bytes_per_block must be at least 8, not {bytes_per_block}")
    if n_blocks * bytes_per_block > view.nbytes:
        raise ValueError(f"{n_blocks} blocks of {bytes_per_block} bytes do not fit in {view.nbytes} bytes")
    if bytes_per_block % 8 or n_blocks == 0:
        return None
    words = np.frombuffer(view, dtype="<u8", count=n_blocks * bytes_per_block // 8)
    return words[:: bytes_per_block // 8]


def stamp_blocks(view: memoryview, block_hashes: Sequence[int], bytes_per_block: int) -> None:
    """Write each block's hash (little-endian u64) at the start of that block's bytes."""
    slots = _slots(view, len(block_hashes), bytes_per_block)
    if slots is not None:
        slots[:] = np.fromiter((h & _U64 for h in block_hashes), dtype=np.uint64, count=len(block_hashes))
        return
    for i, h in enumerate(block_hashes):
        struct.pack_into("<Q", view, i * bytes_per_block, h & _U64)


def check_stamps(view: memoryview, block_hashes: Sequence[int], bytes_per_block: int) -> bool:
    """True if every block starts with its hash, as `stamp_blocks` wrote it."""
    try:
        slots = _slots(view, len(block_hashes), bytes_per_block)
    except ValueError:
        return False
    want = [h & _U64 for h in block_hashes]
    if slots is not None:
        return bool(np.array_equal(slots, np.array(want, dtype=np.uint64)))
    return all(struct.unpack_from("<Q", view, i * bytes_per_block)[0] == w for i, w in enumerate(want))
