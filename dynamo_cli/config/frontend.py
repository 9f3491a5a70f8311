"""The frontend's profile keys: HTTP serving, input limits, parsers, and network safety."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dynamo_cli.config.base import StrictModel

REDACTED = "<redacted>"  # what is shown or written instead of an API key
ENV_DEFAULT = "DYNAMO_API_KEY"  # its keys count whatever the profile says (as VLLM_API_KEY does)


def is_reference(entry: str) -> bool:
    """An api_keys entry that names where keys are (env:NAME, file:PATH), not a key."""
    return entry.startswith(("env:", "file:"))


def literal_keys(entries: list[str]) -> int:
    """How many entries are keys written out (from a flag or a profile) rather than references."""
    return sum(1 for e in entries if not is_reference(e))


def redacted(entries: list[str]) -> list[str]:
    """The entries as they may be shown or written: references stand, keys written out do not."""
    return [e if is_reference(e) else REDACTED for e in entries]


class FrontendConfig(StrictModel):
    host: str = Field("127.0.0.1", description="HTTP bind address (0.0.0.0 to serve other machines).")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 = pick a free one).")
    request_timeout_s: float = Field(600.0, gt=0, description="Longest a request may run end to end.")
    first_response_timeout_s: float = Field(
        5.0, gt=0, description="How long a worker has to accept a request before another is tried."
    )
    stream_idle_timeout_s: float = Field(
        5.0, gt=0, description="A worker silent this long (no token, no keepalive) is treated as dead."
    )
    max_retries: int = Field(2, ge=0, le=10, description="Workers tried anew before a request's first token.")
    migration_limit: int = Field(
        3, ge=0, le=10, description="Times a started request may move to another worker (0: never)."
    )
    fast_tokenizer: bool = Field(
        True,
        description="Encode byte-level BPE with tiktoken when it provably matches the model's tokenizer.",
    )
    max_body_mb: float = Field(
        16.0,
        gt=0,
        le=1024,
        description="Largest request body in MiB; a larger one gets a 413 before it is parsed. 16 MiB holds "
        "a full 1M-token context JSON-escaped, with tools and history (docs/limits.md).",
    )
    max_json_values: int = Field(
        262144,
        ge=1024,
        description="Most JSON values (strings, numbers, arrays, objects...) in one request body: parsing "
        "costs per value, so a body of many tiny ones is refused.",
    )
    max_messages: int = Field(2048, ge=1, description="Most messages in one chat request.")
    max_stop: int = Field(16, ge=0, description="Most stop strings (and stop token ids) in one request.")
    max_stop_chars: int = Field(1024, ge=1, description="Longest stop string, in characters.")
    max_logit_bias: int = Field(1024, ge=0, description="Most entries in one request's logit_bias map.")
    max_tools: int = Field(128, ge=0, description="Most tools in one chat request.")
    max_schema_kb: int = Field(1024, ge=1, description="Largest tools array or response_format schema (KiB).")
    max_restarts: int = Field(
        5, ge=0, description="Restarts of a dead frontend in supervisor.restart_window_s before all stop."
    )
    tool_call_parser: Literal["auto", "hermes", "llama3_json", "mistral", "pythonic", "qwen3_coder"] = Field(
        "auto",
        description="How the model's text becomes tool_calls with tool_choice auto. auto: from the chat "
        "template where it is unambiguous; hermes for a template that ignores tools (the tools are then "
        "rendered into the system prompt in that format).",
    )
    reasoning_parser: Literal["deepseek_r1", "qwen3"] | None = Field(
        None, description="Split <think>...</think> out of the output into reasoning_content (none: off)."
    )

    # ---- network safety (docs/security.md) ----
    api_keys: list[str] = Field(
        default_factory=list,
        description="Keys clients must send as `Authorization: Bearer KEY` on /v1 routes; none: open. "
        "Each entry is env:NAME (that variable's keys, comma-separated), file:PATH (a key a line), or a "
        "key itself (warned: it ends up in files and shell history). DYNAMO_API_KEY, when set, adds its "
        "keys.",
    )
    metrics_auth: bool = Field(False, description="/metrics needs a key too (/health and /live stay open).")
    ssl_certfile: str | None = Field(None, description="TLS certificate (PEM); set to serve https.")
    ssl_keyfile: str | None = Field(None, description="TLS private key (PEM), if not in ssl_certfile.")
    ssl_ca_certs: str | None = Field(
        None, description="CA bundle (PEM) that client certificates must chain to: mutual TLS."
    )
    max_inflight: int | None = Field(
        None,
        ge=1,
        description="Requests admitted at once; the rest wait in a bounded queue. None: inflight_per_worker "
        "times the workers serving now.",
    )
    inflight_per_worker: int = Field(
        256, ge=1, description="With max_inflight unset: requests admitted per worker serving now."
    )
    max_queued: int = Field(
        256, ge=0, description="Requests that may wait for an admission slot; beyond it, 503 at once."
    )
    max_loop_lag_ms: float = Field(
        250.0,
        gt=0,
        description="New requests get a 503 while the frontend's event loop runs this far behind: its own "
        "CPU is the bottleneck, and refusing costs a tenth of serving.",
    )
    max_accept_queue: int = Field(
        512,
        ge=1,
        description="New requests get a 503 while more connections than this wait in the kernel for the "
        "frontend to accept them: its own CPU is the bottleneck (Linux; elsewhere only max_loop_lag_ms).",
    )
    queue_timeout_s: float = Field(
        30.0, gt=0, description="Longest a request waits for an admission slot before a 503."
    )
    rate_limit_rps: float | None = Field(
        None, gt=0, description="Requests per second per API key (one shared bucket without keys); none: off."
    )
    rate_limit_burst: int | None = Field(
        None,
        ge=1,
        description="Requests a key may send at once above its rate (default: the rate, at least 1).",
    )

    @model_validator(mode="after")
    def _check_tls(self) -> FrontendConfig:
        if (self.ssl_keyfile or self.ssl_ca_certs) and not self.ssl_certfile:
            raise ValueError("frontend.ssl_keyfile and ssl_ca_certs need frontend.ssl_certfile")
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_certfile else "http"
