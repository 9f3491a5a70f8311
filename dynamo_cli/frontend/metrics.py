"""Prometheus metrics of the frontend (one registry per process). docs/metrics.md lists every series, with
its equivalent in NVIDIA Dynamo where one exists (the names are the same where the meaning is)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
_ISL_BUCKETS = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
_OSL_BUCKETS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


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
        self.queued = Gauge(
            "dynamo_frontend_queued_requests",
            "Requests waiting for an admission slot (frontend.max_inflight)",
            ["model"],
            registry=r,
        ).labels(model)
        self.rejected = Counter(
            "dynamo_frontend_rejected_requests",
            "Requests refused before any work: reason overloaded or busy (503), rate_limited (429) or "
            "unauthorized (401)",
            ["model", "reason"],
            registry=r,
        )
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
        self.cached_tokens = Histogram(
            "dynamo_frontend_cached_tokens",
            "Prompt tokens of each generated sequence served from a worker's prefix cache",
            ["model"],
            buckets=(0, *_ISL_BUCKETS),
            registry=r,
        ).labels(model)
        self.output_tokens = Counter(
            "dynamo_frontend_output_tokens", "Generated tokens", ["model"], registry=r
        ).labels(model)
        self.input_sequence_tokens = Histogram(
            "dynamo_frontend_input_sequence_tokens",
            "Prompt tokens of each generated sequence (each choice of an n > 1 request counts)",
            ["model"],
            buckets=_ISL_BUCKETS,
            registry=r,
        ).labels(model)
        self.output_sequence_tokens = Histogram(
            "dynamo_frontend_output_sequence_tokens",
            "Generated tokens of each sequence (each choice of an n > 1 request counts)",
            ["model"],
            buckets=_OSL_BUCKETS,
            registry=r,
        ).labels(model)
        self.unknown_fields = Counter(
            "dynamo_frontend_unknown_fields",
            "Request fields not recognised (ignored, as vLLM does), by name",
            ["model", "field"],
            registry=r,
        )
        self.retries = Counter(
            "dynamo_frontend_worker_retries",
            "Requests moved to another worker before starting",
            ["model"],
            registry=r,
        ).labels(model)
        self.migrations = Counter(
            "dynamo_frontend_migrations",
            "Started requests moved to another worker, by reason (worker_died, no_responders, "
            "idle_timeout, unavailable, lease_lost, aborted, stream_ended, send_failed)",
            ["model", "reason"],
            registry=r,
        )
        self.migrated = Counter(
            "dynamo_frontend_migrated_requests",
            "Requests that migrated at least once, by outcome (finished or failed)",
            ["model", "outcome"],
            registry=r,
        )
        self.workers = Gauge(
            "dynamo_frontend_model_workers", "Workers serving the model", ["model"], registry=r
        ).labels(model)
        # Disaggregated serving: what decode workers did with each prompt, and the KV that moved.
        self.prefill_decisions = Counter(
            "dynamo_disagg_prefill_decisions",
            "Where prompts were prefilled: outcome local, remote or fallback (remote failed or had no "
            "prefill worker), and the reason",
            ["model", "outcome", "reason"],
            registry=r,
        )
        self.kv_transfer_bytes = Counter(
            "dynamo_disagg_kv_transfer_bytes",
            "KV bytes moved from prefill to decode workers",
            ["model", "backend"],
            registry=r,
        )
        self.kv_transfer_seconds = Histogram(
            "dynamo_disagg_kv_transfer_seconds",
            "Time to move one request's KV (mocker; vLLM's NIXL pull happens inside the engine)",
            ["model", "backend"],
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.remote_prefill_seconds = Histogram(
            "dynamo_disagg_remote_prefill_seconds",
            "Queueing, remote prefill and KV transfer of one request, as the decode worker waited for it",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        ).labels(model)
        self.prefill_engine_seconds = Histogram(
            "dynamo_disagg_prefill_engine_seconds",
            "A remote prefill as its prefill worker timed it (the engine's queue and compute); the "
            "rest of remote_prefill_seconds went to the work queue and the reply",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        ).labels(model)
        self.prefill_queue_depth = Gauge(
            "dynamo_disagg_prefill_queue_depth",
            "Prefills queued or in progress (the JetStream work queue's messages)",
            ["model"],
            registry=r,
        ).labels(model)
        # The planner's decisions (it publishes each one; counted here so one endpoint has everything).
        self.planner_decisions = Counter(
            "dynamo_planner_decisions",
            "Scaling decisions of the planner, by worker group and direction (up or down)",
            ["group", "direction"],
            registry=r,
        )
        self.planner_target = Gauge(
            "dynamo_planner_target_replicas",
            "Workers the planner last asked for, by group",
            ["group"],
            registry=r,
        )
        self._model = model

    def count_decision(self, decision: dict) -> None:
        group, target = str(decision.get("group", "?")), int(decision.get("target", 0))
        direction = "up" if target > int(decision.get("current", 0)) else "down"
        self.planner_decisions.labels(group, direction).inc()
        self.planner_target.labels(group).set(target)

    def count_disagg(self, report: dict) -> None:
        """One decode worker's report on a request's prefill (EngineOutput.disagg)."""
        m = self._model
        self.prefill_decisions.labels(m, report.get("outcome", "?"), report.get("reason", "?")).inc()
        nbytes = report.get("kv_bytes")
        if nbytes:
            backend = str(report.get("kv_backend", "?"))
            self.kv_transfer_bytes.labels(m, backend).inc(nbytes)
            if report.get("kv_s") is not None:
                self.kv_transfer_seconds.labels(m, backend).observe(report["kv_s"])
        if report.get("remote_s") is not None:
            self.remote_prefill_seconds.observe(report["remote_s"])
        if report.get("prefill_s") is not None:
            self.prefill_engine_seconds.observe(report["prefill_s"])

    def count_tokens(self, prompt: int, cached: int, completion: int) -> None:
        """One generated sequence's tokens, once it has ended (finished, failed or cancelled)."""
        self.input_tokens.inc(prompt)
        self.cached_tokens.observe(cached)
        self.output_tokens.inc(completion)
        self.input_sequence_tokens.observe(prompt)
        self.output_sequence_tokens.observe(completion)

    def count_migration(self, reason: str) -> None:
        self.migrations.labels(self._model, reason).inc()

    def count_migrated(self, outcome: str) -> None:
        self.migrated.labels(self._model, outcome).inc()

    def count(self, endpoint: str, status: int) -> None:
        self.requests.labels(self._model, endpoint, str(status)).inc()
