"""Settings valid one by one but senseless together (config/checks.py, which `dynamo run` warns about
at start-up): seed 001's prefill workers that never get work because remote prefill is off."""

from __future__ import annotations

from collections.abc import Iterator

from dynamo_cli.config.checks import disagg_findings
from dynamo_cli.doctor.checks import Context, Result
from dynamo_cli.doctor.model import context_length


def describe(ctx: Context) -> str:
    cfg = ctx.cfg
    router = f"router {cfg.router.mode}"
    if not cfg.disaggregated:
        return f"aggregated: {cfg.workers.size} {cfg.engine} worker(s), {router}"
    d = cfg.disagg
    if not d.remote_prefill:
        remote = "remote prefill OFF"
    elif d.conditional_disagg:
        remote = f"remote prefill for prompts over {d.max_local_prefill_length} uncached tokens"
    else:
        remote = "remote prefill for every prompt"
    return (
        f"disaggregated: {cfg.prefill_workers.size} prefill + {cfg.workers.size} decode {cfg.engine} "
        f"worker(s), {remote}, {router}"
    )


def check_disagg(ctx: Context) -> Iterator[Result]:
    """Each finding is a WARN: the deployment starts and serves, but part of it does nothing."""
    findings = disagg_findings(ctx.cfg, context_length(ctx))
    for f in findings:
        yield Result("disagg", "WARN", f"{f.key}: {f.message}", f.hint)
    if not findings:
        yield Result("profile", "PASS", describe(ctx))
