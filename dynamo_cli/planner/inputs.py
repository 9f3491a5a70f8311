"""What the planner sees each interval: the frontend's metrics and the workers' load reports.

- The frontend's Prometheus endpoint (/metrics): requests, prompt and output tokens, TTFT and ITL
  histograms, the prefill queue depth. Counters are turned into per-interval figures by differencing
  two scrapes.
- The workers' load reports (NATS, the subject routers listen on): each worker's KV-cache use and
  queue, kept per live worker (discovery says which are live; a worker reports only on change).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from dynamo_cli.config.models import Group
from dynamo_cli.planner.policy import Observation
from dynamo_cli.transport.wire import LoadMetrics

_REQUESTS = "dynamo_frontend_requests"
_INFLIGHT = "dynamo_frontend_inflight_requests"
_INPUT = "dynamo_frontend_input_tokens"
_OUTPUT = "dynamo_frontend_output_tokens"
_TTFT = "dynamo_frontend_time_to_first_token_seconds"
_ITL = "dynamo_frontend_inter_token_latency_seconds"
_QUEUE = "dynamo_disagg_prefill_queue_depth"


@dataclass(frozen=True)
class FrontendSample:
    """Cumulative figures of one scrape (counters since the frontend started)."""

    finished: float = 0.0  # requests answered (any status)
    inflight: float = 0.0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    ttft_sum: float = 0.0
    ttft_count: float = 0.0
    itl_sum: float = 0.0
    itl_count: float = 0.0
    prefill_queue: float = 0.0


def parse_metrics(text: str) -> FrontendSample:
    """The figures the planner needs from a frontend's /metrics text (all models summed)."""
    v: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            v[s.name] = v.get(s.name, 0.0) + s.value
    return FrontendSample(
        finished=v.get(_REQUESTS + "_total", 0.0),
        inflight=v.get(_INFLIGHT, 0.0),
        input_tokens=v.get(_INPUT + "_total", 0.0),
        output_tokens=v.get(_OUTPUT + "_total", 0.0),
        ttft_sum=v.get(_TTFT + "_sum", 0.0),
        ttft_count=v.get(_TTFT + "_count", 0.0),
        itl_sum=v.get(_ITL + "_sum", 0.0),
        itl_count=v.get(_ITL + "_count", 0.0),
        prefill_queue=v.get(_QUEUE, 0.0),
    )


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


@dataclass
class WorkerLoads:
    """The latest load report of each live worker."""

    latest: dict[int, LoadMetrics] = field(default_factory=dict)

    def update(self, worker_id: int, load: LoadMetrics) -> None:
        self.latest[worker_id] = load

    def kv_utilization(self, live: list[int]) -> float:
        """Mean KV-cache use of the live workers (a worker not heard from yet counts as idle)."""
        if not live:
            return 0.0
        return sum(self.latest[i].kv_usage if i in self.latest else 0.0 for i in live) / len(live)

    def forget_except(self, live: list[int]) -> None:
        keep = set(live)
        self.latest = {i: m for i, m in self.latest.items() if i in keep}


class Inputs:
    """Builds one Observation per interval from two frontend scrapes and the workers' loads."""

    def __init__(self, loads: WorkerLoads | None = None) -> None:
        self.loads = loads or WorkerLoads()
        self._last: FrontendSample | None = None
        self._last_at = 0.0

    def observe(
        self, sample: FrontendSample, at: float, replicas: dict[Group, int], live_workers: list[int]
    ) -> Observation:
        prev, prev_at = self._last, self._last_at
        self._last, self._last_at = sample, at
        self.loads.forget_except(live_workers)
        kv = self.loads.kv_utilization(live_workers)
        if prev is None or at <= prev_at or sample.finished < prev.finished:  # first, or frontend restarted
            return Observation(at, replicas, prefill_queue_depth=sample.prefill_queue, kv_utilization=kv)
        dt = at - prev_at
        finished = sample.finished - prev.finished
        started = sample.ttft_count - prev.ttft_count
        arrived = max(0.0, finished + sample.inflight - prev.inflight)
        return Observation(
            at,
            replicas,
            request_rate=arrived / dt,
            avg_isl=_ratio(sample.input_tokens - prev.input_tokens, started) or 0.0,
            avg_osl=_ratio(sample.output_tokens - prev.output_tokens, finished) or 0.0,
            ttft_s=_ratio(sample.ttft_sum - prev.ttft_sum, started),
            itl_s=_ratio(sample.itl_sum - prev.itl_sum, sample.itl_count - prev.itl_count),
            prefill_queue_depth=sample.prefill_queue,
            kv_utilization=kv,
        )


async def scrape(client: httpx.AsyncClient, url: str) -> FrontendSample:
    r = await client.get(f"{url.rstrip('/')}/metrics")
    r.raise_for_status()
    return parse_metrics(r.text)


def describe(obs: Observation) -> str:
    """One line for the log: what the interval looked like."""
    parts = [f"{obs.request_rate:.2f} req/s"]
    if obs.avg_isl or obs.avg_osl:
        parts.append(f"ISL {obs.avg_isl:.0f} OSL {obs.avg_osl:.0f}")
    for name, value in (("TTFT", obs.ttft_s), ("ITL", obs.itl_s)):
        if value is not None and math.isfinite(value):
            parts.append(f"{name} {value * 1000:.0f} ms")
    parts.append(f"KV {obs.kv_utilization:.0%}")
    if "prefill_workers" in obs.replicas:
        parts.append(f"prefill queue {obs.prefill_queue_depth:.0f}")
    return ", ".join(parts)


def observation_json(obs: Observation) -> dict[str, object]:
    """An Observation as plain JSON values (seconds, rounded)."""
    r = lambda v: None if v is None else round(v, 4)  # noqa: E731
    return {
        "replicas": dict(obs.replicas),
        "request_rate": r(obs.request_rate),
        "avg_isl": r(obs.avg_isl),
        "avg_osl": r(obs.avg_osl),
        "ttft_s": r(obs.ttft_s),
        "itl_s": r(obs.itl_s),
        "prefill_queue_depth": obs.prefill_queue_depth,
        "kv_utilization": r(obs.kv_utilization),
    }
