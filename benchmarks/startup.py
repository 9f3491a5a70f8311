"""Time from `dynamo run agg` to ready (etcd and NATS spawned, frontend healthy).

    .venv/bin/python -m benchmarks.startup [--runs 5] [--engine mocker|vllm] [--workers 2]

The first run uses an empty model cache (the embedded model is converted: its tokenizer for the
mocker, its weights too for vLLM); the rest are warm. "wall" is from process start to the ready
event; "launcher" is the launcher's own count.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from dynamo_cli.deployment.handle import start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--engine", default="mocker", choices=["mocker", "vllm"])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        walls, inner = [], []
        for i in range(args.runs):
            t0 = time.perf_counter()
            dep = start(
                Path(tmp), "agg", "--engine", args.engine, "--workers", str(args.workers),
                env={"DYNAMO_CACHE_DIR": str(cache)}, timeout=600,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            dep.stop()
            label = "cold" if i == 0 else "warm"
            print(f"run {i + 1} ({label}): wall {wall:.2f} s, launcher {dep.ready['ready_s']:.2f} s")
            if i:
                walls.append(wall)
                inner.append(dep.ready["ready_s"])
    if walls:
        print(
            f"warm median: wall {statistics.median(walls):.2f} s, launcher {statistics.median(inner):.2f} s"
        )


if __name__ == "__main__":
    main()
