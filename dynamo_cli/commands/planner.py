"""`dynamo planner profile`: measure one worker for the SLA policy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from dynamo_cli.commands import options as o

app = typer.Typer(help="The planner's tools (the planner itself runs in `dynamo run --planner`).")

HELP = "\n\n".join(
    [
        "Measure what one worker of a profile sustains within a TTFT and an ITL target, for the planner's "
        "sla policy: starts `dynamo run PROFILE --workers 1` (private etcd/NATS, free port), sweeps a "
        "prefill-only load and a full load (prompts and answers) at rising request rates (x1.5 per step) "
        "until a step misses its target, narrows that gap twice, stops it, and prints the planner.sla "
        "settings to use.",
        "Examples:",
        "  dynamo planner profile agg --engine mocker --ttft-ms 300 --itl-ms 30",
        "  dynamo planner profile agg --engine mocker --set mocker.speedup_ratio=10 --step-s 3 -o sla.yaml",
        "  dynamo planner profile --base-url http://127.0.0.1:8000/v1   # a running one-worker deployment",
        "Then: dynamo run PROFILE --planner --set planner.policy=sla "
        "--set planner.sla.prefill_tokens_per_s=... (or merge the written YAML into the profile).",
        o.PRECEDENCE_HELP,
    ]
)


@app.command("profile", help=HELP)
def profile(
    profile: Annotated[
        Optional[str], typer.Argument(help="Profile to measure (agg, disagg, a path).")
    ] = "agg",
    sets: o.Sets = None,
    model: o.Model = None,
    engine: o.Engine = None,
    ttft_ms: Annotated[
        Optional[float],
        typer.Option(
            help="TTFT target (p90 of a step), ms (default: planner.sla.ttft_ms).", show_default=False
        ),
    ] = None,
    itl_ms: Annotated[
        Optional[float],
        typer.Option(
            help="ITL target (p90 of the requests' mean ITL), ms (default: planner.sla.itl_ms).",
            show_default=False,
        ),
    ] = None,
    isl: Annotated[int, typer.Option(help="Prompt length of the prefill sweep, ~tokens.")] = 1000,
    osl: Annotated[int, typer.Option(help="Output tokens per request of the decode sweep.")] = 128,
    step_s: Annotated[float, typer.Option(help="Seconds of load per step.")] = 10.0,
    max_rps: Annotated[float, typer.Option(help="Highest request rate tried.")] = 64.0,
    base_url: Annotated[
        Optional[str],
        typer.Option(help="Measure a running deployment instead of starting one.", show_default=False),
    ] = None,
    api_key: Annotated[
        Optional[str],
        typer.Option(help="Bearer token for --base-url (default: $OPENAI_API_KEY).", show_default=False),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Write the planner.sla settings as YAML.", show_default=False),
    ] = None,
    json_output: o.Json = False,
) -> None:
    from dynamo_cli.bench.profiling import ProfileSpec
    from dynamo_cli.bench.profiling_cli import run_profile
    from dynamo_cli.config.models import PlannerSlaConfig

    sla = PlannerSlaConfig()
    ttft_s, itl_s = (ttft_ms or sla.ttft_ms) / 1000, (itl_ms or sla.itl_ms) / 1000
    key = api_key or os.environ.get("OPENAI_API_KEY")
    spec = ProfileSpec(ttft_s, itl_s, isl, osl, step_s, max_rps=max_rps, api_key=key)
    extra: list[str] = []
    for s in sets or []:
        extra += ["--set", s]
    if model:
        extra += ["--model", model]
    if engine:
        extra += ["--engine", engine]
    run_profile(spec, profile or "agg", extra, base_url=base_url, output=output, json_output=json_output)
