"""User-facing output: diagnostics to stderr through rich, data to stdout (JSON in --json mode)."""

from __future__ import annotations

import sys
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape

_stderr: Console | None = None


def err_console() -> Console:
    global _stderr
    if _stderr is None:
        _stderr = Console(stderr=True, highlight=False)
    return _stderr


def emit_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


def print_error(message: str, hint: str | None) -> None:
    con = err_console()
    con.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    if hint:
        con.print(f"[dim]hint:[/] {escape(hint)}", soft_wrap=True)
