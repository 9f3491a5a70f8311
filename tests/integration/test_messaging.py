"""The request plane on a real NATS server: streams, errors, cancellation, timeouts, draining."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest

from dynamo_cli.errors import NoRespondersError, RemoteError, RequestTimeoutError
from dynamo_cli.transport.messaging import NatsRequestPlane, RequestContext

pytestmark = pytest.mark.integration


@pytest.fixture
async def planes(nats_url: str) -> AsyncIterator[tuple[NatsRequestPlane, NatsRequestPlane]]:
    server = await NatsRequestPlane.connect(nats_url, name="server", keepalive_s=0.3)
    client = await NatsRequestPlane.connect(nats_url, name="client")
    yield server, client
    await client.close()
    await server.close()


async def _collect(stream) -> list[bytes]:
    return [c async for c in stream]


async def test_request_streams_chunks_in_order(planes, namespace: str) -> None:
    server, client = planes

    async def handler(data: bytes, ctx: RequestContext) -> AsyncIterator[bytes]:
        for i in range(int(data)):
            yield f"chunk-{i}".encode()

    await server.serve(f"{namespace}.echo", handler)
    stream = await client.request(f"{namespace}.echo", b"5", accept_timeout=2, idle_timeout=2)
    assert await _collect(stream) == [f"chunk-{i}".encode() for i in range(5)]
    # Many concurrent requests share the client's one inbox without mixing.
    results = await asyncio.gather(
        *[
            _collect(
                await client.request(f"{namespace}.echo", str(n).encode(), accept_timeout=2, idle_timeout=2)
            )
            for n in range(1, 40)
        ]
    )
    assert [len(r) for r in results] == list(range(1, 40))


async def test_handler_error_reaches_the_caller(planes, namespace: str) -> None:
    server, client = planes

    async def handler(data: bytes, ctx: RequestContext) -> AsyncIterator[bytes]:
        yield b"partial"
        raise RemoteError("model exploded", "engine")

    await server.serve(f"{namespace}.bad", handler)
    stream = await client.request(f"{namespace}.bad", b"", accept_timeout=2, idle_timeout=2)
    got = []
    with pytest.raises(RemoteError) as err:
        async for chunk in stream:
            got.append(chunk)
    assert got == [b"partial"]
    assert err.value.code == "engine" and "model exploded" in str(err.value)


async def test_cancel_stops_the_remote_handler(planes, namespace: str) -> None:
    server, client = planes
    cancelled = asyncio.Event()

    async def handler(data: bytes, ctx: RequestContext) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x"
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    endpoint = await server.serve(f"{namespace}.forever", handler)
    stream = await client.request(f"{namespace}.forever", b"", accept_timeout=2, idle_timeout=2)
    n = 0
    async for _ in stream:
        n += 1
        if n == 3:
            break
    await stream.cancel()
    await asyncio.wait_for(cancelled.wait(), 2)
    await asyncio.sleep(0.05)
    assert endpoint.in_flight == 0


async def test_no_responders_fails_fast(planes, namespace: str) -> None:
    _, client = planes
    stream = await client.request(f"{namespace}.nobody", b"", accept_timeout=5, idle_timeout=5)
    # NATS said nobody listens: waiting out the accept timeout would raise RequestTimeoutError instead.
    with pytest.raises(NoRespondersError):
        await _collect(stream)


async def test_unanswered_request_times_out(planes, namespace: str) -> None:
    server, client = planes

    async def mute(msg) -> None:  # listens, never answers
        return None

    sub = await server.nc.subscribe(f"{namespace}.mute", cb=mute)
    await server.nc.flush()
    t0 = time.monotonic()
    stream = await client.request(f"{namespace}.mute", b"", accept_timeout=0.5, idle_timeout=5)
    with pytest.raises(RequestTimeoutError, match="did not accept"):  # the accept timeout's error
        await _collect(stream)
    assert time.monotonic() - t0 >= 0.4  # and it was waited out
    await sub.unsubscribe()


async def test_keepalives_hold_a_quiet_stream_open(planes, namespace: str) -> None:
    server, client = planes

    async def slow(data: bytes, ctx: RequestContext) -> AsyncIterator[bytes]:
        await asyncio.sleep(1.5)  # longer than the idle timeout; keepalives every 0.3 s
        yield b"late"

    await server.serve(f"{namespace}.slow", slow)
    stream = await client.request(f"{namespace}.slow", b"", accept_timeout=2, idle_timeout=0.8)
    assert await _collect(stream) == [b"late"]


_SERVE_AND_DIE = """
import asyncio, sys
from dynamo_cli.transport.messaging import NatsRequestPlane
async def main():
    plane = await NatsRequestPlane.connect(sys.argv[1], keepalive_s=0.2)
    async def handler(data, ctx):
        while True:
            yield b"tick"
            await asyncio.sleep(0.05)
    await plane.serve(sys.argv[2], handler)
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def test_dead_server_mid_stream_is_detected(nats_url: str, namespace: str) -> None:
    subject = f"{namespace}.mortal"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE_AND_DIE, nats_url, subject], stdout=subprocess.PIPE, text=True
    )
    client = await NatsRequestPlane.connect(nats_url, name="client")
    try:
        assert (await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)).strip() == "ready"  # type: ignore[union-attr]
        stream = await client.request(subject, b"", accept_timeout=2, idle_timeout=1.0)
        ticks = 0
        with pytest.raises(RequestTimeoutError):  # the idle timeout, well before the test's own
            async for _ in stream:
                ticks += 1
                if ticks == 5:
                    os.kill(proc.pid, signal.SIGKILL)
        assert ticks >= 5
        # A new request to the dead instance fails at once.
        with pytest.raises(NoRespondersError):
            await _collect(await client.request(subject, b"", accept_timeout=2, idle_timeout=1))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        await client.close()


async def test_stop_accepting_refuses_new_work_and_drain_waits(planes, namespace: str) -> None:
    server, client = planes
    release = asyncio.Event()

    async def handler(data: bytes, ctx: RequestContext) -> AsyncIterator[bytes]:
        await release.wait()
        yield b"done"

    endpoint = await server.serve(f"{namespace}.drain", handler)
    inflight = await client.request(f"{namespace}.drain", b"", accept_timeout=2, idle_timeout=5)
    reader = asyncio.create_task(_collect(inflight))
    await asyncio.sleep(0.1)
    await endpoint.stop_accepting()
    refused = await client.request(f"{namespace}.drain", b"", accept_timeout=2, idle_timeout=5)
    with pytest.raises(RemoteError) as err:
        await _collect(refused)
    assert err.value.code == "unavailable"
    assert not await endpoint.drain(0.2)  # still busy
    release.set()
    assert await endpoint.drain(2)
    assert await reader == [b"done"]


async def test_cancel_while_waiting_for_the_next_chunk_still_reaches_the_handler(
    planes, namespace: str
) -> None:
    """The consumer's task is cancelled while it waits inside the iteration (an HTTP client hung up):
    the iteration ends locally, yet the remote handler must still be told to stop."""
    server, client = planes
    cancelled = asyncio.Event()

    async def slow_stream(data: bytes, ctx: RequestContext) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x"
                await asyncio.sleep(0.3)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    endpoint = await server.serve(f"{namespace}.slowstream", slow_stream)
    stream = await client.request(f"{namespace}.slowstream", b"", accept_timeout=2, idle_timeout=5)
    first = asyncio.Event()

    async def consume() -> None:
        try:
            async for _ in stream:
                first.set()
        finally:
            await stream.cancel()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 2)
    await asyncio.sleep(0.05)  # now it waits for the next chunk
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(cancelled.wait(), 2)
    await asyncio.sleep(0.05)
    assert endpoint.in_flight == 0
