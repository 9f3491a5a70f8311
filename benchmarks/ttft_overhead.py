"""TTFT added by frontend and router, compared with asking the worker directly.

    .venv/bin/python -m benchmarks.ttft_overhead [--requests 300]

One worker (mocker at speedup 1000, so the engine's own time is tiny and identical on both paths),
one request at a time, ~1.3k-token chat prompts:
  via HTTP:   client -> frontend (template, tokenise, route via the router role) -> worker
  direct:     client -> worker over the request plane, with the token ids the frontend would send
Prints p50/p90/p99 of both and the difference of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks.loadgen import pct, run_load
from benchmarks.workload import chat, free_engine_deployment, streaming_chat_body
from dynamo_cli.models.embedded import prepare_tokenizer_folder
from dynamo_cli.models.tokenizer import ModelTokenizer
from dynamo_cli.transport import protocol
from dynamo_cli.transport.discovery import EtcdDiscovery
from dynamo_cli.transport.messaging import NatsRequestPlane
from dynamo_cli.transport.wire import EngineRequest, SamplingOptions


async def direct(etcd: str, nats: str, prompts: list[list[int]], max_tokens: int) -> list[float]:
    disc = await EtcdDiscovery.connect(etcd, "dynamo")
    [worker] = await disc.watch(protocol.WORKER, lambda e: None)
    plane = await NatsRequestPlane.connect(nats, name="bench")
    out = []
    for i, ids in enumerate(prompts):
        req = EngineRequest(
            f"direct-{i}", ids, SamplingOptions(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        )
        t0 = time.perf_counter()
        stream = await plane.request(
            worker.data["subject"], protocol.encode_generate(req), accept_timeout=5, idle_timeout=5
        )
        first = None
        async for chunk in stream:
            if first is None and protocol.decode_output(chunk).token_ids:
                first = time.perf_counter() - t0
        assert first is not None
        out.append(first * 1000)
    await plane.close()
    await disc.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--prompt-words", type=int, default=1250)
    ap.add_argument("--max-tokens", type=int, default=8)
    args = ap.parse_args()
    tok = ModelTokenizer(prepare_tokenizer_folder())
    with tempfile.TemporaryDirectory() as tmp:
        dep = free_engine_deployment(Path(tmp), 1)
        try:
            convs = [chat(10_000 + i, args.prompt_words) for i in range(args.requests)]
            bodies = [streaming_chat_body(dep.model, m, args.max_tokens) for m in convs]
            prompts = [tok.encode_chat(m) for m in convs]
            # Interleave the two paths in rounds so both see the same machine state.
            http_ms: list[float] = []
            direct_ms: list[float] = []
            step = 50
            for lo in range(0, args.requests, step):
                res = asyncio.run(
                    run_load(
                        dep.url,
                        "/v1/chat/completions",
                        bodies[lo : lo + step],
                        concurrency=1,
                        total=len(bodies[lo : lo + step]),
                    )
                )
                http_ms += [s.ttft * 1000 for s in res.samples]
                direct_ms += asyncio.run(
                    direct(dep.ready["etcd"], dep.ready["nats"], prompts[lo : lo + step], args.max_tokens)
                )
        finally:
            dep.stop()
    print(
        f"prompt ~{sum(map(len, prompts)) / len(prompts):.0f} tokens, "
        f"{args.requests} requests each, one at a time"
    )
    for name, xs in (("via frontend+router", http_ms), ("direct to worker", direct_ms)):
        print(f"{name:>20}: TTFT p50 {pct(xs, 0.5):.2f} ms  p90 {pct(xs, 0.9):.2f}  p99 {pct(xs, 0.99):.2f}")
    print(f"{'added (p50)':>20}: {pct(http_ms, 0.5) - pct(direct_ms, 0.5):.2f} ms")


if __name__ == "__main__":
    main()
