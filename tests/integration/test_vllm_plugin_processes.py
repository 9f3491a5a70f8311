"""The vLLM plugin's parent-death signal, seen on real processes (multiprocessing spawn, as vLLM's)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def _grandchild() -> None:
    from dynamo_cli.engines.vllm_plugin import die_with_parent

    die_with_parent()
    time.sleep(60)


def _child(report: Any) -> None:
    from dynamo_cli.engines.vllm_plugin import die_with_parent

    die_with_parent()
    grandchild = multiprocessing.get_context("spawn").Process(target=_grandchild, daemon=False)
    grandchild.start()
    report.put(grandchild.pid)
    time.sleep(60)


def test_a_vllm_child_process_dies_with_its_parent() -> None:
    """As vLLM's engine core (a child of a worker) and its workers (children of the engine core) do when
    the worker is SIGKILLed."""
    ctx = multiprocessing.get_context("spawn")
    report = ctx.Queue()
    child = ctx.Process(target=_child, args=(report,))
    child.start()
    grandchild = report.get(timeout=60)
    assert Path(f"/proc/{grandchild}").exists()
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    child.join(10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{grandchild}").exists() and _state(grandchild) != "Z":
        assert time.monotonic() < deadline, "the grandchild outlived its parent"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
