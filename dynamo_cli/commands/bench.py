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
        "them side by side: `multi-round-qa --profile A --profile B ...`, which takes every option it "
        "lists (see `dynamo bench multi-round-qa --help`).",
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
        Optional[list[str]],
        typer.Option(
            help="Start this profile with `dynamo run` (private etcd/NATS, a free port), run, stop it; "
            'with its own flags in quotes ("agg --workers 2"). Given again: each in turn, side by side.',
            show_default=False,
        ),
    ] = None,
    output_dir: Annotated[
        Optional[Path],
        typer.Option(help="Write each profile's CSV, PNG and summary here.", show_default=False),
    ] = None,
    side_by_side: Annotated[
        bool, typer.Option("--side-by-side", hidden=True, help="The table even for one profile (compare).")
    ] = False,
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
    if not profile:
        if engine or sets or output_dir or side_by_side:
            raise UsageError(
                "--engine, --set and --output-dir go with deployments that --profile starts.",
                "Add --profile agg, or leave them out to measure --base-url.",
            )
        summary = measure(load, base_url, model, api_key, log_interval, json_out, output, plot_path, base_url)
    elif len(profile) > 1 or output_dir is not None or side_by_side:
        if output or plot_path:
            raise UsageError(
                "--output and --plot name one run's files; several profiles write theirs to --output-dir.",
                "Use --output-dir DIR.",
            )
        load.check()
        _side_by_side(
            profile, load, _run_flags(engine, sets, model), api_key, log_interval, json_out, output_dir
        )
        return
    else:
        with deployment(profile[0], _run_flags(engine, sets, model)) as (url, served, label):
            summary = measure(load, url, served, api_key, log_interval, json_out, output, plot_path, label)
    if json_out:
        emit_json(summary)
    else:
        typer.echo(summary_block(summary))


def _side_by_side(
    profiles: list[str],
    load: LoadOptions,
    flags: list[str],
    api_key: str | None,
    log_interval: float,
    json_out: bool,
    output_dir: Path | None,
) -> None:
    """The same workload on each profile in turn, then a table of all (or JSON)."""
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict[str, Any]] = {}
    for spec in profiles:
        out = plot_to = None
        if output_dir is not None:
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_") or "run"
            out, plot_to = output_dir / f"{stem}.csv", output_dir / f"{stem}.png"
        with deployment(spec, flags) as (url, served, label):
            summaries[spec] = measure(load, url, served, api_key, log_interval, json_out, out, plot_to, label)
        if out is not None:
            out.with_suffix(".txt").write_text(summary_block(summaries[spec]) + "\n")
    if json_out:
        emit_json({"runs": summaries})
        return
    out_console().print(compare_table(summaries))


@app.command(
    "compare",
    help=COMPARE_HELP,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def compare(
    ctx: typer.Context,
    profiles: Annotated[
        list[str],
        typer.Argument(
            metavar="PROFILE", help="Profiles to run, then any multi-round-qa option.", show_default=False
        ),
    ],
) -> None:
    """`multi-round-qa --profile P...` with every other argument as it came."""
    command = typer.main.get_command(app).get_command(ctx, "multi-round-qa")  # type: ignore[attr-defined]
    assert command is not None
    valued = {
        name for p in command.params if not getattr(p, "is_flag", False) for name in getattr(p, "opts", [])
    }
    args, given, rest = list(profiles) + list(ctx.args), [], []
    i = 0
    while i < len(args):  # the bare words are the profiles; an option that takes a value takes the next word
        word = args[i]
        if word.startswith("-"):
            rest.append(word)
            if word in valued and "=" not in word and i + 1 < len(args):
                rest.append(args[i + 1])
                i += 1
        else:
            given += ["--profile", word]
        i += 1
    if not given:
        raise UsageError("compare needs at least one profile.", "e.g. dynamo bench compare agg disagg")
    command.main(
        args=[*given, "--side-by-side", *rest], prog_name="dynamo bench compare", standalone_mode=False
    )


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
