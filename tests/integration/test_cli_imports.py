"""What `dynamo` imports, seen from a fresh interpreter: --help and doctor never load vLLM or torch."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

HEAVY = ("vllm", "torch", "transformers", "fastapi", "aetcd", "nats")


def heavy_imports_after(*argvs: list[str]) -> tuple[list[str], str]:
    """Runs the app in a fresh interpreter; returns the heavy modules it imported and what it printed."""
    script = (
        "import sys\n"
        "from dynamo_cli.app import app\n"
        f"for argv in {list(argvs)!r}:\n"
        "    try:\n"
        "        app(argv, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1]), proc.stdout


def test_help_does_not_import_heavy_modules() -> None:
    heavy, out = heavy_imports_after(
        ["--help"],
        ["run", "--help"],
        ["config", "show", "--help"],
        ["config", "show", "agg"],
        ["bench", "multi-round-qa", "--help"],
    )
    assert heavy == []
    assert "Usage" in out  # the help really was rendered


def test_doctor_imports_neither_vllm_nor_torch() -> None:
    heavy, out = heavy_imports_after(
        ["doctor", "--help"], ["doctor", "agg", "--port", "0"], ["doctor", "disagg", "--json"]
    )
    assert heavy == []
    assert "Examples" in out and " model " in out  # the help and a table were printed
