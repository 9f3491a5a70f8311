"""Frontend CPU per streamed request, every variant fed the same worker stream (issue 15's last figure):
logprobs (top_logprobs 5) on vs off, and tool-call parsing on vs off.

    .venv/bin/python -m benchmarks.frontend_replay [--rate 150] [--rounds 12] [--requests 300]
        [--tokens-per-frame 1] [--interval-ms 1] [--no-pin]

Why: `benchmarks.api_parity --part frontend` measures this against a real mocker worker, and on a
2-core machine its logprobs figure moved from run to run (+9%, +16%, +10%, +28%). The worker's own
work grows with logprobs (it draws them and writes their JSON), so it sends its tokens in smaller
bursts and the frontend wakes about twice as often per request: the figure measured the worker's pace
as much as the frontend.

How: real etcd and NATS, spawned as `dynamo run` spawns them; a real frontend and router, started as
`dynamo role frontend|router agg --engine mocker`; and in a process of its own a replay worker
(benchmarks/replay_worker.py), registered in discovery as a worker. It records each request's output
once with the mocker engine (real token ids, real logprob JSON, written as a worker writes it) and
replays it on one fixed cadence for every variant: a frame of K tokens every T ms, every stream in
flight sending at each tick, as an engine step gives each running request its next token. Defaults:
one token a frame, as a mocker worker sends them (each engine step gives each request one token);
every 1 ms. A mocker worker at speedup 1000 under this load sent a token every ~0.05 ms without
logprobs and every ~0.3 ms with them (its own CPU set the pace); one interval serves both here, and
1 ms keeps ~10 streams in each burst at 150 requests/s. A warm-up sends every body once (that records
them); then the variants run in interleaved rounds (each round in a new order), all at one request
rate (open loop). The frontend runs alone on CPU 0, everything else of ours on the others (--no-pin:
anywhere).

The figure: frontend CPU-ms per request (utime + stime from /proc) per variant, and the overhead of
each against plain, taken round by round (plain ran in the same round): the median, the interquartile
range and the extremes across rounds. The variants are api_parity's bodies (~300-word chats, 64
tokens, EOS ignored): plain; tools' text, no parsing (the prompt the tools variant gets, without
tools); tools (auto: hermes parses every delta); logprobs (top 5). Tool-call parsing on vs off is
parsed vs the same prompt unparsed. Also printed: the replay worker's missed ticks, and how busy the
machine's other processes kept it; either disturbs the figure, and a warning says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.api_parity import WEATHER
from benchmarks.loadgen import cpu_seconds, descendants, pct, pin_apart, run_load
from benchmarks.workload import chat
from dynamo_cli.deployment.servers import ServerPlan, etcd_version, nats_info, plan_etcd, plan_nats
from dynamo_cli.lifecycle import READY_FD_ENV

PATH = "/v1/chat/completions"
TARGET = 0.10  # issue 15: each feature adds at most 10% frontend CPU per request
MAX_TOKENS = 64


# ---- processes -----------------------------------------------------------------------------------------
@dataclass
class Launched:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ready_fd: int | None = None


def launch(name: str, argv: list[str], logs: Path, *, ready: bool = True) -> Launched:
    """Start ``argv`` in a session of its own, its output to ``logs/name.log``; with ``ready``, it gets a
    pipe to report readiness on (as the launcher's supervisor gives its roles)."""
    log = logs / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    read_fd, write_fd = os.pipe() if ready else (None, None)
    if write_fd is not None:
        env[READY_FD_ENV] = str(write_fd)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            pass_fds=() if write_fd is None else (write_fd,),
        )  # fmt: skip
    if write_fd is not None:
        os.close(write_fd)
    return Launched(name, proc, log, read_fd)


def wait_ready(p: Launched, timeout: float) -> dict[str, Any]:
    """What the role reported when ready; raises (with its log's tail) if it dies or takes too long."""
    assert p.ready_fd is not None
    deadline = time.monotonic() + timeout
    with os.fdopen(p.ready_fd, "rb") as pipe:
        while not select.select([pipe], [], [], 0.1)[0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{p.name} not ready in {timeout:g} s:\n{p.log.read_text()[-3000:]}")
        line = pipe.readline()
    if not line:  # the pipe closed unwritten: it died
        p.proc.wait(5)
        raise RuntimeError(f"{p.name} exited ({p.proc.returncode}):\n{p.log.read_text()[-3000:]}")
    return orjson.loads(line)


def spawn_server(plan: ServerPlan, logs: Path) -> Launched:
    """etcd or NATS as `dynamo run` spawns it; returns once it answers."""
    p = launch(plan.name, plan.argv, logs, ready=False)
    probe = etcd_version if plan.name == "etcd" else nats_info
    deadline = time.monotonic() + 20
    while probe(plan.url, 0.2) is None:
        if p.proc.poll() is not None or time.monotonic() > deadline:
            stop(p)
            raise RuntimeError(f"{plan.name} did not start:\n{p.log.read_text()[-2000:]}")
        time.sleep(0.02)
    return p


def stop(p: Launched, timeout: float = 15) -> None:
    """SIGTERM (a role drains and leaves discovery), then SIGKILL if it has not exited in time."""
    if p.proc.poll() is None:
        p.proc.send_signal(signal.SIGTERM)
        try:
            p.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait()


def role_argv(role: str, etcd: str, nats: str, namespace: str, routers: int, *extra: str) -> list[str]:
    sets = [f"infra.etcd={etcd}", f"infra.nats={nats}", "log_level=warning", f"router.replicas={routers}"]
    argv = [sys.executable, "-m", "dynamo_cli", "role", role, "agg", "--engine", "mocker"]
    return [*argv, "--namespace", namespace, *(a for s in sets for a in ("--set", s)), *extra]


def wait_healthy(url: str, timeout: float = 30) -> None:
    """Until the frontend sees a worker for its model."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the frontend at {url} saw no worker in {timeout:g} s")
        time.sleep(0.05)


# ---- the workload --------------------------------------------------------------------------------------
def variants() -> dict[str, dict[str, Any]]:
    """api_parity's variants: extra body fields (``_system``: text appended to the first message)."""
    from dynamo_cli.frontend.tool_parsers import PARSERS

    guide = PARSERS["hermes"].render_tools([WEATHER])  # what the frontend adds for SmolLM2's template
    return {
        "plain": {},
        "tools' text, no parsing": {"_system": guide},
        "tools (auto, parsed)": {"tools": [WEATHER]},
        "logprobs (top 5)": {"logprobs": True, "top_logprobs": 5},
    }


def bodies(model: str, extra: dict[str, Any], n: int, prompt_words: int) -> list[bytes]:
    extra = dict(extra)
    system = extra.pop("_system", None)
    out = []
    for i in range(n):
        messages = chat(i, prompt_words)
        if system:
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{system}"}
        body = {"model": model, "messages": messages, "max_tokens": MAX_TOKENS, "stream": True,
                "ignore_eos": True, "temperature": 0, **extra}  # fmt: skip
        out.append(orjson.dumps(body))
    return out


def read_stats(path: Path) -> dict[str, int]:
    time.sleep(0.3)  # the worker writes them every 0.25 s
    return json.loads(path.read_text())


def _machine_busy() -> float:
    """CPU seconds the machine's processes have run, and the hypervisor has taken (steal), from /proc/stat.
    Interrupts are left out: loopback traffic, ours included, is counted there and in no process."""
    with open("/proc/stat") as f:
        user, nice, system, *_, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def _ours(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:  # gone
            continue
    return total


@dataclass
class Run:
    """One variant in one round."""

    cpu_ms: float  # frontend CPU-ms per request
    stream_ms: list[float]  # each request's time, as the client saw it
    others: float  # CPUs kept busy meanwhile by other processes (and steal): 0.5 is half a CPU


# ---- the benchmark -------------------------------------------------------------------------------------
def measure(args: argparse.Namespace, ready: dict[str, Any], stats: Path) -> dict[str, Any]:
    url, frontend = ready["url"], int(ready["pid"])
    payloads = {
        name: bodies(ready["model"], extra, 32, args.prompt_words) for name, extra in variants().items()
    }
    every = [b for group in payloads.values() for b in group]
    warm = asyncio.run(run_load(url, PATH, every, concurrency=8, total=len(every)))  # records each once
    assert warm.errors == 0, f"{warm.errors} errors in the warm-up"
    asyncio.run(
        run_load(url, PATH, payloads["plain"], concurrency=args.concurrency, total=200, rate=args.rate)
    )
    before = read_stats(stats)
    pids = descendants()

    def one(name: str) -> Run:
        t0, busy0, ours0 = cpu_seconds(frontend), _machine_busy(), _ours(pids)
        res = asyncio.run(
            run_load(
                url, PATH, payloads[name], concurrency=args.concurrency, total=args.requests, rate=args.rate
            )
        )
        assert res.errors == 0, f"{name}: {res.errors} errors"
        others = (_machine_busy() - busy0) - (_ours(pids) - ours0)
        return Run(
            (cpu_seconds(frontend) - t0) * 1000 / args.requests,
            [(s.end - s.start) * 1000 for s in res.samples],
            max(0.0, others) / res.wall,
        )

    names = list(payloads)
    rounds: list[dict[str, Run]] = []
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        rounds.append({name: one(name) for name in order})
    after = read_stats(stats)
    return {"rounds": rounds, "names": names, "stats": {k: after[k] - before[k] for k in after}}


def _overhead(rounds: list[dict[str, Run]], name: str, base: str) -> list[float]:
    """The variant's CPU per request against the base's, round by round, in %."""
    return [100 * (r[name].cpu_ms / r[base].cpu_ms - 1) for r in rounds]


def _spread(values: list[float]) -> str:
    """Median, interquartile range and extremes."""
    return (
        f"{statistics.median(values):+5.1f}% (IQR {pct(values, 0.25):+.1f}..{pct(values, 0.75):+.1f}, "
        f"all {min(values):+.1f}..{max(values):+.1f})"
    )


def report(args: argparse.Namespace, m: dict[str, Any]) -> None:
    rounds, names, stats = m["rounds"], m["names"], m["stats"]
    frames = -(-MAX_TOKENS // args.tokens_per_frame)
    print(
        f"frontend CPU per streamed request, worker stream replayed: {args.tokens_per_frame} token(s) a "
        f"frame every {args.interval_ms:g} ms ({frames} frames, {frames * args.interval_ms:g} ms a stream)"
    )
    print(
        f"  {args.rate:g} requests/s for every variant, {args.rounds} interleaved rounds of {args.requests}"
        f"{', frontend pinned to CPU 0' if args.pin else ''}"
    )
    print(
        f"  {'variant':<24} {'CPU-ms/req':>10} {'(min-max)':>11}  {'stream p50':>10}  "
        "vs plain, round by round"
    )
    for name in names:
        ms = [r[name].cpu_ms for r in rounds]
        streams = pct([t for r in rounds for t in r[name].stream_ms], 0.5)
        vs = "" if name == "plain" else _spread(_overhead(rounds, name, "plain"))
        print(
            f"  {name:<24} {statistics.median(ms):>10.3f} ({min(ms):.2f}-{max(ms):.2f})  "
            f"{streams:>7.1f} ms  {vs}"
        )
    parsing = _overhead(rounds, "tools (auto, parsed)", "tools' text, no parsing")
    print(f"  tool-call parsing itself (parsed vs the same prompt unparsed): {_spread(parsing)}")
    ticks = stats["ticks"] + stats["missed_ticks"]
    others = statistics.median(run.others for r in rounds for run in r.values())
    print(
        f"  replay worker: {stats['served']} streams, {stats['recorded']} recorded during the rounds (0 "
        f"expected), {100 * stats['missed_ticks'] / max(ticks, 1):.1f}% of {ticks} ticks missed\n"
        f"  other processes kept {others:.2f} CPUs busy (median of rounds)"
    )
    if stats["missed_ticks"] > 0.05 * ticks or others > 0.2:
        print("  the machine was busy: the cadence or the frontend's CPU was disturbed; run again when quiet")
    lp = statistics.median(_overhead(rounds, "logprobs (top 5)", "plain"))
    tp = statistics.median(parsing)

    def verdict(value: float) -> str:
        return f"{value:+.1f}% ({'met' if value <= 100 * TARGET else 'MISSED'})"

    print(
        f"verdict (target: at most +{100 * TARGET:.0f}% each): logprobs top 5 {verdict(lp)}; "
        f"tool-call parsing {verdict(tp)}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=150.0, help="requests/s, every variant")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--requests", type=int, default=300, help="a round, a variant")
    ap.add_argument("--concurrency", type=int, default=32, help="client connections")
    ap.add_argument("--prompt-words", type=int, default=300)
    ap.add_argument("--tokens-per-frame", type=int, default=1)
    ap.add_argument("--interval-ms", type=float, default=1.0, help="between one tick and the next")
    ap.add_argument("--routers", type=int, default=1, help="router processes (0: inside the frontend)")
    ap.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="frontend alone on CPU 0, the rest of ours on the others",
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="frontend-replay-") as tmp:
        logs = Path(tmp)
        started: list[Launched] = []
        try:
            etcd_plan, nats_plan = plan_etcd("spawn", logs), plan_nats("spawn", logs)
            started += [spawn_server(etcd_plan, logs), spawn_server(nats_plan, logs)]
            etcd, nats, ns = etcd_plan.client_url, nats_plan.client_url, f"replay{os.getpid()}"
            stats = logs / "worker-stats.json"
            worker_argv = [
                sys.executable, "-m", "benchmarks.replay_worker", "--etcd", etcd, "--nats", nats,
                "--namespace", ns, "--tokens-per-frame", str(args.tokens_per_frame),
                "--interval-ms", str(args.interval_ms), "--stats", str(stats),
            ]  # fmt: skip
            roles = [launch("replay-worker", worker_argv, logs)]
            roles += [
                launch(
                    f"router-{i}", role_argv("router", etcd, nats, ns, args.routers, "--index", str(i)), logs
                )
                for i in range(args.routers)
            ]
            roles.append(
                launch(
                    "frontend",
                    role_argv("frontend", etcd, nats, ns, args.routers, "--set", "frontend.port=0"),
                    logs,
                )
            )
            started += roles
            ready = {p.name: wait_ready(p, 120) for p in roles}["frontend"]
            ready["pid"] = roles[-1].proc.pid
            wait_healthy(ready["url"])
            if args.pin:
                pin_apart(ready["pid"])
            m = measure(args, ready, stats)
        finally:
            for p in reversed(started):
                stop(p)
    report(args, m)


if __name__ == "__main__":
    main()
