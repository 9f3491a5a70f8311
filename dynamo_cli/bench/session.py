"""One benchmark run as a user starts it: against an endpoint, or against a deployment it brings up."""

from __future__ import annotations

import asyncio
import os
import shlex
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dynamo_cli.bench.http import REQUEST_TIMEOUT_S, HttpError
from dynamo_cli.bench.multi_round import LoadResult, LoadSpec, MultiRoundLoad, Record, served_model
from dynamo_cli.bench.report import pct, plot, summarize, summary_block, write_csv
from dynamo_cli.bench.workload import Workload, load_sharegpt
from dynamo_cli.console import err_console
from dynamo_cli.errors import RuntimeFailure, StartupError, UsageError


@dataclass(frozen=True)
class LoadOptions:
    """The workload flags, as production-stack's multi-round QA names them."""

    num_users: int = 10
    num_rounds: int = 5
    qps: float = 0.5
    shared_system_prompt: int = 1000
    user_history_prompt: int = 2000
    answer_len: int = 100
    time: float | None = None
    init_user_id: int = 0
    request_with_user_id: bool = False
    sharegpt: bool = False
    ignore_eos: bool = False
    timeout: float = REQUEST_TIMEOUT_S

    def check(self) -> None:
        for name in ("num_users", "num_rounds", "answer_len"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1.", "Pass a positive count.")
        if self.qps <= 0:
            raise UsageError("--qps must be greater than 0.", "e.g. --qps 2 (requests a second, all users)")
        if self.time is not None and self.time <= 0:
            raise UsageError(
                "--time must be greater than 0.", "Leave it out to run every user's rounds once."
            )
        if min(self.shared_system_prompt, self.user_history_prompt) < 0:
            raise UsageError("Prompt lengths cannot be negative.", "Pass 0 or more tokens.")

    def spec(self, base_url: str, model: str, api_key: str | None) -> LoadSpec:
        return LoadSpec(
            base_url=base_url,
            model=model,
            num_users=self.num_users,
            num_rounds=self.num_rounds,
            qps=self.qps,
            duration=self.time,
            init_user_id=self.init_user_id,
            request_with_user_id=self.request_with_user_id,
            ignore_eos=self.ignore_eos,
            api_key=api_key,
            timeout=self.timeout,
        )

    def workload(self) -> Workload:
        conversations = None
        if self.sharegpt:
            try:
                conversations = load_sharegpt(20_000)
            except FileNotFoundError as e:
                raise UsageError(str(e), "Run scripts/install.sh, or leave out --sharegpt.") from None
        return Workload(
            num_rounds=self.num_rounds,
            shared_system_prompt=self.shared_system_prompt,
            user_history_prompt=self.user_history_prompt,
            answer_len=self.answer_len,
            sharegpt=conversations,
        )


def run_load(
    opts: LoadOptions,
    base_url: str,
    model: str | None,
    *,
    api_key: str | None,
    live: bool,
    log_interval: float,
    label: str = "",
) -> LoadResult:
    """Runs the workload against ``base_url`` (".../v1") with a live display; returns what it measured."""
    opts.check()
    workload = opts.workload()
    if model is None:
        try:
            model = asyncio.run(served_model(base_url, api_key))
        except (HttpError, ValueError) as e:
            raise StartupError(str(e), "Is the server up? Pass --base-url http://HOST:PORT/v1.") from None
    spec = opts.spec(base_url, model, api_key)
    try:
        load = MultiRoundLoad(spec, workload)
    except ValueError as e:
        raise UsageError(str(e), "See dynamo bench multi-round-qa --help.") from None
    # ShareGPT conversations may have fewer rounds than asked for: the total is not known up front
    expected = None if opts.time or workload.sharegpt else opts.num_users * opts.num_rounds
    view = _LiveView(load, expected, label or f"{model} @ {base_url}")
    con = err_console()

    async def main() -> LoadResult:
        ticker = asyncio.create_task(_tick(view, log_interval), name="bench-display")
        try:
            return await load.run(view.add)
        finally:
            ticker.cancel()

    if live:
        with Live(view, console=con, refresh_per_second=4, transient=True) as view.live:
            result = asyncio.run(main())
    else:
        result = asyncio.run(main())
    if result.records and len(result.failed) == len(result.records):
        raise RuntimeFailure(
            f"all {len(result.records)} requests failed; the first: {result.failed[0].error}",
            "Check the model name (--model) and the server's log.",
        )
    return result


async def _tick(view: _LiveView, log_interval: float) -> None:
    last_log = time.monotonic()
    while True:
        await asyncio.sleep(0.25)
        view.refresh()
        if log_interval > 0 and time.monotonic() - last_log >= log_interval:
            last_log = time.monotonic()
            block = summary_block(summarize(view.load.result))
            if view.live is not None:
                view.live.console.print(block, highlight=False)
            else:
                err_console().print(block, highlight=False)


class _LiveView:
    """The rich display: a progress bar over time or requests, and the last seconds' latencies."""

    def __init__(self, load: MultiRoundLoad, expected: int | None, label: str) -> None:
        self.load = load
        self.expected = expected
        self.live: Live | None = None
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[what]}"),
            TimeElapsedColumn(),
        )
        total = load.spec.duration if load.spec.duration else expected
        self.task = self.progress.add_task(label, total=total, what="")
        self.recent: list[Record] = []

    def add(self, rec: Record) -> None:
        self.recent.append(rec)

    def refresh(self) -> None:
        res, now = self.load.result, self.load.now()
        self.recent = [r for r in self.recent if now - r.finish < 10]
        done = len(res.records)
        if self.load.spec.duration:
            what = f"{min(now, self.load.spec.duration):.0f}/{self.load.spec.duration:.0f} s"
            self.progress.update(self.task, completed=min(now, self.load.spec.duration), what=what)
        else:
            self.progress.update(self.task, completed=done, what=f"{done}/{self.expected or '?'} requests")

    def __rich__(self) -> Group:
        res = self.load.result
        ok = [r for r in self.recent if r.error is None]
        ttft = pct([r.ttft for r in ok if r.ttft is not None], 0.5)
        itl = pct([g for r in ok for g in r.itls], 0.5)
        t = Table.grid(padding=(0, 2))
        t.add_row(
            f"in flight [bold]{res.in_flight}[/]",
            f"done [bold]{len(res.finished)}[/]",
            f"failed [bold]{len(res.failed)}[/]",
            f"users behind [bold]{len(res.late_rounds)}[/]",
            f"last 10 s: {len(ok) / 10:.2f} req/s, TTFT p50 "
            f"{'n/a' if ttft is None else f'{ttft * 1000:.0f} ms'}, ITL p50 "
            f"{'n/a' if itl is None else f'{itl * 1000:.1f} ms'}",
        )
        return Group(self.progress, t)


START_TIMEOUT_S = 600.0  # a deployment's start, a model download included


@contextmanager
def deployment(
    spec: str, extra: list[str], timeout: float = START_TIMEOUT_S
) -> Iterator[tuple[str, str, str]]:
    """`dynamo run SPEC EXTRA...` on private etcd/NATS and a free port; yields (base_url, model, label).

    SPEC is a profile name or path, optionally followed by `dynamo run` flags ("agg --workers 2")."""
    from dynamo_cli.deployment.handle import start

    argv = shlex.split(spec)
    if not argv:
        raise UsageError("An empty profile was given.", "e.g. --profile agg")
    con = err_console()
    with tempfile.TemporaryDirectory(prefix="dynamo-bench-") as tmp:
        with con.status(f"starting dynamo run {spec} …"):
            t0 = time.monotonic()
            try:
                dep = start(Path(tmp), *argv, *extra, timeout=timeout)
            except RuntimeError as e:
                raise StartupError(
                    f"`dynamo run {spec}` did not start: {str(e)[-1500:]}",
                    "Run the same `dynamo run` by hand to see why.",
                ) from None
        con.print(f"[dim]dynamo run {spec}: ready in {time.monotonic() - t0:.1f} s at {dep.url}[/]")
        try:
            yield dep.base_url, dep.model, spec
        finally:
            with con.status(f"stopping dynamo run {spec} …"):
                try:
                    dep.stop()
                except Exception:  # stopping must not hide the benchmark's result
                    dep.kill()


def measure(
    load: LoadOptions,
    url: str,
    model: str | None,
    api_key: str | None,
    log_interval: float,
    json_out: bool,
    output: Path | None,
    plot_path: Path | None,
    label: str,
) -> dict[str, Any]:
    """Run the workload against ``url``; write the CSV and PNG asked for; return the summary."""
    live = not json_out and err_console().is_terminal
    result = run_load(
        load,
        url,
        model,
        api_key=api_key or os.environ.get("OPENAI_API_KEY"),
        live=live,
        log_interval=log_interval,
        label=label,
    )
    summary = summarize(result)
    if output is not None:
        write_csv(result.records, output)
    if plot_path is not None:
        plot(result.records, plot_path, title=f"multi-round QA: {label}")
    return summary
