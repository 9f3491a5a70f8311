"""Settings that are valid one by one but make no sense together: warned about at start-up (and by
`dynamo doctor`). Seed 001's user ran prefill workers that never got work because remote prefill
was off; such a state must be impossible to miss."""

from __future__ import annotations

from dataclasses import dataclass

from dynamo_cli.config.models import DynamoConfig


@dataclass(frozen=True, slots=True)
class Finding:
    key: str  # the setting at fault
    message: str
    hint: str


def longest_prompt(cfg: DynamoConfig, context_length: int | None = None) -> int | None:
    """The longest prompt a worker can take, when the settings tell."""
    if cfg.engine == "mocker":
        return cfg.mocker.num_blocks * cfg.mocker.block_size - 1
    limit = cfg.vllm.max_model_len or context_length
    return limit - 1 if limit else None


def disagg_findings(cfg: DynamoConfig, context_length: int | None = None) -> list[Finding]:
    d = cfg.disagg
    prefill = cfg.prefill_workers.size
    out: list[Finding] = []
    if prefill and not d.remote_prefill:
        out.append(
            Finding(
                "disagg.remote_prefill",
                f"{prefill} prefill worker(s) are configured but disagg.remote_prefill is off: decode "
                "workers prefill every prompt themselves and the prefill workers will get no work",
                "set disagg.remote_prefill: true (or pass --remote-prefill), or drop the prefill workers",
            )
        )
    if not d.remote_prefill:
        return out
    if not prefill:
        out.append(
            Finding(
                "prefill_workers.count",
                "remote prefill is on but this deployment starts no prefill workers: every request is "
                "prefilled locally until one joins (dynamo role prefill)",
                "pass --prefill-workers N (or --prefill-gpus), or set disagg.remote_prefill: false",
            )
        )
    if d.conditional_disagg and d.max_prefill_queue_size == 0:
        out.append(
            Finding(
                "disagg.max_prefill_queue_size",
                "disagg.max_prefill_queue_size is 0: the prefill queue is never shorter than that, so no "
                "prompt is ever prefilled remotely",
                "set it to at least 1 (the reference system's default is 2)",
            )
        )
    longest = longest_prompt(cfg, context_length)
    if d.conditional_disagg and longest is not None and d.max_local_prefill_length >= longest:
        out.append(
            Finding(
                "disagg.max_local_prefill_length",
                f"disagg.max_local_prefill_length is {d.max_local_prefill_length} but no prompt can be "
                f"longer than {longest} tokens here, so no prompt is ever prefilled remotely",
                f"set it below {longest} (the reference system's default is 1000)",
            )
        )
    return out
