"""`dynamo planner profile`: what one worker sustains within the TTFT and ITL targets.

Two sweeps against a deployment of one worker, each a series of open-loop steps at a rising request
rate (x1.5 per step) that stops at the first step missing its target, then halves the gap between the
last passing rate and that one twice:

- prefill: prompts of ``isl`` tokens answered with one token; a step passes while its TTFT p90 is
  within the target. prefill_tokens_per_s = the last passing rate x the prompt tokens per request.
- decode: the same prompts answered with ``osl`` tokens (a decode step's time grows with the KV the
  running requests hold, prompts included); a step passes while the p90 of the requests' mean ITL,
  and their TTFT p90, are within the targets. decode_tokens_per_s = the last passing rate x ``osl``.

An aggregated worker does both kinds of work, so the SLA policy adds the two shares up (the decode
sweep already paid for its prefills: the sum errs on the side of more workers). Profile with the
prompt and output lengths of the traffic to plan for.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dynamo_cli.bench.http import Endpoint, chat_once
from dynamo_cli.bench.workload import filler

GROWTH = 1.5
BISECTIONS = 2


@dataclass(frozen=True)
class ProfileSpec:
    ttft_s: float
    itl_s: float
    isl: int = 1000  # prompt tokens of the prefill sweep (roughly: words of filler text)
    osl: int = 128  # output tokens of the decode sweep
    step_s: float = 10.0
    start_rps: float = 1.0
    max_rps: float = 64.0
    api_key: str | None = None


@dataclass(frozen=True)
class Step:
    rate: float
    requests: int
    failed: int
    ttft_p90_s: float
    itl_p90_s: float | None
    prompt_tokens: float  # mean per request
    passed: bool


@dataclass
class Sweep:
    name: str
    steps: list[Step] = field(default_factory=list)

    @property
    def best(self) -> Step | None:
        """The fastest passing step below the slowest missing one."""
        missed = min((s.rate for s in self.steps if not s.passed), default=float("inf"))
        passed = [s for s in self.steps if s.passed and s.rate < missed]
        return max(passed, key=lambda s: s.rate) if passed else None

    @property
    def capped(self) -> bool:
        """Every step passed: the worker sustains at least the last rate (raise --max-rps to know more)."""
        return bool(self.steps) and all(s.passed for s in self.steps)


def _p90(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(0.9 * len(s)))] if s else float("inf")


async def run_step(base_url: str, model: str, rate: float, spec: ProfileSpec, *, decode: bool) -> Step:
    ep = Endpoint.parse(base_url)
    rng = random.Random(int(rate * 1000) + decode)
    n = max(3, round(rate * spec.step_s))
    words = spec.isl  # decode holds the KV of real prompts too: the sweep's load is the workload's shape
    out_tokens = spec.osl if decode else 1

    async def one(i: int, t0: float) -> tuple[float, float | None, int] | None:
        await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        body = {
            "model": model,
            "messages": [
                {"role": "user", "content": f"{rate} {i} " + filler(rng, words)}
            ],  # no shared prefix
            "max_tokens": out_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        s = await chat_once(ep, body, timeout=max(60.0, 20 * spec.ttft_s), api_key=spec.api_key)
        if s is None or s.ttft is None:
            return None
        return s.ttft, s.mean_itl, s.prompt_tokens or 0

    t0 = time.monotonic()
    got = await asyncio.gather(*(one(i, t0) for i in range(n)))
    ok = [g for g in got if g is not None]
    ttft90 = _p90([g[0] for g in ok])
    itls = [g[1] for g in ok if g[1] is not None]
    itl90 = _p90(itls) if decode else None
    failed = n - len(ok)
    passed = failed == 0 and ttft90 <= spec.ttft_s and (itl90 is None or itl90 <= spec.itl_s)
    prompt = sum(g[2] for g in ok) / len(ok) if ok else 0.0
    return Step(rate, n, failed, ttft90, itl90, prompt, passed)


async def sweep(
    base_url: str, model: str, spec: ProfileSpec, *, decode: bool, on_step: Callable[[Step], None]
) -> Sweep:
    result = Sweep("decode" if decode else "prefill")
    rate = spec.start_rps
    while rate <= spec.max_rps * (1 + 1e-9):
        step = await run_step(base_url, model, rate, spec, decode=decode)
        result.steps.append(step)
        on_step(step)
        await asyncio.sleep(min(2.0, spec.step_s / 2))  # let the last step's requests leave the engine
        if not step.passed:
            break
        rate *= GROWTH
    # Then narrow the gap between the last passing rate and the first missing one (two halvings).
    for _ in range(BISECTIONS if result.best is not None and not result.capped else 0):
        assert result.best is not None
        lo, hi = (
            result.best.rate,
            min(s.rate for s in result.steps if not s.passed and s.rate > result.best.rate),
        )
        step = await run_step(base_url, model, (lo + hi) / 2, spec, decode=decode)
        result.steps.append(step)
        on_step(step)
        await asyncio.sleep(min(2.0, spec.step_s / 2))
    return result


@dataclass(frozen=True)
class WorkerCapacity:
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    prefill: Sweep
    decode: Sweep


async def profile_worker(
    base_url: str, model: str, spec: ProfileSpec, on_step: Callable[[str, Step], None]
) -> WorkerCapacity:
    pre = await sweep(base_url, model, spec, decode=False, on_step=lambda s: on_step("prefill", s))
    dec = await sweep(base_url, model, spec, decode=True, on_step=lambda s: on_step("decode", s))
    if pre.best is None or dec.best is None:
        which = "prefill" if pre.best is None else "decode"
        raise ValueError(
            f"one worker misses the targets even at {spec.start_rps:g} request/s in the {which} sweep"
        )
    return WorkerCapacity(pre.best.rate * pre.best.prompt_tokens, dec.best.rate * spec.osl, pre, dec)
