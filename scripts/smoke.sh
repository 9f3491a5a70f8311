#!/usr/bin/env bash
# Runs the README's run command exactly as written, waits until it serves, asks one question with
# curl, then stops it with Ctrl-C (SIGINT) and checks that it exits cleanly. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
# The README's command (after install): vLLM serving the embedded model on the default port 8000.
setsid .venv/bin/dynamo run agg >"$log" 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 1500); do  # a cold start converts the model and loads vLLM: allow 5 minutes
  if curl -fs http://127.0.0.1:8000/health >/dev/null 2>&1; then break; fi
  if ! kill -0 $pid 2>/dev/null; then echo "smoke: dynamo run exited early:"; cat "$log"; exit 1; fi
  sleep 0.2
done
reply=$(curl -fs http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' \
  -d '{"model":"SmolLM2-135M-Instruct","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":30,"temperature":0}')
echo "smoke: $reply"
echo "$reply" | grep -q 'Paris' || { echo "smoke: unexpected reply"; cat "$log"; exit 1; }
kill -INT $pid
trap - EXIT
set +e
wait $pid
code=$?
set -e
if [ "$code" != 130 ]; then echo "smoke: exit code $code after Ctrl-C (want 130)"; cat "$log"; exit 1; fi
grep -q "Stopped." "$log" || { echo "smoke: no clean stop"; cat "$log"; exit 1; }
echo "smoke: README run command OK (ready, answered, stopped cleanly)"
