"""Small helpers the end-to-end tests share."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``pred`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def scrape(url: str) -> dict[str, float]:
    """A Prometheus text endpoint as {series: value}."""
    text = httpx.get(url, timeout=10).text
    return {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines() if ln and ln[0] != "#"}


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (every thread's), from /proc. Threads and processes come and go
    while it reads: one that is gone has no children to report."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out
