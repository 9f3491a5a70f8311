"""Planner on vs the same deployment fixed at its maximum size, over one load ramp (issue 7's figure).

    .venv/bin/python -m benchmarks.planner [--max-workers 4] [--low-rps 1.5] [--peak-rps 10]
        [--phase-s 30] [--ttft-ms 400] [--itl-ms 40] [--policy load|sla] [--json]

Mocker workers at speedup 1 (real simulated prefill and decode time). The load is open-loop (arrivals
do not wait for answers), its rate a ramp: ``--phase-s`` at the low rate, the same time rising to the
peak, at the peak, falling, and low again. Every request is a streamed chat with a prompt of its own
(~``--isl-words`` words, no shared prefix) and ``--osl`` output tokens.

Two runs: ``fixed`` starts ``--max-workers`` workers and no planner; ``planner`` starts one worker and
the planner (bounds 1..max). Printed for each: the share of requests that met both targets (TTFT and
the request's mean ITL; a failed request misses), TTFT/ITL p50 and p95, and worker-seconds: workers
alive (starting, ready or draining) integrated over the run, from the launcher's replica events.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.loadgen import pct
from benchmarks.workload import text
from dynamo_cli.bench.http import Endpoint, chat_once
from dynamo_cli.deployment.handle import Deployment, start

MOCKER = ["--engine", "mocker", "--set", "mocker.num_blocks=1024", "--set", "router.mode=kv"]


@dataclass
class Outcome:
    ok: bool
    ttft: float = 0.0
    itl: float = 0.0


def arrivals(low: float, peak: float, phase_s: float) -> list[float]:
    """Arrival times of the ramp: low, up, peak, down, low (``phase_s`` each), evenly spaced."""

    def rate(t: float) -> float:
        k, x = int(t // phase_s), (t % phase_s) / phase_s
        return [low, low + (peak - low) * x, peak, peak - (peak - low) * x, low][min(k, 4)]

    out, t, end = [], 0.0, 5 * phase_s
    while t < end:
        out.append(t)
        t += 1.0 / rate(t)
    return out


async def drive(dep: Deployment, times: list[float], isl_words: int, osl: int) -> tuple[list[Outcome], float]:
    ep = Endpoint.parse(dep.base_url)
    rng = random.Random(7)
    prompts = [f"{i} " + text(rng, isl_words) for i in range(len(times))]
    ids = itertools.count()

    async def one(at: float, t0: float) -> Outcome:
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        body = {
            "model": dep.model,
            "messages": [{"role": "user", "content": prompts[next(ids)]}],
            "max_tokens": osl,
            "ignore_eos": True,
            "stream": True,
        }
        s = await chat_once(ep, body, timeout=120)
        if s is None or s.ttft is None or s.mean_itl is None:
            return Outcome(False)
        return Outcome(True, s.ttft, s.mean_itl)

    t0 = time.monotonic()
    outcomes = await asyncio.gather(*(one(at, t0) for at in times))
    return list(outcomes), t0


def worker_seconds(dep: Deployment, initial: int, t0: float, t1: float) -> float:
    """Workers alive (starting, ready or draining) integrated over [t0, t1], from the replica events."""
    steps = [(t0, initial)]
    for e in dep.events:
        if e.get("event") == "replicas":
            alive = sum(e["ready"].values()) + sum(e["starting"].values()) + len(e["draining"])
            steps.append((max(t0, e["_t"]), alive))
    total = 0.0
    for (a, n), (b, _) in itertools.pairwise([*steps, (t1, 0)]):
        total += n * max(0.0, min(b, t1) - a)
    return total


def run(mode: str, args: argparse.Namespace, times: list[float]) -> dict[str, Any]:
    extra = ["--workers", str(args.max_workers)]
    if mode == "planner":
        extra = ["--workers", "1", "--planner", *[f"--set=planner.{k}" for k in args.planner_sets]]
    with tempfile.TemporaryDirectory() as tmp:
        dep = start(Path(tmp), "agg", *MOCKER, *extra, timeout=120)
        try:
            time.sleep(1.0)
            outcomes, t0 = asyncio.run(drive(dep, times, args.isl_words, args.osl))
            t1 = time.monotonic()
        finally:
            dep.stop()
    initial = 1 if mode == "planner" else args.max_workers
    ws = worker_seconds(dep, initial, t0, t1) if mode == "planner" else initial * (t1 - t0)
    good = [o for o in outcomes if o.ok]
    met = [o for o in good if o.ttft <= args.ttft_ms / 1000 and o.itl <= args.itl_ms / 1000]
    ttfts, itls = [o.ttft * 1000 for o in good], [o.itl * 1000 for o in good]
    scale = [e for e in dep.events if e.get("event") == "scale"]
    return {
        "mode": mode,
        "requests": len(outcomes),
        "failed": len(outcomes) - len(good),
        "attainment": len(met) / len(outcomes),
        "ttft_p50_ms": pct(ttfts, 0.5),
        "ttft_p95_ms": pct(ttfts, 0.95),
        "itl_p50_ms": pct(itls, 0.5),
        "itl_p95_ms": pct(itls, 0.95),
        "seconds": t1 - t0,
        "worker_seconds": ws,
        "decisions": [f"{e['from']}->{e['to']}" for e in scale],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-workers", type=int, default=4)
    ap.add_argument("--low-rps", type=float, default=1.5)
    ap.add_argument("--peak-rps", type=float, default=10.0)
    ap.add_argument("--phase-s", type=float, default=30.0)
    ap.add_argument("--isl-words", type=int, default=400)
    ap.add_argument("--osl", type=int, default=128)
    ap.add_argument("--ttft-ms", type=float, default=400.0)
    ap.add_argument("--itl-ms", type=float, default=30.0)
    ap.add_argument(
        "--planner-set",
        dest="planner_sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="planner settings for the planner run, e.g. load.kv_high=0.5 (repeatable)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    # What a user sets: the bounds and the targets. Everything else is the profile's default.
    defaults = [
        f"workers.max={args.max_workers}",
        f"sla.ttft_ms={args.ttft_ms:g}",
        f"sla.itl_ms={args.itl_ms:g}",
    ]
    given = {s.split("=", 1)[0] for s in args.planner_sets}
    args.planner_sets = [s for s in defaults if s.split("=", 1)[0] not in given] + args.planner_sets
    times = arrivals(args.low_rps, args.peak_rps, args.phase_s)
    rows = [run(mode, args, times) for mode in ("fixed", "planner")]
    fixed, planned = rows
    ratio = planned["worker_seconds"] / fixed["worker_seconds"]
    if args.json:
        print(json.dumps({"runs": rows, "worker_seconds_ratio": ratio}, indent=2))
        return
    print(
        f"ramp {args.low_rps:g} -> {args.peak_rps:g} -> {args.low_rps:g} req/s, {len(times)} requests, "
        f"~{args.isl_words} words in, {args.osl} tokens out; targets TTFT {args.ttft_ms:g} ms, "
        f"ITL {args.itl_ms:g} ms"
    )
    head = (
        f"{'':8} {'attain':>7} {'failed':>6} {'TTFT p50/p95 ms':>16} {'ITL p50/p95 ms':>15} {'worker-s':>9}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['mode']:8} {r['attainment']:7.1%} {r['failed']:6d} "
            f"{r['ttft_p50_ms']:7.0f}/{r['ttft_p95_ms']:<8.0f} {r['itl_p50_ms']:6.1f}/{r['itl_p95_ms']:<8.1f}"
            f"{r['worker_seconds']:9.0f}"
        )
    print(f"planner worker-seconds = {ratio:.0%} of fixed; decisions: {' '.join(planned['decisions'])}")


if __name__ == "__main__":
    main()
