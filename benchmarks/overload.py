"""The frontend under overload, and what its door (API keys, rate limits, admission) costs.

    .venv/bin/python -m benchmarks.overload [--part overload|auth-cpu|all] [--workers 1] [--max-tokens 128]

overload: `dynamo run agg --engine mocker` at the mocker's defaults (speedup 1: a 128-token stream lasts
seconds), --workers workers, streaming chat, short prompts, EOS ignored. First the saturation rate: a
closed loop at the engine's batch (256 streams a worker, the mocker's max_num_seqs) for --saturation-s
seconds. Then --factor (5) times that rate for --overload-s seconds: Poisson arrivals, each on a new
connection, so arrivals never wait for the client. Admission control at its defaults (256 admitted a
worker, 256 more queued for up to 30 s, 503 beyond). Meanwhile another process polls /health every
100 ms (a new connection each), the frontend's VmRSS, the kernel's accept queue, and the queue gauge.
Prints arrivals, admitted (200) and refused (503) shares, other statuses, latencies of the admitted,
/health latency, RSS (at start, before, peak during, after), the rejected counter against the 503s,
whether the frontend is the same live process, and its CPU and time runnable but waiting for a CPU (a
frontend starved of CPU by other processes looks like an overloaded one).

auth-cpu: deployments side by side, all mocker speedup 1000 (the engine costs next to nothing): two
plain ones and one with --api-key and frontend.rate_limit_rps=100000 (the limiter runs, never refuses);
admission control is on in all (the default). The same streaming load at one fixed --rate on each, in
interleaved rounds (the order rotating), and frontend CPU-ms per request from /proc. Prints each round's
overhead of keys and limits against the mean of the plain ones, the median and spread, the two plain
ones against each other (the noise floor), and the Guard's own CPU per request, measured in process.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import httpx
import uvloop
from starlette.types import Receive, Scope, Send

from benchmarks.loadgen import Result, cpu_seconds, open_loop, pct, run_load
from benchmarks.workload import chat, streaming_chat_body
from dynamo_cli.deployment.handle import Deployment, process_alive, start

CHAT = "/v1/chat/completions"
KEY = "overload-bench-key"
BATCH = 256  # the mocker's max_num_seqs (a default): requests a worker runs at once
T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)  # the client's loop: a lean one, so that the client is not the bottleneck


def _bodies(model: str, args: argparse.Namespace) -> list[bytes]:
    return [
        streaming_chat_body(model, chat(i, args.prompt_words, turns=1), args.max_tokens) for i in range(64)
    ]


def _rss_mib(pid: int) -> float:
    """The process's resident memory (VmRSS), MiB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(x.split()[1]) / 1024 for x in f if x.startswith("VmRSS:"))
    except (FileNotFoundError, StopIteration):
        return 0.0


def _get(host: str, port: int, path: str) -> tuple[int, bytes]:
    """GET on a new connection: (status, body); status -1 when it failed or took over 10 s."""
    conn = http.client.HTTPConnection(host, port, timeout=10)  # connects on request
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    except (OSError, http.client.HTTPException):
        return -1, b""
    finally:
        conn.close()


def _metric(text: bytes, name: str, label: str = "") -> float:
    """The sum of the samples of ``name`` (with ``label``, e.g. 'reason="overloaded"') in Prometheus text."""
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith((name + "{", name + " ")) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _accept_queue(port: int) -> int:
    """Connections the kernel holds for the listening socket on ``port``, not yet accepted (IPv4)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[1].endswith(f":{port:04X}"):  # 0A: LISTEN; rx_queue = accept queue
                return int(cols[4].split(":")[1], 16)
    return 0


def _sched(pid: int) -> tuple[float, float]:
    """Seconds the process's threads ran, and spent runnable but waiting for a CPU (/proc schedstat)."""
    run = wait = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                r, w, _ = f.read().split()
        except (OSError, ValueError):
            continue
        run, wait = run + int(r), wait + int(w)
    return run / 1e9, wait / 1e9


@dataclass
class Watched:
    health: list[tuple[float, float, int]] = field(default_factory=list)  # (when, latency s, status)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (when, MiB)
    queued: float = 0.0  # the queued-requests gauge's peak
    backlog: int = 0  # the kernel's accept queue's peak


def _watch(url: str, pid: int, interval: float, stop: Event, out: Connection) -> None:
    """In a process of its own, so the load's busy event loop cannot delay it: GET /health every ``interval``
    s on a new connection, with the frontend's RSS and its accept queue; the queue gauge every second."""
    u = urlparse(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    got = Watched()
    t0, k = time.perf_counter(), 0
    while not stop.is_set():
        t = time.perf_counter()
        status, _ = _get(host, port, "/health")
        got.health.append((t, time.perf_counter() - t, status))
        got.rss.append((t, _rss_mib(pid)))
        got.backlog = max(got.backlog, _accept_queue(port))
        if k % round(1 / interval) == 0:
            status, text = _get(host, port, "/metrics")
            if status == 200:
                got.queued = max(got.queued, _metric(text, "dynamo_frontend_queued_requests"))
        k += 1
        stop.wait(max(0.0, t0 + k * interval - time.perf_counter()))
    out.send(got)


class Watcher:
    def __init__(self, url: str, pid: int, interval: float = 0.1):
        ctx = multiprocessing.get_context("spawn")
        self.stop = ctx.Event()
        self.recv, send = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_watch, args=(url, pid, interval, self.stop, send), daemon=True)
        self.proc.start()

    def finish(self) -> Watched:
        self.stop.set()
        got: Watched = self.recv.recv()
        self.proc.join(10)
        return got


def _rejected(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).content
    name = "dynamo_frontend_rejected_requests_total"
    reasons = ("overloaded", "busy", "rate_limited", "unauthorized")
    return {r: _metric(text, name, f'reason="{r}"') for r in reasons}


def _ms(values: list[float], q: float) -> str:
    return f"{1000 * pct(values, q):.0f}"


def _overload(args: argparse.Namespace) -> None:
    streams = BATCH * args.workers
    with tempfile.TemporaryDirectory() as tmp:
        dep = start(Path(tmp), "agg", "--engine", "mocker", "--workers", str(args.workers),
                    "--set", "log_level=warning")  # fmt: skip
        try:
            pid = dep.pid("frontend")
            rss_start = _rss_mib(pid)
            bodies = _bodies(dep.model, args)
            warm = _run(run_load(dep.url, CHAT, bodies, concurrency=streams, total=streams))
            assert warm.errors == 0, f"{warm.errors} errors in the warm-up"
            total = max(streams, round(len(warm.samples) / warm.wall * args.saturation_s))
            sched0 = _sched(pid)
            sat = _run(run_load(dep.url, CHAT, bodies, concurrency=streams, total=total))
            sched1 = _sched(pid)
            assert sat.errors == len(sat.other) and all(s.status == 503 for s in sat.other), sat.other[:5]
            sat_rate = len(sat.samples) / sat.wall
            rate = args.factor * sat_rate
            rss_before = _rss_mib(pid)
            rejected_before = _rejected(dep.url)
            watcher = Watcher(dep.url, pid)
            time.sleep(1.0)
            sched2 = _sched(pid)
            res = _run(open_loop(dep.url, CHAT, bodies, rate=rate, duration=args.overload_s, seed=1))
            sched3 = _sched(pid)
            time.sleep(2.0)
            watched = watcher.finish()
            rss_after = _rss_mib(pid)
            rejected = {r: n - rejected_before[r] for r, n in _rejected(dep.url).items()}
            alive = process_alive(pid) and dep.current_pid("frontend") == pid and dep.proc.poll() is None
            after = _run(run_load(dep.url, CHAT, bodies[:4], concurrency=4, total=4))
        finally:
            dep.stop()
    print(
        f"overload: dynamo run agg --engine mocker (speedup 1), {args.workers} worker(s), streaming chat, "
        f"~{args.prompt_words}-word prompts, {args.max_tokens} tokens (EOS ignored)"
    )
    _print_saturation(sat, streams, sat_rate)
    _print_cpu(sched0, sched1, sat.wall, len(sat.samples))
    _print_overload(args, res, rate, rejected, watched)
    _print_cpu(sched2, sched3, res.wall, len(res.samples) + len(res.other))
    during = [(lat, st) for t, lat, st in watched.health if res.started <= t <= res.finished]
    bad = sorted({st for _, st in during if st != 200})
    lats = [lat for lat, _ in during]
    print(
        f"  /health during the overload: {len(during)} polls, latency p50 {_ms(lats, 0.5)} ms, "
        f"p99 {_ms(lats, 0.99)} ms, max {1000 * max(lats, default=0):.0f} ms; "
        f"non-200: {bad or 'none'} ({sum(1 for _, st in during if st != 200)} polls; -1 = no answer in 10 s)"
    )
    peak = max((m for t, m in watched.rss if res.started <= t <= res.finished), default=0.0)
    print(
        f"  frontend RSS: {rss_start:.0f} MiB at start, {rss_before:.0f} before the overload (after "
        f"saturation), peak {peak:.0f} during, {rss_after:.0f} 2 s after the last answer"
    )
    print(
        f"  frontend afterwards: {'alive, same process' if alive else 'DIED or restarted'}; "
        f"4 new requests: {len(after.samples)} answered 200"
    )


def _print_cpu(before: tuple[float, float], after: tuple[float, float], wall: float, answered: int) -> None:
    run, wait = after[0] - before[0], after[1] - before[1]
    print(
        f"    frontend: CPU {100 * run / wall:.0f}% of a core ({1000 * run / max(1, answered):.2f} ms per "
        f"answered request), runnable but waiting for a CPU {100 * wait / wall:.0f}% of the time"
    )


def _print_saturation(sat: Result, streams: int, sat_rate: float) -> None:
    ttft, e2e = [s.ttft for s in sat.samples], [s.end - s.start for s in sat.samples]
    print(
        f"  saturation (closed loop, {streams} streams, {len(sat.samples)} requests in {sat.wall:.1f} s): "
        f"{sat_rate:.1f} req/s; TTFT p50 {_ms(ttft, 0.5)} ms, p99 {_ms(ttft, 0.99)} ms; "
        f"end-to-end p50 {_ms(e2e, 0.5)} ms; 503s: {len(sat.other)} (at most {streams} requests were out at "
        f"once, the admission limit: there should be none)"
    )


def _print_overload(
    args: argparse.Namespace, res: Result, rate: float, rejected: dict[str, float], watched: Watched
) -> None:
    ok = res.samples
    arrivals = len(ok) + res.errors
    refused = [s for s in res.other if s.status == 503]
    others = dict(collections.Counter(s.status for s in res.other if s.status != 503))
    failed = res.errors - len(res.other)
    ttft, e2e = [s.ttft for s in ok], [s.end - s.start for s in ok]
    print(
        f"  {args.factor:g}x overload: Poisson arrivals at {rate:.0f} req/s for {args.overload_s:g} s, a new "
        f"connection each (client: arrivals late by up to {1000 * res.late:.0f} ms)"
    )
    print(
        f"    arrivals {arrivals} ({arrivals / args.overload_s:.0f}/s); admitted (200) {len(ok)} "
        f"({100 * len(ok) / arrivals:.1f}%, {len(ok) / res.wall:.1f}/s over {res.wall:.1f} s); refused (503) "
        f"{len(refused)} ({100 * len(refused) / arrivals:.1f}%); other statuses: {others or 'none'}; "
        f"connection errors: {failed}"
    )
    print(
        f"    admitted: TTFT p50 {_ms(ttft, 0.5)} ms, p99 {_ms(ttft, 0.99)} ms, max {_ms(ttft, 1.0)} ms; "
        f"end-to-end p50 {_ms(e2e, 0.5)} ms, p99 {_ms(e2e, 0.99)} ms, max {_ms(e2e, 1.0)} ms"
    )
    r503 = [s.end - s.start for s in refused]
    shed = rejected["overloaded"] + rejected["busy"]
    print(
        f"    refused: answered in p50 {_ms(r503, 0.5)} ms, p99 {_ms(r503, 0.99)} ms, "
        f"max {_ms(r503, 1.0)} ms; "
        f"/metrics rejected_requests_total: overloaded +{rejected['overloaded']:.0f}, "
        f"busy +{rejected['busy']:.0f} ({'match' if shed == len(refused) else 'DIFFER from'} the 503s), "
        f"rate_limited +{rejected['rate_limited']:.0f}, unauthorized +{rejected['unauthorized']:.0f}; "
        f"queued_requests gauge peak {watched.queued:.0f}; the kernel's accept queue (listen backlog) "
        f"peak {watched.backlog}"
    )


def _auth_cpu(args: argparse.Namespace) -> None:
    free = ["agg", "--engine", "mocker", "--workers", "1", "--speedup", "1000", "--set", "log_level=warning"]
    variants = {  # a second plain deployment: the spread between two identical ones is the noise floor
        "plain": free,
        "plain again": free,
        "keys+limits": [*free, "--api-key", KEY, "--set", "frontend.rate_limit_rps=100000"],
    }
    headers = {"plain": {}, "plain again": {}, "keys+limits": {"Authorization": f"Bearer {KEY}"}}
    with tempfile.TemporaryDirectory() as tmp:
        deps: dict[str, Deployment] = {}
        try:
            for name, argv in variants.items():
                deps[name] = start(Path(tmp), *argv)
            bodies = _bodies(deps["plain"].model, args)
            no_key = httpx.post(deps["keys+limits"].url + CHAT, content=bodies[0], timeout=30)
            assert no_key.status_code == 401, f"no key: {no_key.status_code}, expected 401"
            for name, dep in deps.items():
                warm = _run(run_load(dep.url, CHAT, bodies, concurrency=8, total=300, headers=headers[name]))
                assert warm.errors == 0, f"{name}: {warm.errors} errors in the warm-up"
            runs: dict[str, list[float]] = {name: [] for name in deps}
            for r in range(args.rounds):
                for name in [*variants][r % 3 :] + [*variants][: r % 3]:  # each first, second, third in turn
                    pid = deps[name].pid("frontend")
                    before = cpu_seconds(pid)
                    res = _run(
                        run_load(
                            deps[name].url, CHAT, bodies, concurrency=16, total=args.requests,
                            rate=args.rate, headers=headers[name],
                        )
                    )  # fmt: skip
                    assert res.errors == 0, f"{name}: {res.errors} errors"
                    runs[name].append((cpu_seconds(pid) - before) * 1000 / args.requests)
            rejected = _rejected(deps["keys+limits"].url)
        finally:
            for dep in deps.values():
                dep.stop()
    print(
        f"auth-cpu: frontend CPU-ms per streamed request (mocker speedup 1000, ~{args.prompt_words}-word "
        f"prompts, {args.max_tokens} tokens, {args.rate:g} req/s, {args.requests} requests a round)"
    )
    over, noise = [], []
    for r in range(args.rounds):
        plain, again, keyed = (runs[name][r] for name in variants)
        over.append(100 * (keyed / statistics.mean((plain, again)) - 1))
        noise.append(100 * (again / plain - 1))
        print(
            f"  round {r + 1}: plain {plain:.3f}, plain again {again:.3f} ({noise[-1]:+.1f}%), "
            f"keys+limits {keyed:.3f}: {over[-1]:+.1f}% vs the plain ones' mean"
        )
    med = {name: statistics.median(v) for name, v in runs.items()}
    print(
        f"  keys+limits overhead, median of rounds: {statistics.median(over):+.1f}% (spread "
        f"{min(over):+.1f}% .. {max(over):+.1f}%; {1000 * (med['keys+limits'] - med['plain']):+.0f} us "
        f"between medians); target: under +3%"
    )
    print(
        f"  noise floor, plain again vs plain: median {statistics.median(noise):+.1f}% (spread "
        f"{min(noise):+.1f}% .. {max(noise):+.1f}%)"
    )
    print(f"  keyed deployment's rejected counters (the no-key probe is the 1 unauthorized): {rejected}")
    door = {name: statistics.median(_run(_door_us(name, 20000)) for _ in range(5)) for name in headers}
    extra = door["keys+limits"] - door["plain"]
    print(
        f"  the door alone, in process (no-op app behind it; median of 5 x 20000): plain {door['plain']:.2f} "
        f"us, keys+limits {door['keys+limits']:.2f} us a request: {extra:+.2f} us, "
        f"{100 * extra / (1000 * med['plain']):+.3f}% of a plain request's CPU"
    )


async def _door_us(variant: str, n: int) -> float:
    """CPU us per admitted request that the frontend's Guard (keys, limits, admission) spends by itself."""
    from dynamo_cli.config.frontend import FrontendConfig
    from dynamo_cli.frontend.guard import Guard, admission_limit
    from dynamo_cli.frontend.metrics import FrontendMetrics

    keyed = variant == "keys+limits"
    cfg = FrontendConfig(api_keys=[KEY], rate_limit_rps=100000) if keyed else FrontendConfig()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    guard = Guard(app, cfg, cfg.api_keys, FrontendMetrics("m"), "m", admission_limit(cfg, lambda: 1))
    headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]
    headers += [(b"authorization", f"Bearer {KEY}".encode())] if keyed else []
    scope = {"type": "http", "method": "POST", "path": CHAT, "headers": headers}
    t = time.process_time()
    for _ in range(n):
        await guard(scope, app, app)  # type: ignore[arg-type]  # admitted: receive and send go unused
    return 1e6 * (time.process_time() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["overload", "auth-cpu", "all"], default="all")
    ap.add_argument("--workers", type=int, default=1, help="overload: mocker workers")
    ap.add_argument("--max-tokens", type=int, default=128, help="output tokens of every request")
    ap.add_argument("--prompt-words", type=int, default=32)
    ap.add_argument("--saturation-s", type=float, default=15.0, help="overload: closed-loop length")
    ap.add_argument("--factor", type=float, default=5.0, help="overload: arrival rate / saturation rate")
    ap.add_argument("--overload-s", type=float, default=25.0, help="overload: open-loop length")
    ap.add_argument("--rate", type=float, default=100.0, help="auth-cpu: requests/s on each deployment")
    ap.add_argument("--requests", type=int, default=1000, help="auth-cpu: requests a round")
    ap.add_argument("--rounds", type=int, default=6, help="auth-cpu: interleaved rounds")
    args = ap.parse_args()
    if args.part in ("overload", "all"):
        _overload(args)
    if args.part in ("auth-cpu", "all"):
        _auth_cpu(args)


if __name__ == "__main__":
    main()
