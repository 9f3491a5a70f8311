"""How long a simulated scheduler step takes, in milliseconds.

prefill_ms(t) = (a*t^2 + b*t + c) / speedup for t new (uncached) tokens in the step;
decode_ms(u) = max(1, d2*u^2 + d1*u + d0) / speedup for KV utilisation u = used / total blocks.
A step costs its prefill part (if it prefills anything) plus its decode part (if anything decodes).
The coefficients and the speedup come from ``MockerConfig``; see docs/mocker.md. The scheduler waits
each step out on a ``Clock``: the event loop's by default, a fake one in tests.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from dynamo_cli.config.models import MockerConfig

Coeffs = tuple[float, float, float]


def prefill_ms(tokens: int, coeffs: Coeffs, speedup_ratio: float = 1.0) -> float:
    a, b, c = coeffs
    return (a * tokens * tokens + b * tokens + c) / speedup_ratio


def decode_ms(kv_usage: float, coeffs: Coeffs, speedup_ratio: float = 1.0) -> float:
    d2, d1, d0 = coeffs
    return max(1.0, d2 * kv_usage * kv_usage + d1 * kv_usage + d0) / speedup_ratio


@dataclass(frozen=True, slots=True)
class TimingModel:
    prefill: Coeffs
    decode: Coeffs
    speedup_ratio: float = 1.0

    @classmethod
    def from_config(cls, cfg: MockerConfig) -> TimingModel:
        return cls(prefill=cfg.prefill_ms, decode=cfg.decode_ms, speedup_ratio=cfg.speedup_ratio)

    def prefill_ms(self, tokens: int) -> float:
        return prefill_ms(tokens, self.prefill, self.speedup_ratio)

    def decode_ms(self, kv_usage: float) -> float:
        return decode_ms(kv_usage, self.decode, self.speedup_ratio)

    def step_ms(self, prefill_tokens: int, num_decodes: int, kv_usage: float) -> float:
        """One step with ``prefill_tokens`` new prompt tokens and ``num_decodes`` decoding requests."""
        ms = self.prefill_ms(prefill_tokens) if prefill_tokens > 0 else 0.0
        if num_decodes > 0:
            ms += self.decode_ms(kv_usage)
        return ms


class Clock(Protocol):
    """Where the scheduler reads the time and waits out a simulated step (seconds)."""

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The running event loop's clock: a simulated step takes its modelled time for real."""

    def time(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
