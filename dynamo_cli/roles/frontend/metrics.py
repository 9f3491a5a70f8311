"""Prometheus metrics of the frontend (one registry per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class FrontendMetrics:
    def __init__(self, model: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "dynamo_frontend_requests",
            "HTTP requests by endpoint and outcome",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.inflight = Gauge(
            "dynamo_frontend_inflight_requests", "Requests in flight", ["model"], registry=r
        ).labels(model)
        self.ttft = Histogram(
            "dynamo_frontend_time_to_first_token_seconds",
            "Time to first token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        ).labels(model)
        self.itl = Histogram(
            "dynamo_frontend_inter_token_latency_seconds",
            "Time between tokens",
            ["model"],
            buckets=_ITL_BUCKETS,
            registry=r,
        ).labels(model)
        self.duration = Histogram(
            "dynamo_frontend_request_duration_seconds",
            "Request duration",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        ).labels(model)
        self.input_tokens = Counter(
            "dynamo_frontend_input_tokens", "Prompt tokens", ["model"], registry=r
        ).labels(model)
        self.cached_tokens = Counter(
            "dynamo_frontend_cached_tokens",
            "Prompt tokens served from a worker's prefix cache",
            ["model"],
            registry=r,
        ).labels(model)
        self.output_tokens = Counter(
            "dynamo_frontend_output_tokens", "Generated tokens", ["model"], registry=r
        ).labels(model)
        self.retries = Counter(
            "dynamo_frontend_worker_retries",
            "Requests moved to another worker before starting",
            ["model"],
            registry=r,
        ).labels(model)
        self.workers = Gauge(
            "dynamo_frontend_workers", "Workers serving the model", ["model"], registry=r
        ).labels(model)
        self._model = model

    def count(self, endpoint: str, status: int) -> None:
        self.requests.labels(self._model, endpoint, str(status)).inc()
