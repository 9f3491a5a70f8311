"""User-facing output: diagnostics to stderr through rich, data to stdout (JSON in --json mode)."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
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


def out_console() -> Console:
    """Rendered results (tables) on stdout."""
    return Console(highlight=False)


def emit_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


def print_error(message: str, hint: str | None) -> None:
    con = err_console()
    con.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    if hint:
        con.print(f"[dim]hint:[/] {escape(hint)}", soft_wrap=True)


class Sink:
    """The one output of orchestration. The launcher, the supervisor and the local planner emit events
    here instead of printing; it renders them: rich text on stderr for people, and with --json also
    one JSON object a line on stdout (``{"event": name, ...}``) for programs."""

    def __init__(self, console: Console | None = None, *, json_output: bool = False):
        self.console = console or err_console()
        self.json_output = json_output

    @property
    def live(self) -> bool:
        """A person watches a terminal: progress may be redrawn in place."""
        return self.console.is_terminal and not self.json_output

    def say(self, text: Any, **style: Any) -> None:
        """A line for people (rich markup, or a Text)."""
        self.console.print(text, **style)

    def warn(self, message: str, hint: str | None = None) -> None:
        self.console.print(f"[bold yellow]warning:[/] {message}" + (f"\n  hint: {hint}" if hint else ""))

    def event(self, name: str, data: dict[str, Any], text: Any = None) -> None:
        """Something that happened: ``text`` for people (if any), ``data`` for --json."""
        if text is not None:
            self.console.print(text, highlight=False)
        if self.json_output:
            emit_json({"event": name, **data})

    def status(self, text: str) -> AbstractContextManager[Any]:
        """A spinner while a long step runs."""
        return self.console.status(text)
