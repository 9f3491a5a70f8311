"""Where the frontend's heavy preprocessing should run: on the event loop, in a thread, or in a process.

    .venv/bin/python -m benchmarks.preprocess [--rounds 200]

For each job (chat template + tokenisation of an ordinary chat; of a long one; JSON parsing of large
bodies), it measures the wall time per call and the longest stall a 1 ms ticker on the event loop sees
while the job runs: inline, through a thread pool, and through a spawned process pool. The frontend
uses the thread pool for templating and tokenisation (the encoders release the GIL) and processes for
parsing bodies over 32 KiB (orjson holds the GIL); this prints the figures behind that choice.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import orjson

from benchmarks.workload import chat
from dynamo_cli.models.embedded import prepare_tokenizer_folder
from dynamo_cli.models.tokenizer import ModelTokenizer

_tok: ModelTokenizer | None = None


def _tokenizer() -> ModelTokenizer:
    global _tok
    if _tok is None:
        _tok = ModelTokenizer(prepare_tokenizer_folder())
    return _tok


def encode_chat(messages: list[dict[str, Any]]) -> int:
    return len(_tokenizer().encode_chat(messages))


def parse(body: bytes) -> int:
    return len(orjson.loads(body))


async def _measure(run: Callable[[], Any], rounds: int) -> tuple[float, float]:
    """(median ms per call, longest loop stall in ms) over ``rounds`` calls."""
    stalls = [0.0]
    stop = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stalls.append(now - last - 0.001)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        result = run()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            await result
        times.append(time.perf_counter() - t)
        await asyncio.sleep(0)
    stop = True
    await tick
    return statistics.median(times) * 1e3, max(stalls) * 1e3


async def main_async(rounds: int) -> None:
    tok = _tokenizer()
    ordinary = chat(0, 1250)  # ~1.3k tokens, as in benchmarks.frontend
    long = [{"role": "user", "content": "the quick brown fox " * 30_000}]  # 600k characters
    strings = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "a" * (15 << 20)}]})
    arrays = orjson.dumps({"model": "m", "x": [[[[[1]]]]] * 200_000})
    threads = ThreadPoolExecutor(4)
    procs = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(procs, encode_chat, ordinary) for _ in range(2)))  # warm
    print(f"{'job':<40} {'where':<8} {'ms/call':>9} {'longest loop stall ms':>22}")
    jobs: list[tuple[str, Callable[..., Any], Any, int]] = [
        (f"chat, {len(tok.encode_chat(ordinary))} tokens", encode_chat, ordinary, rounds),
        (f"chat, {len(tok.encode_chat(long))} tokens (600k chars)", encode_chat, long, 5),
        ("parse 15 MiB body (one string)", parse, strings, 5),
        ("parse 2 MiB body (200k nested arrays)", parse, arrays, 3),
    ]
    for label, fn, arg, n in jobs:
        where: dict[str, Executor | None] = {"inline": None, "thread": threads, "process": procs}
        for name, ex in where.items():
            if ex is None:
                ms, stall = await _measure(lambda f=fn, a=arg: f(a), n)
            else:
                ms, stall = await _measure(lambda f=fn, a=arg, e=ex: loop.run_in_executor(e, f, a), n)
            print(f"{label:<40} {name:<8} {ms:>9.2f} {stall:>22.1f}")
    threads.shutdown()
    procs.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200, help="calls for the ordinary chat (others: 3-5)")
    args = ap.parse_args()
    asyncio.run(main_async(args.rounds))


if __name__ == "__main__":
    main()
