"""`dynamo bench`: measure a deployment with production-stack's multi-round QA workload."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dynamo_cli.bench.report import compare_table, summary_block
from dynamo_cli.bench.session import LoadOptions, deployment, measure
from dynamo_cli.commands import options as o
from dynamo_cli.console import emit_json, out_console
from dynamo_cli.errors import UsageError

app = typer.Typer(help="Benchmark a deployment (production-stack's multi-round QA).", no_args_is_help=True)

MRQA_HELP = "\n\n".join(
    [
        "Multi-round QA against an OpenAI-compatible endpoint: production-stack's benchmark (seed 003's).",
        "Each user keeps a conversation: a system prompt shared by all users, a history of its own, "
        "then one question per round, each answer appended before the next round. Together the users "
        "send --qps requests a second (each user one every num-users/qps seconds).",
        "Without --time every user asks all its rounds once. With --time the run starts ramped up (users "
        "already mid-conversation, as production-stack does), new users join as old ones finish, and no "
        "request is launched after --time seconds.",
        "Examples:",
        "  dynamo bench multi-round-qa --base-url http://127.0.0.1:8000/v1      # a running deployment",
        "  dynamo bench multi-round-qa --profile agg --engine mocker --time 60  # start, measure, stop",
        "  dynamo bench multi-round-qa --num-users 15 --num-rounds 20 --qps 2 --user-history-prompt 20000 "
        "--output run.csv --plot run.png",
        "  dynamo bench multi-round-qa --base-url http://HOST:8000/v1 --model Qwen/Qwen3-0.6B --sharegpt",
    ]
)

COMPARE_HELP = "\n\n".join(
    [
        "Run the same multi-round QA workload against several profiles, one after the other, and print "
        "them side by side.",
        "Each PROFILE is a profile name or path, optionally with its own `dynamo run` flags in quotes; "
        "--engine, --model and --set apply to all.",
        "Examples:",
        "  dynamo bench compare agg disagg --engine mocker --num-users 8 --qps 4",
        '  dynamo bench compare "agg --workers 2" "disagg --prefill-workers 1 --decode-workers 1" '
        "--engine mocker --time 120 --output-dir results/",
    ]
)

LOAD = LoadOptions()  # the workload's defaults (they live on LoadOptions)
NumUsers = Annotated[int, typer.Option(help="Users active at once.")]
NumRounds = Annotated[int, typer.Option(help="Rounds (questions) per user.")]
Qps = Annotated[float, typer.Option(help="Requests a second, all users together.")]
SharedSystemPrompt = Annotated[int, typer.Option(help="Tokens of system prompt shared by every user.")]
UserHistoryPrompt = Annotated[int, typer.Option(help="Tokens of history of each user's own.")]
AnswerLen = Annotated[int, typer.Option(help="max_tokens of each answer.")]
Time = Annotated[
    Optional[float],
    typer.Option(
        "--time",
        help="Run this many seconds in steady state (default: every user's rounds once).",
        show_default=False,
    ),
]
InitUserId = Annotated[int, typer.Option(help="First user id (give each bench process its own range).")]
RequestWithUserId = Annotated[bool, typer.Option(help="Send each request's user id in the `user` field.")]
ShareGpt = Annotated[bool, typer.Option(help="Questions and answer lengths from ShareGPT conversations.")]
IgnoreEos = Annotated[
    bool, typer.Option(help="Ask for exactly answer-len tokens (vLLM and dynamo accept it).")
]
Timeout = Annotated[float, typer.Option(help="Seconds a request may take before it counts as failed.")]


def _load(given: dict[str, Any]) -> LoadOptions:
    """The workload flags among a command's arguments, as one LoadOptions."""
    return LoadOptions(**{name: given[name] for name in LoadOptions.__dataclass_fields__})


Output = Annotated[
    Optional[Path], typer.Option(help="Write one CSV row per request here.", show_default=False)
]
Plot = Annotated[
    Optional[Path],
    typer.Option("--plot", help="Write a PNG of TTFT and ITL over time here.", show_default=False),
]
LogInterval = Annotated[float, typer.Option(help="Print the summary so far every N seconds (0: never).")]
ApiKey = Annotated[
    Optional[str], typer.Option(help="Bearer token (default: $OPENAI_API_KEY).", show_default=False)
]


@app.command("multi-round-qa", help=MRQA_HELP)
def multi_round_qa(
    base_url: Annotated[
        str, typer.Option(help="The endpoint's OpenAI base URL.")
    ] = "http://127.0.0.1:8000/v1",
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            help="Model name in requests (default: the first the endpoint lists); with --profile, "
            "the model the deployment serves.",
            show_default=False,
        ),
    ] = None,
    profile: Annotated[
        Optional[str],
        typer.Option(
            help="Start this profile with `dynamo run` (private etcd/NATS, a free port), run, stop it.",
            show_default=False,
        ),
    ] = None,
    engine: o.Engine = None,
    sets: o.Sets = None,
    api_key: ApiKey = None,
    output: Output = None,
    plot_path: Plot = None,
    log_interval: LogInterval = 30.0,
    json_out: o.Json = False,
    num_users: NumUsers = LOAD.num_users,
    num_rounds: NumRounds = LOAD.num_rounds,
    qps: Qps = LOAD.qps,
    shared_system_prompt: SharedSystemPrompt = LOAD.shared_system_prompt,
    user_history_prompt: UserHistoryPrompt = LOAD.user_history_prompt,
    answer_len: AnswerLen = LOAD.answer_len,
    time: Time = LOAD.time,
    init_user_id: InitUserId = LOAD.init_user_id,
    request_with_user_id: RequestWithUserId = LOAD.request_with_user_id,
    sharegpt: ShareGpt = LOAD.sharegpt,
    ignore_eos: IgnoreEos = LOAD.ignore_eos,
    timeout: Timeout = LOAD.timeout,
) -> None:
    load = _load(locals())
    _check_outputs(output, plot_path)
    if profile is None:
        if engine or sets:
            raise UsageError(
                "--engine and --set configure a deployment that --profile starts.",
                "Add --profile agg, or leave them out to measure --base-url.",
            )
        summary = measure(load, base_url, model, api_key, log_interval, json_out, output, plot_path, base_url)
    else:
        with deployment(profile, _run_flags(engine, sets, model)) as (url, served, label):
            summary = measure(load, url, served, api_key, log_interval, json_out, output, plot_path, label)
    if json_out:
        emit_json(summary)
    else:
        typer.echo(summary_block(summary))


@app.command("compare", help=COMPARE_HELP)
def compare(
    profiles: Annotated[
        list[str], typer.Argument(help="Profiles to run, e.g. agg disagg.", show_default=False)
    ],
    engine: o.Engine = None,
    model: o.Model = None,
    sets: o.Sets = None,
    output_dir: Annotated[
        Optional[Path], typer.Option(help="Write each run's CSV, PNG and summary here.", show_default=False)
    ] = None,
    log_interval: LogInterval = 0.0,
    json_out: o.Json = False,
    num_users: NumUsers = LOAD.num_users,
    num_rounds: NumRounds = LOAD.num_rounds,
    qps: Qps = LOAD.qps,
    shared_system_prompt: SharedSystemPrompt = LOAD.shared_system_prompt,
    user_history_prompt: UserHistoryPrompt = LOAD.user_history_prompt,
    answer_len: AnswerLen = LOAD.answer_len,
    time: Time = LOAD.time,
    init_user_id: InitUserId = LOAD.init_user_id,
    request_with_user_id: RequestWithUserId = LOAD.request_with_user_id,
    sharegpt: ShareGpt = LOAD.sharegpt,
    ignore_eos: IgnoreEos = LOAD.ignore_eos,
    timeout: Timeout = LOAD.timeout,
) -> None:
    load = _load(locals())
    load.check()
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict[str, Any]] = {}
    for spec in profiles:
        out = plot_to = None
        if output_dir is not None:
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_") or "run"
            out, plot_to = output_dir / f"{stem}.csv", output_dir / f"{stem}.png"
        with deployment(spec, _run_flags(engine, sets, model)) as (url, served, label):
            summaries[spec] = measure(load, url, served, None, log_interval, json_out, out, plot_to, label)
        if out is not None:
            out.with_suffix(".txt").write_text(summary_block(summaries[spec]) + "\n")
    if json_out:
        emit_json({"runs": summaries})
        return
    out_console().print(compare_table(summaries))


def _run_flags(engine: str | None, sets: list[str] | None, model: str | None) -> list[str]:
    flags = ["--engine", engine] if engine else []
    flags += ["--model", model] if model else []
    for item in sets or []:
        flags += ["--set", item]
    return flags


def _check_outputs(*paths: Path | None) -> None:
    for p in paths:
        if p is not None and not p.parent.exists():
            raise UsageError(f"Folder {p.parent} does not exist (for {p}).", "Create it, or write elsewhere.")
