"""Typed profile models. Every default lives here and nowhere else (the frontend's in config/frontend.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from dynamo_cli.config.base import StrictModel
from dynamo_cli.config.frontend import FrontendConfig
from dynamo_cli.config.gpus import parse_gpu_list
from dynamo_cli.config.keys import underscored
from dynamo_cli.config.tracing import TracingConfig

EngineName = Literal["mocker", "vllm"]
RouterMode = Literal["kv", "round-robin", "random", "least-loaded"]


class InfraConfig(StrictModel):
    etcd: str = Field(
        "auto",
        description="'auto': use etcd on 127.0.0.1:2379 if it answers, else spawn one; 'spawn': always "
        "spawn a private one; or an endpoint like http://host:2379 that must be reachable.",
    )
    nats: str = Field(
        "auto",
        description="'auto': use NATS on 127.0.0.1:4222 if it answers (JetStream on), else spawn one; "
        "'spawn': always spawn; or a URL like nats://host:4222 that must be reachable.",
    )
    lease_ttl_s: int = Field(
        10, ge=2, le=300, description="Discovery lease TTL; a dead process vanishes after it."
    )
    listen: str = Field(
        "127.0.0.1",
        description="Where a spawned etcd and NATS listen. Another address lets other machines join "
        "(`dynamo run` prints how); both servers then require credentials it generates.",
    )


class RouterConfig(StrictModel):
    mode: RouterMode = Field("round-robin", description="How the router picks a worker for a request.")
    replicas: int = Field(
        1, ge=0, le=64, description="Router processes; 0 embeds the router in the frontend."
    )
    seed: int | None = Field(None, description="Seed for random choices (tests).")
    overlap_weight: float = Field(
        4.0, ge=0.0, description="kv mode: weight of prefill work against decode load in the cost."
    )
    temperature: float = Field(
        0.0, ge=0.0, description="kv mode: 0 picks the cheapest worker; > 0 samples (softmax over cost)."
    )
    kv_events: bool = Field(
        True,
        description="Workers publish KV cache events. Off: the router guesses what workers cache from "
        "its own decisions (approximate mode, with a warning).",
    )
    approx_ttl_s: float = Field(120.0, gt=0, description="Approximate mode: how long a routed prefix counts.")
    max_restarts: int = Field(
        5, ge=0, description="Restarts of a dead router in supervisor.restart_window_s before all stop."
    )


# Worker groups, named as in the profile: `workers` (aggregated or decode) and `prefill_workers`.
Group = Literal["workers", "prefill_workers"]


class WorkerGroupConfig(StrictModel):
    count: int = Field(1, ge=0, le=1024, description="Worker processes in this group.")
    gpus: str | None = Field(
        None, description="GPU ids for the group, e.g. '0-3' (split evenly among workers)."
    )
    tensor_parallel_size: int | None = Field(
        None,
        ge=1,
        description="GPUs per worker; with gpus set, the group has len(gpus) / tensor_parallel_size "
        "workers and count is not used.",
    )
    max_restarts: int = Field(
        3, ge=0, description="Restarts of a dead worker in supervisor.restart_window_s before all stop."
    )

    @field_validator("gpus")
    @classmethod
    def _check_gpus(cls, v: str | None) -> str | None:
        if v is not None:
            parse_gpu_list(v)
        return v

    @model_validator(mode="after")
    def _check_tp(self) -> WorkerGroupConfig:
        if self.gpus and self.tensor_parallel_size:
            n = len(parse_gpu_list(self.gpus))
            if n % self.tensor_parallel_size:
                raise ValueError(
                    f"{n} GPU(s) cannot be split into workers of tensor parallel {self.tensor_parallel_size}"
                )
        return self

    @property
    def size(self) -> int:
        """How many workers the group really has."""
        if self.gpus and self.tensor_parallel_size:
            return len(parse_gpu_list(self.gpus)) // self.tensor_parallel_size
        return self.count


class DisaggConfig(StrictModel):
    """Disaggregated serving. Keys as seed 001 spells them (remote-prefill, ...) work too."""

    remote_prefill: bool = Field(
        False,
        description="Send prefills to prefill workers at all. Off: decode workers prefill everything "
        "themselves and prefill workers get no work.",
    )
    conditional_disagg: bool = Field(
        True,
        description="Prefill remotely only when it pays off (long uncached prompt, short queue); "
        "off: every request is prefilled remotely.",
    )
    max_local_prefill_length: int = Field(
        1000,
        ge=0,
        description="Uncached prompt tokens (after the decode worker's own prefix hit) up to which the "
        "decode worker prefills locally.",
    )
    max_prefill_queue_size: int = Field(
        16,
        ge=0,
        description="Remote prefill only while fewer prefills than this are queued or running (a prefill "
        "worker runs up to 8 at once; scale it with the prefill workers).",
    )
    prefill_timeout_s: float = Field(
        30.0, gt=0, description="A remote prefill not done by then is dropped and prefilled locally."
    )
    kv_lease_s: int = Field(
        15,
        ge=1,
        description="vLLM: how long a prefill engine keeps a prompt's KV for its decode engine (extended "
        "while the decode engine queues the request). A decode engine pulls only well inside the lease "
        "(the check runs where the pull starts) and otherwise prefills the prompt itself.",
    )
    redelivery_s: float = Field(
        5.0,
        gt=0,
        description="Queued prefill work taken by a prefill worker that dies before finishing it goes "
        "to another one after this long.",
    )
    transfer: Literal["auto", "nixl", "tcp"] = Field(
        "auto", description="Mocker KV transfer: NIXL when installed (auto), or a TCP socket path."
    )
    transfer_arena_mib: int = Field(
        256, ge=16, description="Mocker: host memory per worker for KV in transit (staged or received)."
    )

    @model_validator(mode="before")
    @classmethod
    def _seed_spelling(cls, data: object) -> object:
        return underscored(data)


class MockerConfig(StrictModel):
    block_size: int = Field(16, ge=1, le=1024, description="Tokens per KV block.")
    num_blocks: int = Field(16384, ge=16, description="KV blocks in the simulated cache.")
    max_num_seqs: int = Field(256, ge=1, description="Most requests running at once.")
    max_num_batched_tokens: int = Field(8192, ge=16, description="Token budget of one scheduler step.")
    enable_prefix_caching: bool = Field(True, description="Reuse cached prompt blocks across requests.")
    speedup_ratio: float = Field(
        1.0, gt=0, description="Divides every simulated duration; 1000 makes the engine nearly free."
    )
    vocab_size: int | None = Field(None, ge=2, description="Sampled token range (default: the model's).")
    eos_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="Chance per output token of emitting EOS (unless ignore_eos)."
    )
    # Timing model, in ms (see docs/mocker.md): prefill(t) = a*t^2 + b*t + c for t new tokens in a step;
    # decode step = d2*u^2 + d1*u + d0 for KV utilisation u, floored at 1 ms.
    prefill_ms: tuple[float, float, float] = Field((4.21e-7, 0.01518, 16.5), description="Prefill a, b, c.")
    decode_ms: tuple[float, float, float] = Field((-25.74, 54.01, 5.74), description="Decode d2, d1, d0.")

    @model_validator(mode="after")
    def _check(self) -> MockerConfig:
        if self.max_num_batched_tokens < self.block_size:
            raise ValueError("max_num_batched_tokens must be at least block_size")
        return self


class VllmConfig(StrictModel):
    block_size: int | None = Field(None, description="KV block size (default 16 on GPU, 128 on CPU).")
    max_model_len: int | None = Field(None, ge=16, description="Longest sequence (default: the model's).")
    tensor_parallel_size: int | None = Field(
        None, ge=1, description="GPUs per worker (default: the worker's share of its group's GPUs)."
    )
    enforce_eager: bool = Field(False, description="Skip CUDA graphs on GPU (always on for CPU).")
    cpu_kv_cache_gib: int = Field(
        1, ge=1, description="KV cache per worker on CPU, GiB (VLLM_CPU_KVCACHE_SPACE)."
    )
    extra_args: dict[str, object] = Field(default_factory=dict, description="Passed to vLLM's engine args.")


class PlannerBounds(StrictModel):
    min: int = Field(1, ge=0, le=1024, description="Fewest workers the planner keeps in the group.")
    max: int = Field(4, ge=1, le=1024, description="Most workers the planner may run in the group.")

    @model_validator(mode="after")
    def _check(self) -> PlannerBounds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class PlannerLoadConfig(StrictModel):
    """The load-based policy: thresholds, each crossed for `hysteresis` intervals before a move."""

    queue_high: float = Field(2.0, ge=0, description="Prefills queued per prefill worker before adding one.")
    queue_low: float = Field(
        0.2, ge=0, description="Prefills queued per prefill worker below which one is removed."
    )
    kv_high: float = Field(0.7, gt=0, le=1, description="Workers' mean KV-cache use before adding one.")
    kv_low: float = Field(0.3, ge=0, lt=1, description="Workers' mean KV-cache use below which one goes.")
    hysteresis: int = Field(2, ge=1, description="Intervals in a row past a threshold before acting.")
    cooldown_s: float = Field(30.0, ge=0, description="Quiet time after a group moved before it moves again.")

    @model_validator(mode="after")
    def _check(self) -> PlannerLoadConfig:
        if self.kv_low >= self.kv_high:
            raise ValueError("kv_low must be below kv_high")
        if self.queue_low >= self.queue_high:
            raise ValueError("queue_low must be below queue_high")
        return self


class PlannerSlaConfig(StrictModel):
    """The SLA-based policy: what one worker sustains within the targets (`dynamo planner profile`)."""

    ttft_ms: float = Field(500.0, gt=0, description="Time-to-first-token target.")
    itl_ms: float = Field(50.0, gt=0, description="Inter-token latency target.")
    prefill_tokens_per_s: float | None = Field(
        None, gt=0, description="Prompt tokens/s one worker prefills within the TTFT target (profiled)."
    )
    decode_tokens_per_s: float | None = Field(
        None, gt=0, description="Output tokens/s one worker generates within the ITL target (profiled)."
    )
    headroom: float = Field(0.9, gt=0, le=1, description="Plan each worker at this share of its capacity.")
    max_step: int = Field(
        4, ge=1, description="Workers a group may gain per interval (it loses one at most): up fast."
    )
    window: int = Field(6, ge=1, le=100, description="Intervals the load predictor looks back over.")
    scale_down_intervals: int = Field(
        5, ge=1, description="Intervals in a row wanting fewer workers before one is removed."
    )


class PlannerConfig(StrictModel):
    """Scales the worker groups of a deployment (issue 7): inside `dynamo run`, or on Kubernetes."""

    enabled: bool = Field(False, description="Run the planner.")
    policy: Literal["auto", "sla", "load"] = Field(
        "auto",
        description="sla: workers from the targets and what one worker serves within them (a profile, or "
        "the mocker's own timing model); load: KV-use and prefill-queue thresholds; auto: sla where that "
        "capacity is known, else load.",
    )
    interval_s: float = Field(2.0, ge=0.1, description="How often the planner observes and decides.")
    workers: PlannerBounds = Field(
        default_factory=PlannerBounds, description="Bounds of the (aggregated or decode) workers."
    )
    prefill_workers: PlannerBounds = Field(
        default_factory=PlannerBounds, description="Bounds of the prefill workers (disaggregated only)."
    )
    load: PlannerLoadConfig = Field(default_factory=PlannerLoadConfig)
    sla: PlannerSlaConfig = Field(default_factory=PlannerSlaConfig)
    frontend_url: str | None = Field(
        None, description="Where to scrape the frontend's /metrics (default: from discovery)."
    )


class SupervisorConfig(StrictModel):
    ready_timeout_s: float = Field(300.0, gt=0, description="Longest a role may take to become ready.")
    stop_timeout_s: float = Field(20.0, gt=0, description="Graceful stop per role before it is killed.")
    infra_max_restarts: int = Field(5, ge=0, description="Restarts of a spawned etcd or NATS in the window.")
    restart_window_s: float = Field(60.0, gt=0, description="Each max_restarts counts deaths this long ago.")


class DynamoConfig(StrictModel):
    """A whole deployment: what `dynamo run PROFILE` brings up."""

    namespace: str = Field("dynamo", pattern=r"^[A-Za-z0-9_-]+$", description="Isolates deployments.")
    model: str | None = Field(
        None, description="Model folder or HF id; unset = the embedded SmolLM2-135M-Instruct."
    )
    served_model_name: str | None = Field(None, description="Name clients use (default: from the model).")
    engine: EngineName = Field("mocker", description="Worker engine.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    infra: InfraConfig = Field(default_factory=InfraConfig)
    frontend: FrontendConfig = Field(default_factory=FrontendConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    workers: WorkerGroupConfig = Field(
        default_factory=WorkerGroupConfig,
        description="Workers the router sends requests to (the decode workers when disaggregated).",
    )
    prefill_workers: WorkerGroupConfig = Field(
        default_factory=lambda: WorkerGroupConfig(count=0),
        description="Prefill workers of a disaggregated deployment (0: none).",
    )
    disagg: DisaggConfig = Field(default_factory=DisaggConfig)
    mocker: MockerConfig = Field(default_factory=MockerConfig)
    vllm: VllmConfig = Field(default_factory=VllmConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)

    @model_validator(mode="after")
    def _check_planner(self) -> DynamoConfig:
        if not self.planner.enabled:
            return self
        s = self.planner.sla
        profiled = s.prefill_tokens_per_s and s.decode_tokens_per_s
        if self.planner.policy == "sla" and self.engine != "mocker" and not profiled:
            raise ValueError(
                "the sla policy needs planner.sla.prefill_tokens_per_s and decode_tokens_per_s for "
                f"engine {self.engine}: measure them with `dynamo planner profile`"
            )
        groups = [("workers", self.workers)]
        if self.disaggregated:
            groups.append(("prefill_workers", self.prefill_workers))
        for key, group in groups:
            b: PlannerBounds = getattr(self.planner, key)
            if not b.min <= group.size <= b.max:
                raise ValueError(
                    f"{key} starts with {group.size} worker(s), outside planner.{key} bounds {b.min}..{b.max}"
                )
        return self

    @property
    def disaggregated(self) -> bool:
        """Separate prefill and decode workers (even if remote prefill is off: seed 001's trap)."""
        return self.disagg.remote_prefill or self.prefill_workers.size > 0
