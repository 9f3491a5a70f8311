"""Our stack vs vLLM's own OpenAI server: same model, same engine settings, same client.

    .venv/bin/python -m benchmarks.vllm_vs_dynamo [--concurrency 1 8] [--requests 24]

Streaming chat, ~150-token prompts, 64 output tokens (EOS ignored, greedy). Each server has one
vLLM engine on this machine's CPU; measured one after the other with the lean keep-alive client.
Prints output tokens/s and TTFT p50 for each, their ratio and difference.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.loadgen import pct, run_load
from benchmarks.workload import chat, streaming_chat_body
from dynamo_cli.deployment.handle import start
from dynamo_cli.models.embedded import EMBEDDED_NAME, prepare_weights
from dynamo_cli.transport.ports import free_port


def measure(url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> tuple[float, float]:
    bodies = [streaming_chat_body(model, chat(500 + i, 120, turns=1), max_tokens) for i in range(requests)]
    asyncio.run(run_load(url, "/v1/chat/completions", bodies[:2], concurrency=1, total=2))  # warm-up
    res = asyncio.run(run_load(url, "/v1/chat/completions", bodies, concurrency=concurrency, total=requests))
    assert res.errors == 0, f"{res.errors} errors"
    tok_s = len(res.samples) * max_tokens / res.wall
    return tok_s, pct([s.ttft * 1000 for s in res.samples], 0.5)


def vllm_server(folder: Path, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    # The same OpenMP core binding our placement gives a single worker (vLLM's own default, "auto",
    # keeps a core back for its API process): engine settings identical on both sides.
    cores = os.cpu_count() or 1
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "TMPDIR": str(tmp),
        "VLLM_CACHE_ROOT": str(tmp / "vc"),
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}",
    }
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
            "--served-model-name", EMBEDDED_NAME, "--host", "127.0.0.1", "--port", str(port),
            "--enforce-eager", "--block-size", "128", "--enable-prefix-caching", "--seed", "0"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("vLLM's server exited during start-up")
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("vLLM's server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    folder = prepare_weights()
    results: dict[str, dict[int, tuple[float, float]]] = {"vllm": {}, "dynamo": {}}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = vllm_server(folder, Path(tmp))
        try:
            for c in args.concurrency:
                results["vllm"][c] = measure(url, EMBEDDED_NAME, c, args.requests, args.max_tokens)
        finally:
            proc.terminate()
            proc.wait(60)
        dep = start(Path(tmp), "agg", "--workers", "1", "--set", "log_level=warning", timeout=300)
        try:
            for c in args.concurrency:
                results["dynamo"][c] = measure(dep.url, dep.model, c, args.requests, args.max_tokens)
        finally:
            dep.stop()
    print(
        f"SmolLM2-135M-Instruct on CPU, streaming chat, {args.max_tokens} output tokens, {args.requests} reqs"
    )
    head = ["conc", "vLLM tok/s", "ours tok/s", "ratio", "vLLM TTFT p50", "ours", "diff ms"]
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (5, 11, 11, 6, 14, 8, 8), strict=True)))
    for c in args.concurrency:
        (vt, vf), (dt, df) = results["vllm"][c], results["dynamo"][c]
        print(f"{c:>5} {vt:>11.1f} {dt:>11.1f} {dt / vt:>6.2f} {vf:>14.1f} {df:>8.1f} {df - vf:>8.1f}")


if __name__ == "__main__":
    main()
