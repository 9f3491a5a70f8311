"""Aggregated vs disaggregated serving on the same number of workers, prefill-heavy multi-round QA.

    .venv/bin/python -m benchmarks.disagg [--workers 2] [--qps 32 [40 ...]] [--duration 60] [--json]
    .venv/bin/python -m benchmarks.disagg --engine vllm     # the real engine (see below)

With ``--engine vllm`` (SmolLM2-135M-Instruct on CPU unless ``--model``), first one long request at a
time (``--single`` requests of ``--single-words`` words, 30 tokens each) on ``agg --workers 1`` (one
engine on every core) and on ``disagg`` (one prefill and one decode engine, a share of the cores each):
each request's time, and disagg's overhead, the time a request spends beyond its prefill engine's
prefill (``dynamo_disagg_prefill_engine_seconds``) and its decode engine's decode (first token to
last, plus one step for the first token): transfer, queueing, handshake and scheduling. Then the
multi-round load below, scaled to this machine's engines (``--users 4 --qps 0.6 --doc-words 900
--answer-tokens 16 --system-words 100 --duration 90 --warmup 15`` unless given: each round's new
document, ~1.2k tokens, is over the default ``max_local_prefill_length``). Both deployments run on
the same cores, under the defaults: ``agg --workers W`` against ``disagg`` with the same W engines.

Mocker workers at speedup 1 (real simulated prefill and decode time). agg runs ``--workers`` workers,
once per ``--agg-batched-tokens`` budget (chunked prefill: 2048, vLLM's API-server default below
70 GiB of GPU memory, keeps each step short; 8192, its default on H100-class GPUs, batches whole
prompts); disagg runs the same number split into ``--prefill`` prefill workers and decode workers,
every long prompt remote unless ``--max-prefill-queue`` prefills are already queued or running.

The workload is seed 003's shape, made prefill-heavy as in RAG: ``--users`` concurrent sessions, each
with a shared system prompt, append a freshly retrieved document (``--doc-words``, ~1,500 uncached
tokens) and a question to their history every round and get a short answer (``--answer-tokens``).
A session has ``--rounds`` rounds, then a new one (fresh history) takes its place, so the load is
steady for ``--duration`` seconds. Each user sends a round users/qps seconds after its previous one,
or as soon as that one's answer is in if it took longer. Requests sent during ``--warmup`` are not
counted. Printed per deployment: TTFT and ITL percentiles, output and input tokens/s, requests/s and
the mean per-request generation throughput (output tokens over the time from the first token to the
last, production-stack's "average generation throughput"), then disagg's ratios to each agg.
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

from benchmarks.loadgen import pct
from benchmarks.workload import text
from dynamo_cli.bench.http import Connection, Endpoint
from dynamo_cli.deployment.handle import start
from dynamo_cli.disagg.prefill_side import MAX_IN_FLIGHT


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
    wall: float = 0.0  # from the end of the warm-up to the last measured answer
    last_end: float = 0.0
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


async def _ask(conn: Connection, model: str, messages: list, answer_tokens: int) -> tuple[Row, str]:
    body = {
        "model": model, "messages": messages, "max_tokens": answer_tokens, "stream": True,
        "stream_options": {"include_usage": True}, "ignore_eos": True, "temperature": 0,
    }  # fmt: skip
    got = await conn.chat_stream(body)
    t = got.token_times
    assert t and got.prompt_tokens and got.completion_tokens, "a request produced no tokens"
    itls = [b - a for a, b in itertools.pairwise(t)]
    return Row(t[0] - got.launch, itls, got.prompt_tokens, got.completion_tokens, t[-1] - t[0]), got.text


async def _user(
    conn: Connection, model: str, slot: int, qps: float, args: argparse.Namespace, run: Run, t0: float
) -> None:
    """One user slot: a session of ``--rounds`` rounds, then a fresh session (new history) in its place,
    until ``--duration``. A round starts ``users/qps`` seconds after the previous one started, or as soon
    as its answer is in if that took longer (no catching up in bursts)."""
    gap = args.users / qps
    system = {"role": "system", "content": text(random.Random(0), args.system_words)}
    at = t0 + slot * gap / args.users
    for session in itertools.count():
        rng = random.Random(slot * 1_000_003 + session)
        messages: list[dict[str, str]] = [system]
        for r in range(args.rounds):
            if at - t0 >= args.duration:
                return
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            doc = text(rng, args.doc_words)
            messages.append({"role": "user", "content": f"Document {r}:\n{doc}\nQuestion: " + text(rng, 15)})
            sent = time.perf_counter()
            row, answer = await _ask(conn, model, messages, args.answer_tokens)
            if sent - t0 >= args.warmup:
                run.rows.append(row)
                run.last_end = max(run.last_end, time.perf_counter())
            messages.append({"role": "assistant", "content": answer})
            at = max(at + gap, time.perf_counter())


def _decisions(url: str) -> dict[str, float]:
    name = "dynamo_disagg_prefill_decisions_total{"
    lines = httpx.get(url + "/metrics", timeout=10).text.splitlines()
    return {
        ln[len(name) - 1 :].rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1])
        for ln in lines
        if ln.startswith(name)
    }


def _flags(mode: str, budget: int, args: argparse.Namespace, agg_workers: int = 0) -> list[str]:
    if args.engine == "vllm":
        flags = ["--engine", "vllm", "--router-mode", "kv"]
    else:
        flags = ["--engine", "mocker", "--speedup", "1", "--router-mode", "kv"]
        flags += ["--set", f"mocker.max_num_batched_tokens={budget}"]
    if args.model:
        flags += ["--model", args.model]
    flags += ["--set", "router.replicas=0", "--set", "log_level=warning"]
    if mode == "agg":
        flags += ["--workers", str(agg_workers or args.workers)]
    else:
        flags += [
            "--prefill-workers",
            str(args.prefill),
            "--decode-workers",
            str(args.workers - args.prefill),
        ]
        if args.engine == "mocker":
            flags += ["--set", f"disagg.max_prefill_queue_size={args.max_prefill_queue}"]
    for item in args.sets:
        flags += ["--set", item]
    return flags


def _histogram_mean(url: str, name: str) -> tuple[float, int]:
    lines = httpx.get(url + "/metrics", timeout=10).text.splitlines()
    total = sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith(name + "_sum"))
    count = int(sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith(name + "_count")))
    return (total / count if count else 0.0), count


def single(mode: str, args: argparse.Namespace) -> dict[str, float]:
    """One long request at a time: per-request time, and (disagg) the overhead beyond prefill + decode."""
    with tempfile.TemporaryDirectory() as tmp:
        dep = start(Path(tmp), mode, *_flags(mode, 0, args, agg_workers=1), timeout=600)
        try:

            async def go() -> list[Row]:
                conn = Connection(Endpoint.parse(dep.base_url))
                rows = []
                try:
                    for i in range(args.single):
                        rng = random.Random(1000 + i)
                        ask = f"Document:\n{text(rng, args.single_words)}\nQuestion: " + text(rng, 15)
                        t0 = time.perf_counter()
                        row, _ = await _ask(conn, dep.model, [{"role": "user", "content": ask}], 30)
                        row.gen_s = time.perf_counter() - t0  # here: the whole request
                        rows.append(row)
                finally:
                    conn.close()
                return rows

            rows = asyncio.run(go())
            prefill_s, n_remote = _histogram_mean(dep.url, "dynamo_disagg_prefill_engine_seconds")
            decisions = _decisions(dep.url) if mode == "disagg" else {}
        finally:
            dep.stop()
    itl = pct([g for r in rows for g in r.itls], 0.5)
    out = {
        "requests": float(len(rows)),
        "prompt_tokens": float(rows[0].prompt_tokens),
        "request_s_mean": sum(r.gen_s for r in rows) / len(rows),
        "ttft_s_mean": sum(r.ttft for r in rows) / len(rows),
        "itl_p50_ms": itl * 1000,
    }
    if mode == "disagg":
        out["remote"] = float(n_remote)
        out["prefill_engine_s_mean"] = prefill_s
        # TTFT = prefill engine's prefill + overhead + the decode engine's first step (~ one ITL).
        out["overhead_s_mean"] = out["ttft_s_mean"] - prefill_s - itl
        out["fallbacks"] = sum(v for k, v in decisions.items() if 'outcome="fallback"' in k)
    return out


def measure(mode: str, qps: float, budget: int, args: argparse.Namespace) -> Run:
    run = Run(mode)
    with tempfile.TemporaryDirectory() as tmp:
        flags = _flags(mode, budget, args)
        dep = start(Path(tmp), mode, *flags, timeout=600)
        try:

            async def go() -> None:
                ep = Endpoint.parse(dep.base_url)
                conns = [Connection(ep) for _ in range(args.users)]
                t0 = time.perf_counter()
                try:
                    await asyncio.gather(
                        *(_user(c, dep.model, u, qps, args, run, t0) for u, c in enumerate(conns))
                    )
                finally:
                    for c in conns:
                        c.close()
                run.wall = run.last_end - (t0 + args.warmup)

            asyncio.run(go())
            if mode == "disagg":
                run.decisions = _decisions(dep.url)
        finally:
            dep.stop()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["mocker", "vllm"], default="mocker", help="the engine of both")
    ap.add_argument("--single", type=int, default=5, help="vllm: long requests sent one at a time first")
    ap.add_argument("--single-words", type=int, default=1400, help="vllm: words of each (~1.9k tokens)")
    ap.add_argument("--workers", type=int, default=2, help="workers in each deployment")
    ap.add_argument("--prefill", type=int, default=1, help="disagg: how many of them prefill")
    ap.add_argument("--users", type=int, default=64, help="concurrent user sessions")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of a session; then a new session starts")
    ap.add_argument(
        "--qps", type=float, nargs="+", default=[32.0], help="requests per second offered (several: a sweep)"
    )
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--warmup", type=float, default=10.0, help="requests sent before this are not counted")
    ap.add_argument("--system-words", type=int, default=300)
    ap.add_argument("--doc-words", type=int, default=1200, help="new document per round")
    ap.add_argument("--answer-tokens", type=int, default=48)
    ap.add_argument(
        "--agg-batched-tokens",
        type=int,
        nargs="*",
        default=[2048, 8192],
        help="agg: one deployment per mocker token budget of a step (none: disagg only)",
    )
    ap.add_argument(
        "--disagg-batched-tokens",
        type=int,
        default=8192,
        help="disagg: the same budget; prefill workers protect no decodes, so they take big steps",
    )
    ap.add_argument(
        "--max-prefill-queue",
        type=int,
        default=16,
        help="disagg: max-prefill-queue-size; it counts prefills queued or running, and a prefill worker "
        f"runs up to {MAX_IN_FLIGHT} at once",
    )
    ap.add_argument("--no-disagg", action="store_true", help="measure the agg deployments only")
    ap.add_argument("--model", help="model folder (its config sets the KV bytes a token; default: embedded)")
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], help="extra --set for every deployment"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    args = ap.parse_args()
    report: list[dict] = []
    if args.engine == "vllm":
        _vllm_defaults(args)
        singles = {mode: single(mode, args) for mode in ("agg", "disagg")}
        report.append({"single": singles})
        if not args.json:
            _print_single(singles)
    for qps in args.qps:
        plan = [(f"agg@{b}", "agg", b) for b in args.agg_batched_tokens]
        if args.engine == "vllm":
            plan = [("agg", "agg", 0)]
        if not args.no_disagg:
            plan.append(("disagg", "disagg", args.disagg_batched_tokens))
        runs = {name: measure(mode, qps, budget, args) for name, mode, budget in plan}
        sums = {name: r.summary() for name, r in runs.items()}
        disagg = runs.get("disagg")
        report.append({"qps": qps, "summary": sums, "decisions": disagg.decisions if disagg else {}})
        if not args.json:
            _print(qps, sums, disagg)
    if args.json:
        print(json.dumps(report, indent=1))


def _vllm_defaults(args: argparse.Namespace) -> None:
    """The multi-round load scaled to engines that prefill ~1k tokens a second on one core each."""
    given = {a.split("=")[0] for a in __import__("sys").argv[1:] if a.startswith("--")}
    scaled = {"users": 4, "qps": [0.6], "doc_words": 900, "answer_tokens": 16, "system_words": 100,
              "duration": 90.0, "warmup": 15.0}  # fmt: skip
    for key, value in scaled.items():
        if "--" + key.replace("_", "-") not in given:
            setattr(args, key, value)


def _print_single(singles: dict[str, dict[str, float]]) -> None:
    print("\none long request at a time")
    for mode, row in singles.items():
        print(f"{mode:>8}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    ratio = singles["disagg"]["request_s_mean"] / singles["agg"]["request_s_mean"]
    print(f"disagg/agg request time {ratio:.2f}x (target <= 2), "
          f"disagg overhead {singles['disagg']['overhead_s_mean']:.3f} s (target < 0.5)")  # fmt: skip


def _print(qps: float, sums: dict[str, dict[str, float]], disagg: Run | None) -> None:
    print(f"\n{qps:g} req/s offered")
    cols = list(next(iter(sums.values())))
    print(f"{'':>20}" + "".join(f"{m:>12}" for m in sums))
    for c in cols:
        print(f"{c:>20}" + "".join(f"{sums[m][c]:>12.2f}" for m in sums))
    if disagg is None:
        return
    d = sums["disagg"]
    for name, a in sums.items():
        if name.startswith("agg"):
            r = {k: d[k] / a[k] for k in ("itl_p50_ms", "itl_p99_ms", "output_tok_s", "gen_tok_per_req_s")}
            print(f"disagg/{name}: ITL p50 {r['itl_p50_ms']:.2f}x (target <= 0.5), "
                  f"ITL p99 {r['itl_p99_ms']:.2f}x, output tok/s {r['output_tok_s']:.2f}x (target >= 0.95), "
                  f"per-request generation {r['gen_tok_per_req_s']:.2f}x")  # fmt: skip
    print("disagg prefill decisions:", disagg.decisions)


if __name__ == "__main__":
    main()
