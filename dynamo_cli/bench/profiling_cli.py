"""Running `dynamo planner profile`: a deployment of one worker, the two sweeps, the result as settings."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import yaml

from dynamo_cli.bench.http import HttpError
from dynamo_cli.bench.multi_round import served_model
from dynamo_cli.bench.profiling import ProfileSpec, Step, WorkerCapacity, profile_worker
from dynamo_cli.bench.session import deployment
from dynamo_cli.console import emit_json, err_console
from dynamo_cli.errors import RuntimeFailure, StartupError


@contextlib.contextmanager
def _target(
    profile: str, extra: list[str], base_url: str | None, api_key: str | None
) -> Iterator[tuple[str, str]]:
    if base_url is not None:
        try:
            model = asyncio.run(served_model(base_url, api_key))
        except (HttpError, OSError) as e:
            raise StartupError(f"cannot reach {base_url}: {e}", hint="is the deployment running?") from None
        yield base_url, model
        return
    one = ["--workers", "1", "--no-planner", *extra]
    with deployment(profile, one) as (url, model, _):
        yield url, model


def settings(cap: WorkerCapacity, spec: ProfileSpec) -> dict[str, object]:
    """The planner section that uses what was measured."""
    return {
        "planner": {
            "policy": "sla",
            "sla": {
                "ttft_ms": round(spec.ttft_s * 1000, 3),
                "itl_ms": round(spec.itl_s * 1000, 3),
                "prefill_tokens_per_s": round(cap.prefill_tokens_per_s, 1),
                "decode_tokens_per_s": round(cap.decode_tokens_per_s, 1),
            },
        }
    }


def run_profile(
    spec: ProfileSpec,
    profile: str,
    extra: list[str],
    *,
    base_url: str | None,
    output: Path | None,
    json_output: bool,
) -> None:
    con = err_console()

    def show(sweep: str, s: Step) -> None:
        itl = f", ITL p90 {s.itl_p90_s * 1000:.1f} ms" if s.itl_p90_s is not None else ""
        mark = "[green]ok[/]" if s.passed else "[red]missed[/]"
        fails = f", {s.failed} failed" if s.failed else ""
        con.print(
            f"{sweep:>7} {s.rate:6.2f} req/s ({s.requests} requests, {s.prompt_tokens:.0f} prompt tokens): "
            f"TTFT p90 {s.ttft_p90_s * 1000:.0f} ms{itl}{fails} {mark}",
            highlight=False,
        )

    with _target(profile, extra, base_url, spec.api_key) as (url, model):
        try:
            cap = asyncio.run(profile_worker(url, model, spec, show))
        except ValueError as e:
            raise RuntimeFailure(str(e), hint="loosen --ttft-ms / --itl-ms, or lower --isl / --osl") from None
    for sweep in (cap.prefill, cap.decode):
        if sweep.capped:
            con.print(
                f"[yellow]note:[/] every {sweep.name} step passed; the worker sustains at least this much "
                "(raise --max-rps to find its limit)"
            )
    result = settings(cap, spec)
    text = yaml.safe_dump(result, sort_keys=False)
    if output is not None:
        output.write_text(text)
        con.print(f"wrote {output}")
    if json_output:
        emit_json(
            {
                **result["planner"]["sla"],  # type: ignore[index]
                "steps": {sw.name: [s.__dict__ for s in sw.steps] for sw in (cap.prefill, cap.decode)},
            }
        )
    else:
        print(text, end="")
