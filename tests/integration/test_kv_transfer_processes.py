"""KV transfer between two processes, as between a prefill and a decode worker, over NIXL and TCP.

NIXL is installed by scripts/install.sh: these tests fail, not skip, without it. (The file is not
called test_kv_transfer.py: tests/unit has one, and test folders are not packages.)
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing as mp
import time
from collections.abc import AsyncIterator, Iterator
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pytest

from dynamo_cli.kv.transfer import KvTransferAgent, TransferError, check_stamps, stamp_blocks

pytestmark = pytest.mark.integration

BPB = 16 << 10  # bytes per simulated KV block
BACKENDS = ["nixl", "tcp"]


def _hashes(seed: int, nbytes: int) -> list[int]:
    return [(seed << 24) + i for i in range(nbytes // BPB)]


def _stager(conn: Connection, backend: str) -> None:
    """The prefill side, in a child process: stages regions on request until told to stop."""

    async def serve() -> None:
        try:
            agent = await KvTransferAgent.create("prefill-child", backend=backend, arena_bytes=64 << 20)
        except TransferError as e:
            conn.send(("error", str(e)))
            return
        conn.send(("ready", agent.metadata()))
        staged: dict[int, Any] = {}
        loop = asyncio.get_running_loop()
        while True:
            cmd, arg = await loop.run_in_executor(None, conn.recv)
            if cmd == "stage":  # arg: [(seed, nbytes)] -> [(descriptor, sha256)]
                out = []
                for seed, nbytes in arg:
                    s = agent.stage(nbytes)
                    rng = np.random.default_rng(seed)
                    np.frombuffer(s.view, dtype=np.uint8)[:] = rng.integers(0, 256, nbytes, dtype=np.uint8)
                    stamp_blocks(s.view, _hashes(seed, nbytes), BPB)
                    staged[seed] = s
                    out.append((s.descriptor, hashlib.sha256(s.view).hexdigest()))
                conn.send(out)
            elif cmd == "release":
                staged.pop(arg).release()
                conn.send("released")
            else:
                break
        await agent.close()

    asyncio.run(serve())


class Stager:
    def __init__(self, backend: str) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_stager, args=(child, backend), daemon=True)
        self.proc.start()
        if not self.conn.poll(60):
            self.kill()
            pytest.fail(f"the {backend} stager process did not start")
        status, payload = self.conn.recv()
        if status == "error":
            self.kill()
            pytest.fail(f"{payload} (NIXL is part of the default install: run scripts/install.sh)")
        self.metadata: dict[str, Any] = payload

    def ask(self, cmd: str, arg: Any = None) -> Any:
        self.conn.send((cmd, arg))
        if not self.conn.poll(30):
            pytest.fail(f"the stager did not answer {cmd!r}")
        return self.conn.recv()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(10)

    def stop(self) -> None:
        if self.proc.is_alive():
            self.conn.send(("stop", None))
            self.proc.join(10)
        if self.proc.is_alive():
            self.kill()


@pytest.fixture(scope="module", params=BACKENDS)
def stager(request: pytest.FixtureRequest) -> Iterator[Stager]:
    s = Stager(request.param)
    yield s
    s.stop()


@pytest.fixture
async def decode(stager: Stager) -> AsyncIterator[KvTransferAgent]:
    agent = await KvTransferAgent.create("decode", backend=stager.metadata["backend"], arena_bytes=64 << 20)
    yield agent
    await agent.close()


async def fetch_and_check(
    agent: KvTransferAgent, stager: Stager, seed: int, desc: dict[str, Any], digest: str
) -> None:
    fetched = await agent.fetch(stager.metadata, desc)
    assert fetched.result.backend == stager.metadata["backend"]
    assert check_stamps(fetched.view, _hashes(seed, desc["nbytes"]), BPB)
    assert hashlib.sha256(fetched.view).hexdigest() == digest
    fetched.release()


async def test_bytes_arrive_intact(stager: Stager, decode: KvTransferAgent) -> None:
    sizes = [(1, 4 * BPB + 13), (2, 1 << 20), (3, 16 << 20)]
    for (seed, _), (desc, digest) in zip(sizes, stager.ask("stage", sizes), strict=True):
        for _ in range(2):  # the first fetch sets up the connection, the second reuses it
            await fetch_and_check(decode, stager, seed, desc, digest)
    assert decode.free_bytes == decode.arena_bytes


async def test_concurrent_fetches(stager: Stager, decode: KvTransferAgent) -> None:
    regions = [(100 + i, (i + 1) * 64 << 10) for i in range(16)]
    staged = stager.ask("stage", regions)
    await asyncio.gather(
        *(
            fetch_and_check(decode, stager, seed, d, h)
            for (seed, _), (d, h) in zip(regions, staged, strict=True)
        )
    )
    assert decode.free_bytes == decode.arena_bytes


async def test_region_released_by_the_peer_is_refused(stager: Stager, decode: KvTransferAgent) -> None:
    ((desc, digest),) = stager.ask("stage", [(200, 1 << 20)])
    await fetch_and_check(decode, stager, 200, desc, digest)
    assert stager.ask("release", 200) == "released"
    with pytest.raises(TransferError, match="released"):
        await decode.fetch(stager.metadata, desc)
    ((again, digest),) = stager.ask("stage", [(201, 1 << 20)])  # same place, new generation
    assert again["offset"] == desc["offset"]
    with pytest.raises(TransferError, match="released"):
        await decode.fetch(stager.metadata, desc)
    await fetch_and_check(decode, stager, 201, again, digest)
    assert decode.free_bytes == decode.arena_bytes


@pytest.mark.parametrize("backend", BACKENDS)
async def test_killed_peer_fails_fast(backend: str) -> None:
    stager = Stager(backend)
    try:
        agent = await KvTransferAgent.create("decode", backend=backend, arena_bytes=8 << 20)
        ((desc, digest),) = stager.ask("stage", [(300, 1 << 20)])
        await fetch_and_check(agent, stager, 300, desc, digest)
        stager.kill()
        for _ in range(2):
            with pytest.raises(TransferError) as err:
                await agent.fetch(stager.metadata, desc, timeout=5)
            # The dead peer was seen as gone (disconnect, refusal), not waited out until the 5 s timeout:
            assert "timed out" not in str(err.value), err.value
        assert agent.free_bytes == agent.arena_bytes
        await agent.close()
    finally:
        stager.stop()


async def test_idle_nixl_agent_does_not_spin() -> None:
    """NIXL's own default (progress-thread delay 0) keeps one core busy; ours sleeps between events."""
    agent = await KvTransferAgent.create("idle", backend="nixl", arena_bytes=1 << 20)
    try:
        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(0.5)
        busy = (time.process_time() - cpu0) / (time.monotonic() - t0)
        assert busy < 0.2, f"the process used {busy:.0%} of a core while idle"
    finally:
        await agent.close()
