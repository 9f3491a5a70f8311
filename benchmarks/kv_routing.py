"""Routing quality: cached-token fraction and later-round TTFT for kv, round-robin and random.

    .venv/bin/python -m benchmarks.kv_routing [--modes kv round-robin random]

4 mocker workers at speedup 1 (real simulated prefill/decode time), 20 users x 5 rounds: a ~1000-token
shared system prompt, a ~2000-token per-user document, each round adds the previous answer and a new
question; 64 output tokens; users start staggered (0.25 s apart) and run concurrently. With
--think-s 0 users ask again at once and move in lockstep, which lets round-robin send a user back to
the same worker by luck when users divide evenly among workers (20 over 4); --think-s 0.5 breaks that
lockstep as real users would.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

import openai

from benchmarks.loadgen import pct
from benchmarks.workload import text
from dynamo_cli.deployment.handle import start


async def user(
    client: openai.AsyncOpenAI,
    model: str,
    uid: int,
    system: str,
    rounds: int,
    delay: float,
    think_s: float,
    out: list,
) -> None:
    rng = random.Random(uid)
    await asyncio.sleep(delay)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text(rng, 1700)}]
    for r in range(rounds):
        messages.append({"role": "user", "content": f"Question {r}: " + text(rng, 20)})
        t0 = time.perf_counter()
        ttft = None
        answer = []
        usage = None
        stream = await client.chat.completions.create(
            model=model, messages=messages, max_tokens=64, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}, temperature=0,
        )  # fmt: skip
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                answer.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert usage is not None and ttft is not None
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
        out.append((r, ttft, usage.prompt_tokens, cached, usage.completion_tokens))
        messages.append({"role": "assistant", "content": "".join(answer)})
        if think_s > 0:  # the user reads the answer before asking again
            await asyncio.sleep(rng.expovariate(1 / think_s))


async def workload(base_url: str, model: str, users: int, rounds: int, think_s: float) -> tuple[list, float]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=300)
    system = text(random.Random(0), 900)
    out: list = []
    t0 = time.perf_counter()
    await asyncio.gather(
        *(user(client, model, u, system, rounds, u * 0.25, think_s, out) for u in range(users))
    )
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["kv", "round-robin", "random"])
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument(
        "--think-s",
        type=float,
        default=0.5,
        help="mean think time between a user's rounds (exponential, seeded); 0 = ask again at once",
    )
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for dynamo run")
    args = ap.parse_args()
    print(
        f"{'mode':>12} {'cached':>7} {'TTFT p50 r>=2 ms':>17} {'TTFT p90':>9} {'out tok/s':>10} {'wall s':>7}"
    )
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as tmp:
            flags = ["--workers", str(args.workers), "--router-mode", mode, "--speedup", "1"]
            flags += ["--set", "log_level=warning", "--set", "router.seed=1"]
            for item in args.sets:
                flags += ["--set", item]
            dep = start(Path(tmp), "agg", "--engine", "mocker", *flags)
            try:
                rows, wall = asyncio.run(
                    workload(dep.base_url, dep.model, args.users, args.rounds, args.think_s)
                )
            finally:
                dep.stop()
        cached = sum(r[3] for r in rows) / sum(r[2] for r in rows)
        later = [r[1] * 1000 for r in rows if r[0] >= 1]
        tput = sum(r[4] for r in rows) / wall
        print(
            f"{mode:>12} {cached:>7.3f} {pct(later, 0.5):>17.1f} {pct(later, 0.9):>9.1f} "
            f"{tput:>10.0f} {wall:>7.1f}"
        )


if __name__ == "__main__":
    main()
