"""The mocker's real clock against its timing model: how late a simulated step ends for real.

    .venv/bin/python -m benchmarks.mocker_timing [--repeats 5] [--speedup 1]

For prompts of several lengths, one request of one token at a time on a fresh MockerEngine (the
default, event-loop clock): the modelled prefill (docs/mocker.md) and the measured time to the first
token (median of --repeats), and the overshoot. Then the same 2000-token prompt with all but its last
token's KV from a prefill worker (``remote_tokens``), as a decode worker gets it: what that saves for
real. The unit tests check the modelled step times with a fake clock; this is where the real figures
live.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from itertools import count

from dynamo_cli.config.models import MockerConfig
from dynamo_cli.engines.mocker import MockerEngine
from dynamo_cli.engines.mocker.timing import prefill_ms
from dynamo_cli.transport.wire import EngineRequest, SamplingOptions

VOCAB = 32000
_ids = count()


def _prompt(n: int) -> list[int]:
    return [(i * 7) % VOCAB for i in range(n)]


async def _first_token_s(cfg: MockerConfig, prompt: list[int], remote_tokens: int = 0) -> float:
    """Seconds from submitting the request to its first token, on a fresh engine."""
    engine = MockerEngine(cfg, vocab_size=VOCAB, eos_token_ids=[2])
    await engine.start()
    req = EngineRequest(f"bench-{next(_ids)}", prompt, SamplingOptions(max_tokens=1, temperature=0.0))
    if remote_tokens:
        req.kv_transfer_params = {"remote_tokens": remote_tokens}
    try:
        t0 = time.perf_counter()
        async for _ in engine.generate(req):
            return time.perf_counter() - t0
        raise RuntimeError("no output")
    finally:
        await engine.close()


async def _bench(args: argparse.Namespace) -> None:
    cfg = MockerConfig(speedup_ratio=args.speedup)
    print(f"speedup {args.speedup:g}, median of {args.repeats}")
    print(f"{'prompt':>8} {'modelled ms':>12} {'measured ms':>12} {'overshoot ms':>13}")
    for n in (16, 256, 1000, 2000, 4000, 8000):
        modelled = prefill_ms(n, cfg.prefill_ms, cfg.speedup_ratio)
        took = statistics.median([await _first_token_s(cfg, _prompt(n)) for _ in range(args.repeats)])
        print(f"{n:>8} {modelled:>12.2f} {took * 1000:>12.2f} {took * 1000 - modelled:>13.2f}")
    p = _prompt(2000)
    local = statistics.median([await _first_token_s(cfg, p) for _ in range(args.repeats)])
    remote = statistics.median([await _first_token_s(cfg, p, 1999) for _ in range(args.repeats)])
    print(f"2000 tokens, first token: local prefill {local * 1000:.2f} ms, with 1999 tokens' KV remote "
          f"{remote * 1000:.2f} ms (saves {(local - remote) * 1000:.2f} ms)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="Requests per prompt length (the median counts).")
    ap.add_argument("--speedup", type=float, default=1.0, help="mocker.speedup_ratio")
    asyncio.run(_bench(ap.parse_args()))


if __name__ == "__main__":
    main()
