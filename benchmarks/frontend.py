"""Frontend cost and capacity: streaming chat, ~1.3k prompt tokens, 64 output tokens, a free engine.

    .venv/bin/python -m benchmarks.frontend [--concurrency 16 32 64] [--requests 1500]

Starts `dynamo run agg --engine mocker` (1 worker, speedup 1000), drives it with a lean keep-alive
client, and reads each role's CPU time from /proc. Prints req/s, CPU-ms per request of the frontend
(and of router and worker), and client-side TTFT.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from benchmarks.loadgen import cpu_seconds, pct, run_load
from benchmarks.workload import chat, free_engine_deployment, streaming_chat_body
from dynamo_cli.models.embedded import prepare_tokenizer_folder
from dynamo_cli.models.tokenizer import ModelTokenizer


def bodies(model: str, n: int, prompt_words: int, max_tokens: int) -> tuple[list[bytes], float]:
    tok = ModelTokenizer(prepare_tokenizer_folder())
    conversations = [chat(i, prompt_words) for i in range(n)]
    mean_len = statistics.mean(len(tok.encode_chat(m)) for m in conversations)
    return [streaming_chat_body(model, m, max_tokens) for m in conversations], mean_len


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--prompt-words", type=int, default=1250)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        dep = free_engine_deployment(Path(tmp), args.workers)
        try:
            reqs, mean_len = bodies(dep.model, 64, args.prompt_words, args.max_tokens)
            print(
                f"workload: streaming chat, mean prompt {mean_len:.0f} tokens, "
                f"{args.max_tokens} output tokens"
            )
            roles = {
                name: pid for name, pid in dep.ready["processes"].items() if name not in ("etcd", "nats")
            }
            asyncio.run(run_load(dep.url, "/v1/chat/completions", reqs, concurrency=16, total=300))  # warm-up
            print(
                f"{'conc':>5} {'req/s':>8} {'tok/s':>8} {'frontend ms/req':>16} {'router':>8} {'workers':>8} "
                f"{'TTFT p50 ms':>12} {'p99':>8} {'errors':>6}"
            )
            for conc in args.concurrency:
                before = {n: cpu_seconds(p) for n, p in roles.items()}
                res = asyncio.run(
                    run_load(dep.url, "/v1/chat/completions", reqs, concurrency=conc, total=args.requests)
                )
                after = {n: cpu_seconds(p) for n, p in roles.items()}
                done = len(res.samples)
                per = {n: (after[n] - before[n]) * 1000 / done for n in roles}
                workers_ms = sum(v for n, v in per.items() if n.startswith("worker"))
                routers_ms = sum(v for n, v in per.items() if n.startswith("router"))
                ttfts = [s.ttft * 1000 for s in res.samples]
                print(
                    f"{conc:>5} {done / res.wall:>8.0f} {done * args.max_tokens / res.wall:>8.0f} "
                    f"{per['frontend']:>16.2f} {routers_ms:>8.2f} {workers_ms:>8.2f} "
                    f"{pct(ttfts, 0.5):>12.2f} {pct(ttfts, 0.99):>8.2f} {res.errors:>6}"
                )
        finally:
            dep.stop()


if __name__ == "__main__":
    main()
