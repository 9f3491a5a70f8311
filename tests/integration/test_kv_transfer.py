"""KV transfer in one process: the arena's allocator, block stamps, and the TCP backend between two
agents on loopback (released regions, vanished and silent peers, restarts, bad metadata)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import msgpack
import numpy as np
import pytest

from dynamo_cli.kv import nixl_backend
from dynamo_cli.kv.transfer import (
    HEADER,
    ArenaFull,
    KvTransferAgent,
    TransferError,
    check_stamps,
    stamp_blocks,
)

pytestmark = pytest.mark.integration

BPB = 4096  # bytes per simulated KV block


@pytest.fixture
async def pair() -> AsyncIterator[tuple[KvTransferAgent, KvTransferAgent]]:
    a = await KvTransferAgent.create("prefill-0", backend="tcp", arena_bytes=8 << 20)
    b = await KvTransferAgent.create("decode-0", backend="tcp", arena_bytes=8 << 20)
    yield a, b
    await a.close()
    await b.close()


def fill(view: memoryview, seed: int) -> list[int]:
    """Random bytes with each block stamped by its hash; returns the hashes."""
    np.frombuffer(view, dtype=np.uint8)[:] = np.random.default_rng(seed).integers(
        0, 256, len(view), dtype=np.uint8
    )
    hashes = [(seed << 32) + i for i in range(len(view) // BPB)]
    stamp_blocks(view, hashes, BPB)
    return hashes


async def test_arena_first_fit_frees_and_coalesces() -> None:
    agent = await KvTransferAgent.create("a", backend="tcp", arena_bytes=4096)
    try:
        regions = [agent.stage(1024 - HEADER) for _ in range(4)]  # 1024 bytes each with the header
        assert agent.free_bytes == 0
        with pytest.raises(ArenaFull):
            agent.stage(1)
        assert issubclass(ArenaFull, TransferError)
        regions[1].release()
        regions[2].release()
        regions[2].release()  # idempotent
        big = agent.stage(2048 - HEADER)  # only fits if the two freed neighbours were merged
        assert big.descriptor["offset"] == regions[1].descriptor["offset"]
        with pytest.raises(ArenaFull):
            agent.stage(1)
        for r in (regions[0], big, regions[3]):
            r.release()
        assert agent.free_bytes == 4096
        assert agent.stage(4096 - HEADER).descriptor["offset"] == 0
        with pytest.raises(ValueError):
            agent.stage(0)
    finally:
        await agent.close()


def test_stamps_roundtrip_and_detect_damage() -> None:
    buf = bytearray(8 * BPB)
    hashes = [0xDEADBEEF_00000000 + i for i in range(8)]
    stamp_blocks(memoryview(buf), hashes, BPB)
    assert int.from_bytes(buf[BPB : BPB + 8], "little") == hashes[1]
    assert check_stamps(memoryview(buf), hashes, BPB)
    buf[3 * BPB] ^= 1
    assert not check_stamps(memoryview(buf), hashes, BPB)
    assert not check_stamps(memoryview(buf), [*hashes, 1], BPB)  # more blocks than bytes

    odd = bytearray(3 * 100)  # block size not a multiple of 8, negative hash (masked to u64)
    stamp_blocks(memoryview(odd), [-1, 2, 3], 100)
    assert odd[:8] == b"\xff" * 8
    assert check_stamps(memoryview(odd), [-1, 2, 3], 100)
    assert not check_stamps(memoryview(odd), [-1, 2, 4], 100)
    with pytest.raises(ValueError):
        stamp_blocks(memoryview(odd), [1, 2, 3, 4], 100)


async def test_tcp_fetch_copies_the_bytes(pair: tuple[KvTransferAgent, KvTransferAgent]) -> None:
    a, b = pair
    assert (a.backend, b.backend) == ("tcp", "tcp")
    staged = a.stage(64 * BPB + 100)  # not a whole number of blocks
    hashes = fill(staged.view, 1)
    before = b.free_bytes
    # Metadata and descriptor go through etcd and NATS as msgpack in the real system.
    peer = msgpack.unpackb(msgpack.packb(a.metadata()))
    desc = msgpack.unpackb(msgpack.packb(staged.descriptor))
    fetched = await b.fetch(peer, desc)
    assert bytes(fetched.view) == bytes(staged.view)
    assert check_stamps(fetched.view, hashes, BPB)
    assert (fetched.result.nbytes, fetched.result.backend) == (64 * BPB + 100, "tcp")
    assert fetched.result.seconds > 0
    assert b.free_bytes < before
    fetched.release()
    assert b.free_bytes == before
    with pytest.raises(ValueError):
        fetched.view[0]  # a released region's view cannot be used by mistake


async def test_concurrent_fetches(pair: tuple[KvTransferAgent, KvTransferAgent]) -> None:
    a, b = pair
    staged = [a.stage(32 * BPB) for _ in range(12)]
    hashes = [fill(s.view, i) for i, s in enumerate(staged)]
    got = await asyncio.gather(*(b.fetch(a.metadata(), s.descriptor) for s in staged))
    assert all(check_stamps(f.view, h, BPB) for f, h in zip(got, hashes, strict=True))
    assert all(bytes(f.view) == bytes(s.view) for f, s in zip(got, staged, strict=True))


async def test_released_or_reused_region_is_refused(pair: tuple[KvTransferAgent, KvTransferAgent]) -> None:
    a, b = pair
    staged = a.stage(16 * BPB)
    old = staged.descriptor
    staged.release()
    with pytest.raises(TransferError, match="released"):
        await b.fetch(a.metadata(), old)
    reused = a.stage(16 * BPB)  # same place, new generation
    assert reused.descriptor["offset"] == old["offset"]
    hashes = fill(reused.view, 7)
    with pytest.raises(TransferError, match="released"):
        await b.fetch(a.metadata(), old)
    fetched = await b.fetch(a.metadata(), reused.descriptor)  # the connection is still usable
    assert check_stamps(fetched.view, hashes, BPB)
    assert b.free_bytes == b.arena_bytes - (HEADER + 16 * BPB)  # failed fetches gave their room back


async def test_region_released_while_being_sent_is_freed_after(
    pair: tuple[KvTransferAgent, KvTransferAgent],
) -> None:
    a, _ = pair
    staged = a.stage(BPB)
    d = staged.descriptor
    region = a._pin(d["incarnation"], d["offset"], d["nbytes"], d["generation"])  # a send in flight
    assert region is not None
    free = a.free_bytes
    staged.release()
    assert a.free_bytes == free  # not reusable while the bytes are on their way
    assert a._pin(d["incarnation"], d["offset"], d["nbytes"], d["generation"]) is None
    a._unpin(region)
    assert a.free_bytes == a.arena_bytes


async def test_vanished_peer_fails_fast() -> None:
    a = await KvTransferAgent.create("prefill-0", backend="tcp", arena_bytes=1 << 20)
    b = await KvTransferAgent.create("decode-0", backend="tcp", arena_bytes=1 << 20)
    try:
        staged = a.stage(BPB)
        peer = a.metadata()
        first = await b.fetch(peer, staged.descriptor)  # leaves a pooled connection behind
        first.release()
        await a.close()
        for _ in range(2):  # the pooled connection, then a fresh connect
            with pytest.raises(TransferError, match="prefill-0") as err:
                await b.fetch(peer, staged.descriptor, timeout=5)
            # The closed connection or the refused connect ended it, not the 5 s timeout:
            assert isinstance(err.value.__cause__, ConnectionError), repr(err.value.__cause__)
            assert "timed out" not in str(err.value)
        assert b.free_bytes == b.arena_bytes
    finally:
        await b.close()


async def test_silent_peer_times_out(pair: tuple[KvTransferAgent, KvTransferAgent]) -> None:
    a, b = pair
    staged = a.stage(BPB)
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        peer = {**a.metadata(), "port": silent.getsockname()[1]}
        t0 = time.monotonic()
        with pytest.raises(TransferError, match=r"timed out after 0\.3 s"):  # its own timeout
            await b.fetch(peer, staged.descriptor, timeout=0.3)
        assert time.monotonic() - t0 >= 0.3  # waited out
        assert b.free_bytes == b.arena_bytes
        task = asyncio.create_task(b.fetch(peer, staged.descriptor, timeout=5))
        await asyncio.sleep(0.05)
        assert b.free_bytes < b.arena_bytes
        task.cancel()  # a cancelled fetch gives its region back too
        with pytest.raises(asyncio.CancelledError):
            await task
        assert b.free_bytes == b.arena_bytes


async def test_restarted_peer_and_bad_metadata(pair: tuple[KvTransferAgent, KvTransferAgent]) -> None:
    a, b = pair
    staged = a.stage(BPB)
    restarted = await KvTransferAgent.create("prefill-0", backend="tcp", arena_bytes=1 << 20)
    try:
        with pytest.raises(TransferError, match="restart"):
            await b.fetch(restarted.metadata(), staged.descriptor)
        new = restarted.stage(BPB)
        new.view[:5] = b"hello"
        fetched = await b.fetch(restarted.metadata(), new.descriptor)
        assert bytes(fetched.view[:5]) == b"hello"
        fetched.release()
    finally:
        await restarted.close()
    with pytest.raises(TransferError, match="outside"):
        await b.fetch(a.metadata(), {**staged.descriptor, "nbytes": a.arena_bytes})
    with pytest.raises(TransferError, match="missing"):
        await b.fetch(a.metadata(), {k: v for k, v in staged.descriptor.items() if k != "generation"})
    with pytest.raises(TransferError, match="nixl"):
        await b.fetch({**a.metadata(), "backend": "nixl"}, staged.descriptor)
    with pytest.raises(ArenaFull):
        await b.fetch({**a.metadata(), "arena_bytes": 1 << 30}, {**staged.descriptor, "nbytes": 8 << 20})
    assert b.free_bytes == b.arena_bytes


async def test_nixl_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise ImportError("No module named 'nixl'")

    monkeypatch.setattr(nixl_backend, "import_nixl_api", missing)
    with pytest.raises(TransferError, match=r"scripts/install\.sh"):
        await KvTransferAgent.create("a", backend="nixl", arena_bytes=1 << 20)
    agent = await KvTransferAgent.create("a", backend="auto", arena_bytes=1 << 20)
    assert agent.backend == "tcp"
    await agent.close()
    with pytest.raises(TransferError, match="closed"):
        agent.stage(1)
