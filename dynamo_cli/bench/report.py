"""What a benchmark run measured: production-stack's summary block, percentiles, CSV and a PNG plot.

The summary's definitions follow production-stack's multi-round QA so figures can be compared with
published ones (seed 003 shows two): rates are over the time from the first launch to the last finish,
"Average generation throughput (per request)" is the mean over requests of generated tokens divided by
the time from their first token to their last, and "QPS" is the configured rate (the measured sending
rate is shown beside it).
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any

from dynamo_cli.bench.multi_round import LoadResult, Record

CSV_COLUMNS = [
    "prompt_tokens",
    "generation_tokens",
    "ttft",
    "generation_time",
    "user_id",
    "question_id",
    "launch_time",
    "finish_time",
    "itl_mean",
    "error",
]


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank), None for no values."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summarize(result: LoadResult) -> dict[str, Any]:
    spec, done = result.spec, result.finished
    launches = sorted(r.launch for r in result.records)
    start = min(launches, default=0.0)
    end = max((r.finish for r in done), default=start)
    span = max(end - start, 1e-9)
    ttfts = [r.ttft for r in done if r.ttft is not None]
    itls = [g for r in done for g in r.itls]
    gen_rates = [r.generation_tokens / r.generation_time for r in done if r.generation_time > 0]
    sent = (
        (len(launches) - 1) / (launches[-1] - launches[0])
        if len(launches) > 1 and launches[-1] > launches[0]
        else None
    )
    late = {uid: n for uid, n in result.late_rounds.items() if n}
    out: dict[str, Any] = {
        "qps": spec.qps,
        "qps_sent": sent,
        "processing_speed": len(done) / span,
        "requests_on_the_fly": result.on_the_fly_at_stop,
        "input_tokens_per_s": sum(r.prompt_tokens for r in done) / span,
        "output_tokens_per_s": sum(r.generation_tokens for r in done) / span,
        "avg_generation_throughput": statistics.fmean(gen_rates) if gen_rates else None,
        "avg_ttft_s": statistics.fmean(ttfts) if ttfts else None,
        "time_range": [result.epoch + start, result.epoch + end],
        "duration_s": span,
        "requests": len(done),
        "failed": len(result.failed),
        "prompt_tokens": sum(r.prompt_tokens for r in done),
        "generation_tokens": sum(r.generation_tokens for r in done),
        "users": result.users_started,
        "users_behind": len(late),
        "late_rounds": sum(late.values()),
        "server_usage": result.server_usage,
    }
    for name, vals in (("ttft", ttfts), ("itl", itls)):
        for q in (50, 90, 99):
            v = pct(vals, q / 100)
            out[f"{name}_p{q}_ms"] = None if v is None else v * 1000
    return out


def _f(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def summary_block(s: dict[str, Any]) -> str:
    """Production-stack's "Performance summary" block, then latency percentiles and what went wrong."""
    t0, t1 = s["time_range"]
    sent = "" if s["qps_sent"] is None else f" (configured; measured sending rate {s['qps_sent']:.4f} reqs/s)"
    lines = [
        "==================== Performance summary ======================",
        f"  QPS: {s['qps']:.4f} reqs/s{sent}",
        f"  Processing speed: {s['processing_speed']:.4f} reqs/s",
        f"  Requests on-the-fly: {s['requests_on_the_fly']}",
        f"  Input tokens per second: {s['input_tokens_per_s']:.4f} tokens/s",
        f"  Output tokens per second: {s['output_tokens_per_s']:.4f} tokens/s",
        f"  Average generation throughput (per request): {_f(s['avg_generation_throughput'])} tokens/req/s",
        f"  Average TTFT: {_f(s['avg_ttft_s'])}s",
        f"Time range: {t0} - {t1} ({s['duration_s']:.2f}s)",
        "===============================================================",
        f"  TTFT p50/p90/p99: {_f(s['ttft_p50_ms'], 1)} / {_f(s['ttft_p90_ms'], 1)} / "
        f"{_f(s['ttft_p99_ms'], 1)} ms",
        f"  ITL  p50/p90/p99: {_f(s['itl_p50_ms'], 1)} / {_f(s['itl_p90_ms'], 1)} / "
        f"{_f(s['itl_p99_ms'], 1)} ms",
        f"  Requests: {s['requests']} finished, {s['failed']} failed; users: {s['users']}",
    ]
    if s["users_behind"]:
        lines.append(
            f"  {s['users_behind']} user(s) could not keep their QPS ({s['late_rounds']} rounds sent late): "
            "the server, or this client, is saturated"
        )
    if not s["server_usage"]:
        lines.append("  The server reported no token usage: generated tokens are counted from stream chunks")
    return "\n".join(lines)


def write_csv(records: list[Record], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in sorted(records, key=lambda r: r.launch):
            itl = statistics.fmean(r.itls) if r.itls else None
            w.writerow(
                [
                    r.prompt_tokens,
                    r.generation_tokens,
                    _opt(r.ttft),
                    f"{r.generation_time:.6f}",
                    r.user_id,
                    r.question_id,
                    f"{r.launch:.6f}",
                    f"{r.finish:.6f}",
                    _opt(itl),
                    r.error or "",
                ]
            )


def _opt(v: float | None) -> str:
    return "" if v is None else f"{v:.6f}"


def plot(records: list[Record], path: Path, title: str = "") -> None:
    """TTFT and ITL over the run: one point per request, at its launch time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = sorted((r for r in records if r.error is None and r.ttft is not None), key=lambda r: r.launch)
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    a.scatter([r.launch for r in done], [(r.ttft or 0) * 1000 for r in done], s=6)
    a.set_ylabel("TTFT (ms)")
    with_itl = [r for r in done if r.itls]
    b.scatter(
        [r.launch for r in with_itl],
        [statistics.fmean(r.itls) * 1000 for r in with_itl],
        s=6,
        c="tab:orange",
        label="mean ITL of a request",
    )
    b.scatter(
        [r.launch for r in with_itl],
        [max(r.itls) * 1000 for r in with_itl],
        s=4,
        c="tab:red",
        alpha=0.4,
        label="max ITL of a request",
    )
    b.set_ylabel("ITL (ms)")
    b.set_xlabel("request launch (s since start)")
    b.legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


COMPARE_ROWS = [
    ("qps", "QPS (configured)", 2),
    ("processing_speed", "processing speed (req/s)", 3),
    ("input_tokens_per_s", "input tokens/s", 1),
    ("output_tokens_per_s", "output tokens/s", 1),
    ("avg_generation_throughput", "generation tokens/req/s", 2),
    ("avg_ttft_s", "average TTFT (s)", 4),
    ("ttft_p50_ms", "TTFT p50 (ms)", 1),
    ("ttft_p99_ms", "TTFT p99 (ms)", 1),
    ("itl_p50_ms", "ITL p50 (ms)", 2),
    ("itl_p99_ms", "ITL p99 (ms)", 2),
    ("requests", "requests finished", 0),
    ("failed", "requests failed", 0),
    ("users_behind", "users behind", 0),
]


def compare_rows(summaries: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per metric, one column per run; a last column of each run relative to the first."""
    rows = []
    names = list(summaries)
    for key, label, digits in COMPARE_ROWS:
        vals = [summaries[n].get(key) for n in names]
        row = [label, *(_f(v, digits) for v in vals)]
        if len(names) > 1:
            base = vals[0]
            row.append(" ".join("n/a" if not base or v is None else f"{v / base:.2f}x" for v in vals[1:]))
        rows.append(row)
    return rows


def compare_table(summaries: dict[str, dict[str, Any]]) -> Any:
    """A rich table of several runs' summaries side by side (the first is the reference)."""
    from rich.table import Table

    table = Table(title="multi-round QA, the same workload on each profile")
    for col in ["", *summaries, *(["vs first"] if len(summaries) > 1 else [])]:
        table.add_column(col, justify="left" if not col else "right")
    for row in compare_rows(summaries):
        table.add_row(*row)
    return table
