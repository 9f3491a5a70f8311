"""The TCP backend of KV transfer: the stager serves its arena's regions on an asyncio socket and the
reader receives straight into its own arena with ``loop.sock_recv_into`` (asyncio streams are too slow
for bulk bytes). Used when NIXL is not installed or not usable."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import TYPE_CHECKING, Any

from dynamo_cli.kv.region import HEADER, TransferError

if TYPE_CHECKING:
    from collections.abc import Callable

    from dynamo_cli.kv.transfer import KvTransferAgent

logger = logging.getLogger(__name__)

_REQ = struct.Struct("<4sQQQQ")  # magic, incarnation, offset, nbytes, generation
_RESP = struct.Struct("<IQ")  # status, nbytes that follow
_MAGIC = b"KVT1"
_OK, _GONE = 0, 1
_POOL_IDLE = 4  # idle TCP connections kept per peer


async def _recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, view: memoryview) -> None:
    got, n = 0, len(view)
    while got < n:
        k = await loop.sock_recv_into(sock, view[got:])
        if k == 0:
            raise ConnectionResetError("peer closed the connection")
        got += k


class TcpBackend:
    name = "tcp"

    def __init__(self, agent: KvTransferAgent, host: str) -> None:
        self._agent, self._host = agent, host
        self._listener: socket.socket | None = None
        self._port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool: dict[tuple[str, int], list[socket.socket]] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        info = await loop.getaddrinfo(self._host, 0, type=socket.SOCK_STREAM)
        family, _, _, _, addr = info[0]
        lsock = socket.socket(family, socket.SOCK_STREAM)
        try:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind(addr)
            lsock.listen(128)
            lsock.setblocking(False)
        except OSError as e:
            lsock.close()
            raise TransferError(f"KV transfer cannot listen on {self._host}: {e}") from e
        self._listener, self._port = lsock, lsock.getsockname()[1]
        self._spawn(self._accept(lsock), f"kv-tcp-accept-{self._agent.name}")

    def metadata(self) -> dict[str, Any]:
        return {"host": self._host, "port": self._port}

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(lsock)
            except OSError as e:  # e.g. out of file descriptors: keep serving once it passes
                logger.warning("KV transfer agent %s cannot accept: %s", self._agent.name, e)
                await asyncio.sleep(0.1)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setblocking(False)
            self._spawn(self._serve(conn), f"kv-tcp-serve-{addr}")

    async def _serve(self, conn: socket.socket) -> None:
        loop, agent = asyncio.get_running_loop(), self._agent
        req = bytearray(_REQ.size)
        try:
            while True:
                await _recv_exact(loop, conn, memoryview(req))
                magic, incarnation, off, n, gen = _REQ.unpack(req)
                if magic != _MAGIC:
                    return
                region = agent._pin(incarnation, off, n, gen)
                if region is None:
                    await loop.sock_sendall(conn, _RESP.pack(_GONE, 0))
                    continue
                try:
                    await loop.sock_sendall(conn, _RESP.pack(_OK, n))
                    await loop.sock_sendall(conn, agent._arena.view[off + HEADER : off + HEADER + n])
                finally:
                    agent._unpin(region)
        except OSError:  # the reader went away: nothing to tell anyone
            pass
        finally:
            conn.close()

    async def read(self, peer: dict[str, Any], desc: dict[str, Any], local_off: int, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._read(peer, desc, local_off), timeout)
        except asyncio.TimeoutError:
            raise TransferError(f"fetch from {peer['name']} timed out after {timeout} s") from None
        except OSError as e:
            raise TransferError(
                f"fetch from {peer['name']} at {peer['host']}:{peer['port']} failed: {e}"
            ) from e

    async def _read(self, peer: dict[str, Any], desc: dict[str, Any], local_off: int) -> None:
        loop = asyncio.get_running_loop()
        key = (peer["host"], peer["port"])
        idle = self._pool.get(key)
        sock = idle.pop() if idle else await self._connect(loop, *key)
        ok = False
        try:
            n = desc["nbytes"]
            req = _REQ.pack(_MAGIC, desc["incarnation"], desc["offset"], n, desc["generation"])
            await loop.sock_sendall(sock, req)
            resp = bytearray(_RESP.size)
            await _recv_exact(loop, sock, memoryview(resp))
            status, m = _RESP.unpack(resp)
            if status != _OK or m != n:
                ok = True  # the connection is still in step: keep it
                raise TransferError(
                    f"region {desc['offset']} of {peer['name']} was released or reused before the read"
                )
            start = local_off + HEADER
            await _recv_exact(loop, sock, self._agent._arena.view[start : start + n])
            ok = True
        finally:
            pool = self._pool.setdefault(key, [])
            if ok and len(pool) < _POOL_IDLE and not self._agent._closed:
                pool.append(sock)
            else:
                sock.close()

    @staticmethod
    async def _connect(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
        family, _, _, _, addr = (await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            await loop.sock_connect(sock, addr)
        except BaseException:
            sock.close()
            raise
        return sock

    def discard_local(self, local_off: int, free: Callable[[], None]) -> None:
        free()  # the socket is closed or back in step: nothing writes there any more

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for socks in self._pool.values():
            for s in socks:
                s.close()
        self._pool.clear()


# -- checkable simulated KV bytes ----------------------------------------------------------------------
