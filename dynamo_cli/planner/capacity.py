"""What one worker sustains within the latency targets, and how that estimate learns from the deployment.

- ``MockerCapacity``: for the mocker, computed from its own timing model (docs/mocker.md) in a steady
  state: at ``rate`` requests/s of ``isl`` prompt and ``osl`` output tokens, a scheduler step of ``s``
  seconds decodes the ``rate*osl*s`` requests running (Little's law), which hold ``isl + osl/2`` tokens
  of KV each, and prefills with probability ``rate*s`` (the prompts that arrived during it); ``s`` is
  the fixed point of the mean step time. ITL is ``s``; TTFT is half a step of waiting plus its
  prompt's prefill. A prefill worker serves prompts one after another: TTFT is the prefill plus M/D/1
  queueing. A decode worker's prompts come computed. No profiling run.
- ``ProfiledCapacity``: from `dynamo planner profile` (prompt and output tokens/s at the targets).
- ``Refinement``: the deployment's own evidence. Each interval that served traffic compares the
  latency it got with the targets at the load each worker carried, and scales the capacity by a
  factor kept between 0.25 and 4 (an exponential average, quicker to fall than to rise).

Everything here is a pure function of its inputs, so a recorded run replays exactly in a test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

from dynamo_cli.config.models import MockerConfig
from dynamo_cli.engines.mocker.timing import TimingModel

Kind = Literal["agg", "prefill", "decode"]  # what a worker does: both, or one side of disaggregation


@dataclass(frozen=True)
class Targets:
    ttft_s: float
    itl_s: float


class Capacity(Protocol):
    def max_rate(self, isl: float, osl: float, kind: Kind) -> float:
        """Requests/s one worker serves within the targets, for requests of that shape."""
        ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Latency:
    ttft_s: float
    itl_s: float


@dataclass(frozen=True)
class MockerCapacity:
    cfg: MockerConfig
    targets: Targets

    def latency(self, rate: float, isl: float, osl: float, kind: Kind) -> Latency | None:
        """Steady-state TTFT and ITL of one worker at ``rate``; None if it cannot keep up at all."""
        timing = TimingModel.from_config(self.cfg)
        budget = self.cfg.max_num_batched_tokens
        kv_tokens = self.cfg.num_blocks * self.cfg.block_size
        chunks = max(1, math.ceil(isl / budget))
        prompt_s = sum(timing.prefill_ms(min(budget, int(isl) - k * budget)) for k in range(chunks)) / 1000
        if kind == "prefill":  # a prompt at a time, queued: M/D/1 waiting on top of its own prefill
            busy = rate * prompt_s
            if busy >= 1.0:
                return None
            return Latency(prompt_s * (1 + busy / (2 * (1 - busy))), 0.0)
        prefills = kind == "agg"
        s = timing.decode_ms(0.0) / 1000
        for _ in range(200):
            running = rate * osl * s
            if (rate * s * isl if prefills else 0.0) + running > budget:  # more than a step may schedule
                return None
            held = running * (isl + osl / 2)
            if held > kv_tokens:  # the KV cache cannot hold what runs: preemption, no steady state
                return None
            # Arrivals are spread out: a step prefills with probability rate*s (the prompts that came
            # during it), and every step decodes what runs.
            arrivals = rate * s
            ms = timing.decode_ms(held / kv_tokens)
            if prefills and arrivals > 0:
                ms += min(1.0, arrivals) * timing.prefill_ms(int(isl * max(1.0, arrivals)))
            nxt = ms / 1000
            if abs(nxt - s) < 1e-6:
                break
            if nxt > 100 * max(self.targets.ttft_s, self.targets.itl_s):
                return None
            s = nxt
        # TTFT: half a step of waiting, then the steps that prefill its prompt (each at least a step).
        ttft = 0.5 * s + (max(s, prompt_s) if prefills else s)
        return Latency(ttft, s)

    def max_rate(self, isl: float, osl: float, kind: Kind) -> float:
        isl, osl = max(1.0, isl), max(1.0, osl)

        def ok(rate: float) -> bool:
            lat = self.latency(rate, isl, osl, kind)
            if lat is None:
                return False
            return lat.ttft_s <= self.targets.ttft_s and (
                kind == "prefill" or lat.itl_s <= self.targets.itl_s
            )

        lo, hi = 0.0, 1.0
        while ok(hi) and hi < 1e6:
            lo, hi = hi, hi * 2
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return lo

    def describe(self) -> str:
        return f"the mocker's timing model (speedup {self.cfg.speedup_ratio:g})"


@dataclass(frozen=True)
class ProfiledCapacity:
    prefill_tokens_per_s: float
    decode_tokens_per_s: float

    def max_rate(self, isl: float, osl: float, kind: Kind) -> float:
        prefill_s = max(1.0, isl) / self.prefill_tokens_per_s  # one request's share of a worker-second
        decode_s = max(1.0, osl) / self.decode_tokens_per_s
        per_request = {"agg": prefill_s + decode_s, "prefill": prefill_s, "decode": decode_s}[kind]
        return 1.0 / per_request

    def describe(self) -> str:
        return (
            f"profile: {self.prefill_tokens_per_s:.0f} prompt and {self.decode_tokens_per_s:.0f} output "
            "tokens/s a worker"
        )


@dataclass
class Refinement:
    """A factor on a Capacity from what the deployment observed: below 1 when latency came out worse
    than predicted for the load each worker had, above 1 when a worker carried more than predicted
    within the targets."""

    targets: Targets
    factor: float = 1.0
    lowest: float = 0.25
    highest: float = 4.0
    history: list[float] = field(default_factory=list)

    def observe(
        self, per_worker_rate: float, predicted_max: float, ttft_s: float | None, itl_s: float | None
    ) -> float:
        """Update from one interval: ``per_worker_rate`` served with that latency, against a predicted
        ``predicted_max`` (the unrefined capacity). Returns the new factor."""
        if per_worker_rate <= 0 or predicted_max <= 0 or (ttft_s is None and itl_s is None):
            return self.factor
        worst = max(
            (ttft_s or 0.0) / self.targets.ttft_s if ttft_s is not None else 0.0,
            (itl_s or 0.0) / self.targets.itl_s if itl_s is not None else 0.0,
        )
        load = per_worker_rate / (predicted_max * self.factor)  # how full the refined model says it was
        # What this interval says the capacity is: the load it carried, scaled by how far from the
        # targets the latency came out (a miss: below what it carried; room to spare: above).
        if worst > 1.0:
            seen = self.factor * max(load, 0.1) / worst
            self.factor = 0.5 * self.factor + 0.5 * seen  # quick to fall
        elif load > 0.5:
            seen = self.factor * load / max(worst, 0.5)
            if seen > self.factor:
                self.factor = 0.8 * self.factor + 0.2 * seen  # slow to rise
        self.factor = min(self.highest, max(self.lowest, self.factor))
        self.history.append(self.factor)
        return self.factor
