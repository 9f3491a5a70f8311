#!/usr/bin/env bash
# The project's test command: install (idempotent, vLLM included), lint, type-check, then every test
# tier but `gpu`.
#   scripts/test.sh                 all of it
#   scripts/test.sh tests/unit -x   extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --vllm
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/pytest "$@"
