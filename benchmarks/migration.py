"""What a dying worker costs the streams it carried: request migration against none.

    .venv/bin/python -m benchmarks.migration [--duration 120] [--kill-every 10]

`dynamo run agg --engine mocker --workers 4` with the mocker's default timing. A steady closed loop of
streamed chats (greedy, EOS ignored, usage included) runs for --duration seconds while one worker is
SIGKILLed every --kill-every seconds, in turn; the launcher restarts each. Then the same with
`frontend.migration_limit: 0`, to show what migration buys.

Per run: requests finished and lost (an error event, or fewer tokens than asked). For the requests
a kill interrupted, the extra gap: the gap between the two tokens spanning the kill, minus the
request's median gap, p50 and p99; it includes the detection (the launcher's death notice) and the
new worker's prefill of prompt + tokens so far. Interrupted: that gap is over 3x the median plus
10 ms; about a quarter of the streams mid-way at a kill were on the victim.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from benchmarks.loadgen import pct
from benchmarks.workload import chat
from dynamo_cli.deployment.handle import Deployment, start


@dataclass
class Stream:
    times: list[float] = field(default_factory=list)  # arrival of each content chunk
    tokens: int = 0  # completion_tokens from the usage chunk
    error: str | None = None


async def _one(client: httpx.AsyncClient, url: str, body: bytes) -> Stream:
    s = Stream()
    try:
        headers = {"content-type": "application/json"}
        async with client.stream("POST", url, content=body, headers=headers) as r:
            if r.status_code != 200:
                s.error = f"HTTP {r.status_code}"
                return s
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = orjson.loads(line[6:])
                if "error" in event:
                    s.error = str(event["error"].get("message"))
                elif event.get("usage"):
                    s.tokens = event["usage"]["completion_tokens"]
                elif event.get("choices") and event["choices"][0]["delta"].get("content"):
                    s.times.append(time.perf_counter())
    except httpx.HTTPError as e:
        s.error = f"{type(e).__name__}: {e}"
    return s


async def _load(dep: Deployment, args: argparse.Namespace, kills: list[float]) -> list[Stream]:
    base = {"model": dep.model, "max_tokens": args.tokens, "stream": True, "temperature": 0,
            "stream_options": {"include_usage": True}, "ignore_eos": True}  # fmt: skip
    bodies = [orjson.dumps({**base, "messages": chat(i, 200)}) for i in range(64)]
    url = dep.url + "/v1/chat/completions"
    done: list[Stream] = []
    t0 = time.perf_counter()
    t_end = t0 + args.duration
    counter = iter(range(1 << 30))

    async def user(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < t_end:
            done.append(await _one(client, url, bodies[next(counter) % len(bodies)]))

    async def killer() -> None:
        for k in range(int(args.duration // args.kill_every)):
            await asyncio.sleep(max(0.0, t0 + (k + 1) * args.kill_every - time.perf_counter()))
            if time.perf_counter() >= t_end - 1:
                return
            name = f"worker-{k % 4}"
            pid = dep.current_pid(name)
            if pid is not None:
                kills.append(time.perf_counter())
                os.kill(pid, signal.SIGKILL)

    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(killer(), *(user(client) for _ in range(args.concurrency)))
    return done


def _interrupted(streams: list[Stream], kills: list[float]) -> tuple[list[float], int]:
    """Extra gap (s) of each stream a kill interrupted (its gap spanning the kill, minus its median),
    and how many streams were mid-way at a kill (a quarter of them were on the victim)."""
    extra, spanning = [], 0
    for s in streams:
        if len(s.times) < 3:
            continue
        gaps = [b - a for a, b in zip(s.times, s.times[1:], strict=False)]
        usual = statistics.median(gaps)
        for k in kills:
            for (a, b), gap in zip(zip(s.times, s.times[1:], strict=False), gaps, strict=True):
                if a <= k < b:
                    spanning += 1
                    if gap > 3 * usual + 0.01:
                        extra.append(gap - usual)
    return extra, spanning


def _run(args: argparse.Namespace, migration_limit: int | None) -> dict[str, float]:
    sets = [] if migration_limit is None else ["--set", f"frontend.migration_limit={migration_limit}"]
    with tempfile.TemporaryDirectory() as tmp:
        dep = start(Path(tmp), "agg", "--engine", "mocker", "--workers", "4", "--set", "log_level=warning",
                    *sets)  # fmt: skip
        try:
            kills: list[float] = []
            streams = asyncio.run(_load(dep, args, kills))
        finally:
            dep.stop()
    lost = [s for s in streams if s.error is not None or s.tokens != args.tokens]
    extra, spanning = _interrupted([s for s in streams if s.error is None], kills)
    return {
        "requests": len(streams),
        "lost": len(lost),
        "kills": len(kills),
        "interrupted": len(extra),
        "mid_way": spanning,
        "extra_p50": pct(extra, 0.5),
        "extra_p99": pct(extra, 0.99),
        "itl_p50": statistics.median(
            b - a for s in streams for a, b in zip(s.times, s.times[1:], strict=False)
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load per run")
    ap.add_argument("--kill-every", type=float, default=10.0, help="seconds between two kills")
    ap.add_argument("--concurrency", type=int, default=16, help="streams at once")
    ap.add_argument("--tokens", type=int, default=200, help="max_tokens of each request")
    args = ap.parse_args()
    runs = {"migration (default, limit 3)": _run(args, None), "migration_limit 0": _run(args, 0)}
    print(
        f"4 mocker workers, {args.concurrency} streams of {args.tokens} tokens, {args.duration:g} s, "
        f"a worker SIGKILLed every {args.kill_every:g} s"
    )
    for name, r in runs.items():
        print(
            f"  {name:<30} requests {r['requests']:5.0f}  lost {r['lost']:4.0f}  kills {r['kills']:3.0f}\n"
            f"  {'':<30} interrupted {r['interrupted']:3.0f} of {r['mid_way']:3.0f} mid-way  extra gap "
            f"p50 {1000 * r['extra_p50']:5.0f} ms  p99 {1000 * r['extra_p99']:5.0f} ms  "
            f"(ITL p50 {1000 * r['itl_p50']:.1f} ms)"
        )


if __name__ == "__main__":
    main()
