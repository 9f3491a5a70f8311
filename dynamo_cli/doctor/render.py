"""Doctor's report for people: a table of checks and a verdict, on stdout."""

from __future__ import annotations

from rich import box
from rich.markup import escape
from rich.table import Table

from dynamo_cli.console import out_console
from dynamo_cli.doctor.checks import Report

_STYLE = {"PASS": "bold green", "WARN": "bold yellow", "FAIL": "bold red", "INFO": "dim"}


def render(profile: str, report: Report) -> None:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("status", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for r in report.results:
        detail = escape(r.detail)
        if r.fix and r.status != "PASS":
            detail += f"\n[dim]{'hint' if r.status == 'INFO' else 'fix'}: {escape(r.fix)}[/]"
        table.add_row(f"[{_STYLE[r.status]}]{r.status}[/]", r.name, detail)
    con = out_console()
    con.print(table)
    n = report.counts()
    verdict = (
        f"[bold green]this machine can run {escape(profile)}[/]"
        if report.ok
        else f"[bold red]this machine cannot run {escape(profile)}[/]: fix the FAIL rows"
    )
    con.print(
        f"{n['PASS']} passed, {n['WARN']} warning(s), {n['FAIL']} failed, {n['INFO']} info "
        f"in {report.elapsed_s:.2f} s: {verdict}"
    )
