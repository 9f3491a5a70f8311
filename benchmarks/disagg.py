"""Aggregated vs disaggregated serving on the same number of workers, prefill-heavy multi-round QA.

    .venv/bin/python -m benchmarks.disagg [--workers 2] [--users 24] [--rounds 4] [--qps 24] [--json]

Mocker workers at speedup 1 (real simulated prefill and decode time). agg runs ``--workers`` workers;
disagg runs the same number split into prefill and decode workers (``--prefill`` of them prefill),
remote prefill on with the profile's thresholds. The workload is seed 003's shape, made prefill-heavy
as in RAG: each user has a shared system prompt, and every round appends a freshly retrieved document
(``--doc-words``, ~1,500 uncached tokens) and a question to the history; answers are short
(``--answer-tokens``). Users are paced as production-stack's multi-round QA paces them (one request per
user every users/qps seconds, staggered starts). Printed per mode: TTFT and ITL percentiles, output
and input tokens/s, requests/s, and the mean per-request generation throughput (output tokens over the
time from the first token to the last, production-stack's "average generation throughput").
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

from benchmarks.loadgen import pct
from benchmarks.workload import text
from dynamo_cli.runtime.handle import start


@dataclass
class Row:
    ttft: float
    itls: list[float]
    prompt_tokens: int
    completion_tokens: int
    gen_s: float  # first token to last


@dataclass
class Run:
    mode: str
    rows: list[Row] = field(default_factory=list)
    wall: float = 0.0
    decisions: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        itl = [g for r in self.rows for g in r.itls]
        ttft = [r.ttft for r in self.rows]
        out = sum(r.completion_tokens for r in self.rows)
        per_req = [(r.completion_tokens - 1) / r.gen_s for r in self.rows if r.gen_s > 0]
        return {
            "requests": len(self.rows),
            "ttft_p50_ms": pct(ttft, 0.5) * 1000,
            "ttft_p90_ms": pct(ttft, 0.9) * 1000,
            "itl_p50_ms": pct(itl, 0.5) * 1000,
            "itl_p99_ms": pct(itl, 0.99) * 1000,
            "output_tok_s": out / self.wall,
            "input_tok_s": sum(r.prompt_tokens for r in self.rows) / self.wall,
            "req_s": len(self.rows) / self.wall,
            "gen_tok_per_req_s": sum(per_req) / len(per_req) if per_req else 0.0,
        }


async def _ask(client: openai.AsyncOpenAI, model: str, messages: list, answer_tokens: int) -> tuple[Row, str]:
    t0 = time.perf_counter()
    stamps: list[float] = []
    parts: list[str] = []
    usage = None
    stream = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=answer_tokens, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}, temperature=0,
    )  # fmt: skip
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None and stamps, "a request produced no tokens"
    itls = [b - a for a, b in itertools.pairwise(stamps)]
    row = Row(stamps[0] - t0, itls, usage.prompt_tokens, usage.completion_tokens, stamps[-1] - stamps[0])
    return row, "".join(parts)


async def _user(client: openai.AsyncOpenAI, model: str, uid: int, args: argparse.Namespace, run: Run) -> None:
    rng = random.Random(uid)
    gap = args.users / args.qps
    start_at = time.perf_counter() + uid * gap / args.users
    messages = [{"role": "system", "content": text(random.Random(0), args.system_words)}]
    for r in range(args.rounds):
        await asyncio.sleep(max(0.0, start_at + r * gap - time.perf_counter()))
        doc = text(rng, args.doc_words)
        messages.append({"role": "user", "content": f"Document {r}:\n{doc}\nQuestion: " + text(rng, 15)})
        row, answer = await _ask(client, model, messages, args.answer_tokens)
        run.rows.append(row)
        messages.append({"role": "assistant", "content": answer})


def _decisions(url: str) -> dict[str, float]:
    name = "dynamo_disagg_prefill_decisions_total{"
    lines = httpx.get(url + "/metrics", timeout=10).text.splitlines()
    return {
        ln[len(name) - 1 :].rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1])
        for ln in lines
        if ln.startswith(name)
    }


def measure(mode: str, args: argparse.Namespace) -> Run:
    run = Run(mode)
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--engine", "mocker", "--speedup", "1", "--router-mode", "kv"]
        if args.model:
            flags += ["--model", args.model]
        flags += ["--set", "router.replicas=0", "--set", "log_level=warning"]
        if mode == "agg":
            flags += ["--set", f"mocker.max_num_batched_tokens={args.max_batched_tokens}"]
            flags += ["--workers", str(args.workers)]
        else:
            flags += ["--set", f"mocker.max_num_batched_tokens={args.disagg_batched_tokens}"]
            flags += [
                "--prefill-workers",
                str(args.prefill),
                "--decode-workers",
                str(args.workers - args.prefill),
            ]
        for item in args.sets:
            flags += ["--set", item]
        dep = start(Path(tmp), mode, *flags)
        try:

            async def go() -> None:
                async with openai.AsyncOpenAI(
                    base_url=dep.base_url, api_key="x", max_retries=0, timeout=600
                ) as client:
                    await asyncio.gather(*(_user(client, dep.model, u, args, run) for u in range(args.users)))

            t0 = time.perf_counter()
            asyncio.run(go())
            run.wall = time.perf_counter() - t0
            if mode == "disagg":
                run.decisions = _decisions(dep.url)
        finally:
            dep.stop()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2, help="workers in each deployment")
    ap.add_argument("--prefill", type=int, default=1, help="disagg: how many of them prefill")
    ap.add_argument("--users", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--qps", type=float, default=24.0, help="requests per second over all users")
    ap.add_argument("--system-words", type=int, default=300)
    ap.add_argument("--doc-words", type=int, default=1200, help="new document per round")
    ap.add_argument(
        "--max-batched-tokens",
        type=int,
        default=2048,
        help="agg: mocker token budget per step (chunked prefill; vLLM's API-server default on most GPUs)",
    )
    ap.add_argument(
        "--disagg-batched-tokens",
        type=int,
        default=8192,
        help="disagg: the same budget; prefill workers protect no decodes, so they take bigger steps",
    )
    ap.add_argument("--answer-tokens", type=int, default=48)
    ap.add_argument("--modes", nargs="+", default=["agg", "disagg"])
    ap.add_argument("--model", help="model folder (its config sets the KV bytes a token; default: embedded)")
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], help="extra --set for both deployments"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    runs = {m: measure(m, args) for m in args.modes}
    sums = {m: r.summary() for m, r in runs.items()}
    if args.json:
        print(json.dumps({"summary": sums, "decisions": runs.get("disagg", Run("")).decisions}, indent=1))
        return
    cols = list(next(iter(sums.values())))
    print(f"{'':>20}" + "".join(f"{m:>12}" for m in sums))
    for c in cols:
        print(f"{c:>20}" + "".join(f"{sums[m][c]:>12.2f}" for m in sums))
    if "agg" in sums and "disagg" in sums:
        a, d = sums["agg"], sums["disagg"]
        print(f"\ndisagg/agg: ITL p50 {d['itl_p50_ms'] / a['itl_p50_ms']:.2f}x (target <= 0.5), "
              f"output tok/s {d['output_tok_s'] / a['output_tok_s']:.2f}x (target >= 0.95), "
              f"per-request generation {d['gen_tok_per_req_s'] / a['gen_tok_per_req_s']:.2f}x")  # fmt: skip
        print("disagg prefill decisions:", runs["disagg"].decisions)


if __name__ == "__main__":
    main()
