"""A lean HTTP/1.1 load generator for streaming OpenAI endpoints.

Python HTTP clients spend ~1 ms of CPU per streamed request, as much as the server under test; on a
2-core machine the client would be the bottleneck. This one speaks just enough HTTP/1.1 over
keep-alive connections: it writes a prepared request and reads chunked SSE frames without parsing
JSON, noting the time of the first body chunk (the server sends it with the first token) and of each
later one.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse


@dataclass
class Sample:
    start: float
    ttft: float
    end: float
    chunks: int
    status: int


@dataclass
class Result:
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    started: float = 0.0
    finished: float = 0.0
    other: list[Sample] = field(default_factory=list)  # answers other than 200 (each counted in errors too)
    late: float = 0.0  # open_loop: the most an arrival was sent after its time (s)

    @property
    def wall(self) -> float:
        return self.finished - self.started


def _request_bytes(host: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode() + body


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> Sample:
    t0 = time.perf_counter()
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = head.lower()
    ttft = 0.0
    chunks = 0
    if b"transfer-encoding: chunked" in headers:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            await reader.readexactly(size + 2)
            if chunks == 0:
                ttft = time.perf_counter() - t0
            chunks += 1
    else:
        n = int(headers.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(n)
        ttft = time.perf_counter() - t0
        chunks = 1
    return Sample(t0, ttft, time.perf_counter(), chunks, status)


async def run_load(
    url: str,
    path: str,
    bodies: list[bytes],
    *,
    concurrency: int,
    total: int,
    rate: float | None = None,
    headers: dict[str, str] | None = None,
) -> Result:
    """Send ``total`` requests over ``concurrency`` keep-alive connections, cycling through bodies.
    With ``rate`` (requests/s), request i is sent no earlier than i / rate seconds after the start (an
    open-loop arrival, as long as a connection is free), so variants can be compared at equal load.
    ``headers`` are added to every request (e.g. Authorization)."""
    u = urlparse(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    payloads = [_request_bytes(f"{host}:{port}", path, b, headers) for b in bodies]
    result = Result()
    counter = iter(range(total))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
        try:
            for i in counter:
                if rate:
                    await asyncio.sleep(result.started + i / rate - time.perf_counter())
                try:
                    s = await _one(reader, writer, payloads[i % len(payloads)])
                except (asyncio.IncompleteReadError, ConnectionError):
                    result.errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
                    continue
                if s.status == 200:
                    result.samples.append(s)
                else:
                    result.errors += 1
                    result.other.append(s)
        finally:
            writer.close()

    result.started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.finished = time.perf_counter()
    return result


async def open_loop(
    url: str,
    path: str,
    bodies: list[bytes],
    *,
    rate: float,
    duration: float,
    poisson: bool = True,
    seed: int = 0,
    headers: dict[str, str] | None = None,
) -> Result:
    """Arrivals at ``rate`` a second for ``duration`` seconds (Poisson, or evenly spaced), each on a new
    connection of its own: an arrival never waits for a free connection, so what queues is the server.
    A sample's start is its arrival, before connecting: connecting counts in its TTFT. Returns once every
    request has its answer (or failed: counted in errors)."""
    u = urlparse(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    payloads = [_request_bytes(f"{host}:{port}", path, b, headers) for b in bodies]
    result = Result()
    pending: set[asyncio.Task[None]] = set()

    async def arrival(i: int) -> None:
        t0 = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
        except OSError:
            result.errors += 1
            return
        try:
            s = await _one(reader, writer, payloads[i % len(payloads)])
        except (asyncio.IncompleteReadError, OSError, ValueError):
            result.errors += 1
            return
        finally:
            writer.close()
        s = Sample(t0, s.ttft + s.start - t0, s.end, s.chunks, s.status)
        if s.status == 200:
            result.samples.append(s)
        else:
            result.errors += 1
            result.other.append(s)

    rng = random.Random(seed)
    result.started = time.perf_counter()
    at, i = 0.0, 0
    while at < duration:
        delay = result.started + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            result.late = max(result.late, -delay)
        task = asyncio.create_task(arrival(i), name=f"arrival-{i}")
        pending.add(task)
        task.add_done_callback(pending.discard)
        i += 1
        at += rng.expovariate(rate) if poisson else 1 / rate
    await asyncio.gather(*pending)
    result.finished = time.perf_counter()
    return result


def pin_apart(pid: int) -> None:
    """Pin ``pid`` (every thread) to CPU 0 and this process and all its other descendants to the other
    CPUs, so that the process measured competes with no other for its CPU. Needs 2 CPUs or more."""
    import os

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    tree = descendants()
    for proc in tree:
        for tid in os.listdir(f"/proc/{proc}/task"):
            os.sched_setaffinity(int(tid), {cpus[0]} if proc == pid else set(cpus[1:]))


def descendants() -> list[int]:
    """This process and all its descendants (the client, the servers and roles, their helpers)."""
    import os

    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(") ", 1)[1].split()[1])
            except OSError:
                continue
    tree, frontier = [os.getpid()], [os.getpid()]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        tree += kids
        frontier += kids
    return tree


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (seconds)."""
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
