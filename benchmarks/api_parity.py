"""What the OpenAI-parity features cost.

    .venv/bin/python -m benchmarks.api_parity [--part frontend|json|all]

frontend: `dynamo run agg --engine mocker` (1 worker, speedup 1000: the engine costs next to nothing),
streaming chat, ~300-word prompts, 64 output tokens. Frontend CPU-ms per request for plain requests, with
tools (tool_choice auto: the tool-call parser reads every delta, the tools are rendered into the
prompt), and with logprobs (top_logprobs 5). Variants run in interleaved rounds on one deployment:
first at saturation (closed loop, each at its own pace), then all at one request rate (--load times
the slowest one's pace), the figure: per-request CPU depends on the pace, as wake-ups batch more when
the frontend is busier. --pin gives the frontend a CPU of its own: its figures then do not include
time lost to the worker, NATS and the client preempting it on a shared CPU.

json: SmolLM2 on vLLM (CPU). Structured generation (json_schema) against free text of the same length
(EOS ignored), on our stack and on vLLM's own OpenAI server, one after the other with the same client.
Prints output tokens/s for each and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.loadgen import cpu_seconds, pin_apart, run_load
from benchmarks.workload import chat, free_engine_deployment

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}
LIST_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "items": {
            "type": "array",
            "items": {"type": "string", "maxLength": 40},
            "minItems": 6,
            "maxItems": 6,
        },
    },
    "required": ["title", "items"],
    "additionalProperties": False,
}
JSON_PROMPT = [{"role": "user", "content": "List six things to pack for a trip to the mountains, as JSON."}]


def _frontend(args: argparse.Namespace) -> None:
    from dynamo_cli.frontend.tool_parsers import PARSERS

    guide = PARSERS["hermes"].render_tools([WEATHER])  # what the frontend adds for SmolLM2's template
    variants: dict[str, dict[str, Any]] = {
        "plain": {},
        "tools' text, no parsing": {"_system": guide},
        "tools (auto, parsed)": {"tools": [WEATHER]},
        "logprobs (top 5)": {"logprobs": True, "top_logprobs": 5},
    }
    if args.logprob_scaling:
        variants["logprobs (top 0)"] = {"logprobs": True, "top_logprobs": 0}
        variants["logprobs (top 20)"] = {"logprobs": True, "top_logprobs": 20}
    with tempfile.TemporaryDirectory() as tmp:
        dep = free_engine_deployment(Path(tmp), 1)
        try:
            frontend = dep.ready["processes"]["frontend"]
            if args.pin:
                pin_apart(frontend)

            def messages(i: int, system: str | None) -> list[dict[str, str]]:
                msgs = chat(i, args.prompt_words)
                if system:
                    msgs[0] = {**msgs[0], "content": f"{msgs[0]['content']}\n\n{system}"}
                return msgs

            def bodies(extra: dict[str, Any]) -> list[bytes]:
                extra = dict(extra)
                system = extra.pop("_system", None)
                return [
                    orjson.dumps(
                        {
                            "model": dep.model,
                            "messages": messages(i, system),
                            "max_tokens": 64,
                            "stream": True,
                            "ignore_eos": True,
                            "temperature": 0,
                            **extra,
                        }
                    )
                    for i in range(32)
                ]

            payloads = {name: bodies(extra) for name, extra in variants.items()}
            asyncio.run(
                run_load(dep.url, "/v1/chat/completions", payloads["plain"], concurrency=8, total=200)
            )

            def measure(name: str, rate: float | None) -> tuple[float, float]:
                """Frontend CPU-ms per request and requests/s of one round."""
                before = cpu_seconds(frontend)
                res = asyncio.run(
                    run_load(
                        dep.url, "/v1/chat/completions", payloads[name],
                        concurrency=16, total=args.requests, rate=rate,
                    )
                )  # fmt: skip
                assert res.errors == 0, f"{name}: {res.errors} errors"
                return (cpu_seconds(frontend) - before) * 1000 / args.requests, args.requests / res.wall

            saturated: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name in variants:
                    saturated[name].append(measure(name, None))
            rate = args.load * min(statistics.median(r for _, r in runs) for runs in saturated.values())
            even: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name in variants:
                    even[name].append(measure(name, rate))
        finally:
            dep.stop()
    print(f"frontend CPU per streamed request ({args.rounds} rounds of {args.requests} each, median)")
    _table(f"at equal load, {rate:.0f} requests/s for every variant (the figure):", even)
    _table("at saturation (closed loop, 16 streams; each variant at its own pace):", saturated)
    print(
        "  At saturation the frontend's per-request CPU falls as its wake-ups batch more; a variant that\n"
        "  slows the worker (logprobs: the mocker writes them) is measured at a lower pace, so there its\n"
        "  cost mixes in the batching it lost. Equal load compares the same pace."
    )


def _table(title: str, runs: dict[str, list[tuple[float, float]]]) -> None:
    med = {name: statistics.median(ms for ms, _ in values) for name, values in runs.items()}
    pace = {name: statistics.median(rps for _, rps in values) for name, values in runs.items()}
    print(f"  {title}")
    for name, ms in med.items():
        print(
            f"    {name:<24} {ms:6.2f} ms   {100 * (ms / med['plain'] - 1):+5.1f}% vs plain"
            f"   {pace[name]:6.0f} req/s"
        )
    parsing = med["tools (auto, parsed)"] / med["tools' text, no parsing"] - 1
    print(f"    tool-call parsing itself (same prompt, parsed vs not): {100 * parsing:+.1f}%")


def _measure(url: str, model: str, bodies: list[dict[str, Any]], concurrency: int) -> tuple[float, float]:
    """Output tokens/s and mean output tokens, non-streamed requests over ``concurrency`` clients."""

    async def go() -> tuple[int, float, list[int]]:
        sem = asyncio.Semaphore(concurrency)
        counts: list[int] = []
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:

            async def one(body: dict[str, Any]) -> None:
                async with sem:
                    r = await client.post("/v1/chat/completions", json={"model": model, **body})
                    r.raise_for_status()
                    data = r.json()
                    if body.get("response_format"):
                        json.loads(data["choices"][0]["message"]["content"])  # valid, or the run fails
                    counts.append(data["usage"]["completion_tokens"])

            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await asyncio.gather(*(one(b) for b in bodies))
            return sum(counts), loop.time() - t0, counts

    asyncio.run(go_warm(url, model))
    total, wall, counts = asyncio.run(go())
    return total / wall, statistics.mean(counts)


async def go_warm(url: str, model: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        body = {"model": model, "messages": JSON_PROMPT, "max_tokens": 8}
        (await client.post("/v1/chat/completions", json=body)).raise_for_status()


def _json_phase(url: str, model: str, args: argparse.Namespace) -> dict[str, float]:
    fmt = {"type": "json_schema", "json_schema": {"name": "list", "schema": LIST_SCHEMA, "strict": True}}
    structured = [
        {"messages": JSON_PROMPT, "max_tokens": 200, "temperature": 0.7, "seed": i, "response_format": fmt}
        for i in range(args.json_requests)
    ]
    json_tps, mean_len = _measure(url, model, structured, args.concurrency)
    free = [
        {
            "messages": JSON_PROMPT,
            "max_tokens": round(mean_len),
            "temperature": 0.7,
            "seed": i,
            "ignore_eos": True,
        }
        for i in range(args.json_requests)
    ]
    free_tps, _ = _measure(url, model, free, args.concurrency)
    return {"json": json_tps, "free": free_tps, "len": mean_len}


def _json(args: argparse.Namespace) -> None:
    from benchmarks.vllm_vs_dynamo import vllm_server
    from dynamo_cli.deployment.handle import start
    from dynamo_cli.models.embedded import EMBEDDED_NAME, prepare_weights

    folder = prepare_weights()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = vllm_server(folder, Path(tmp))
        try:
            results["vLLM's server"] = _json_phase(url, EMBEDDED_NAME, args)
        finally:
            proc.terminate()
            proc.wait(60)
        dep = start(Path(tmp), "agg", "--workers", "1", "--set", "log_level=warning", timeout=300)
        try:
            results["ours"] = _json_phase(dep.url, dep.model, args)
        finally:
            dep.stop()
    print(
        f"SmolLM2 on vLLM (CPU), {args.json_requests} chat requests at concurrency {args.concurrency}; "
        "json_schema vs free text of the same mean length"
    )
    print(f"  {'server':<14} {'json tok/s':>10} {'free tok/s':>10} {'json/free':>9} {'mean len':>8}")
    for name, r in results.items():
        print(
            f"  {name:<14} {r['json']:>10.1f} {r['free']:>10.1f} {r['json'] / r['free']:>9.2f} "
            f"{r['len']:>8.1f}"
        )
    ours, theirs = results["ours"], results["vLLM's server"]
    print(f"  ours / vLLM's server, json_schema throughput: {ours['json'] / theirs['json']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["frontend", "json", "all"], default="all")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--prompt-words", type=int, default=300)
    ap.add_argument("--json-requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument(
        "--load", type=float, default=0.6, help="equal-load rounds: this share of the slowest variant's pace"
    )
    ap.add_argument(
        "--pin", action="store_true", help="frontend alone on CPU 0, everything else on the other CPUs"
    )
    ap.add_argument("--logprob-scaling", action="store_true", help="also top_logprobs 0 and 20")
    args = ap.parse_args()
    if args.part in ("frontend", "all"):
        _frontend(args)
    if args.part in ("json", "all"):
        _json(args)


if __name__ == "__main__":
    main()
