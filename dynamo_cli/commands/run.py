"""`dynamo run PROFILE`: the whole deployment on this machine."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dynamo_cli.commands import options as o

HELP = f"""Bring up a whole deployment: etcd and NATS (spawned if none answer), workers, router, frontend.

Examples:

  dynamo run agg                                 # vLLM with the embedded SmolLM2-135M-Instruct

  dynamo run agg --model Qwen/Qwen3-0.6B --gpus 0-1   # any vLLM model; 2 GPUs = tensor parallel 2

  dynamo run agg --engine mocker                 # simulated engine, no GPU needed

  dynamo run agg --engine mocker --workers 4 --port 8080

  dynamo run agg --set router.mode=random --set mocker.speedup_ratio=10

  dynamo run disagg --prefill-gpus 0-3 --decode-gpus 4-5   # 1 prefill worker (TP 4), 1 decode (TP 2)

  dynamo run disagg --prefill-workers 2 --decode-workers 2 --engine mocker

  dynamo run agg --engine mocker --planner --set planner.workers.max=4   # add/remove workers with load

  dynamo run ./my-profile.yaml

{o.PRECEDENCE_HELP}
"""


def run(
    profile: o.ProfileArg,
    sets: o.Sets = None,
    model: o.Model = None,
    engine: o.Engine = None,
    namespace: o.Namespace = None,
    served_model_name: Annotated[
        Optional[str], typer.Option(help="Name clients use for the model.", show_default=False)
    ] = None,
    host: Annotated[
        Optional[str], typer.Option(help="Frontend bind address (default: 127.0.0.1).", show_default=False)
    ] = None,
    port: Annotated[
        Optional[int], typer.Option("--port", "-p", help="Frontend port (default: 8000).", show_default=False)
    ] = None,
    workers: Annotated[
        Optional[int],
        typer.Option("--workers", "-w", help="Aggregated worker processes.", show_default=False),
    ] = None,
    router_mode: Annotated[
        Optional[str], typer.Option(help="round-robin or random.", show_default=False)
    ] = None,
    speedup: Annotated[
        Optional[float], typer.Option("--speedup", help="Mocker speedup ratio.", show_default=False)
    ] = None,
    gpus: Annotated[
        Optional[str],
        typer.Option(
            help="GPUs for the workers, e.g. 0-3 (split evenly; a worker's share is its tensor parallel).",
            show_default=False,
        ),
    ] = None,
    prefill_workers: Annotated[
        Optional[int], typer.Option(help="Disagg: prefill worker processes.", show_default=False)
    ] = None,
    decode_workers: Annotated[
        Optional[int], typer.Option(help="Disagg: decode worker processes (= --workers).", show_default=False)
    ] = None,
    prefill_gpus: Annotated[
        Optional[str],
        typer.Option(
            help="Disagg: GPUs of the prefill workers, e.g. 0-3 (one worker, TP 4).", show_default=False
        ),
    ] = None,
    decode_gpus: Annotated[
        Optional[str],
        typer.Option(help="Disagg: GPUs of the decode workers, e.g. 4-5 (= --gpus).", show_default=False),
    ] = None,
    prefill_tp: Annotated[
        Optional[int],
        typer.Option(
            help="Disagg: tensor parallel per prefill worker (splits --prefill-gpus).", show_default=False
        ),
    ] = None,
    decode_tp: Annotated[
        Optional[int],
        typer.Option(
            help="Disagg: tensor parallel per decode worker (splits --decode-gpus).", show_default=False
        ),
    ] = None,
    remote_prefill: Annotated[
        Optional[bool],
        typer.Option(
            "--remote-prefill/--no-remote-prefill",
            help="Disagg: send long prompts to prefill workers (disagg.remote_prefill).",
            show_default=False,
        ),
    ] = None,
    planner: Annotated[
        Optional[bool],
        typer.Option(
            "--planner/--no-planner",
            help="Scale the worker groups with the planner within planner.workers / planner.prefill_workers "
            "bounds (planner.enabled).",
            show_default=False,
        ),
    ] = None,
    tool_call_parser: Annotated[
        Optional[str],
        typer.Option(
            help="How model text becomes tool_calls: auto, hermes, llama3_json, mistral, pythonic or "
            "qwen3_coder (frontend.tool_call_parser; auto picks from the chat template).",
            show_default=False,
        ),
    ] = None,
    reasoning_parser: Annotated[
        Optional[str],
        typer.Option(
            help="Split <think> reasoning into reasoning_content: deepseek_r1 or qwen3 "
            "(frontend.reasoning_parser; default off).",
            show_default=False,
        ),
    ] = None,
    json_output: o.Json = False,
) -> int:
    from dynamo_cli.config.loader import load_config
    from dynamo_cli.console import err_console
    from dynamo_cli.deployment.launcher import run_deployment
    from dynamo_cli.lifecycle import configure_logging

    flags = {
        **o.common_flags(model, engine, namespace),
        "served_model_name": served_model_name,
        "frontend.host": host,
        "frontend.port": port,
        "workers.count": workers,
        "router.mode": router_mode,
        "mocker.speedup_ratio": speedup,
        "workers.gpus": decode_gpus or gpus,
        "prefill_workers.count": prefill_workers,
        "prefill_workers.gpus": prefill_gpus,
        "prefill_workers.tensor_parallel_size": prefill_tp,
        "workers.tensor_parallel_size": decode_tp,
        "disagg.remote_prefill": remote_prefill,
        "planner.enabled": planner,
        "frontend.tool_call_parser": tool_call_parser,
        "frontend.reasoning_parser": reasoning_parser,
    }
    if decode_workers is not None:
        flags["workers.count"] = decode_workers
    cfg = load_config(profile, sets=sets, flags=flags)
    configure_logging(cfg.log_level)
    return run_deployment(cfg, err_console(), json_output=json_output)
