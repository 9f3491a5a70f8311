"""KV router speed: decision latency with many workers and a large index, and event ingestion rate.

    .venv/bin/python -m benchmarks.kv_router_micro [--workers 32] [--blocks 500000]

Fills the index with --blocks (worker, block) entries from shared and private prefixes, then times
`select` + `on_routed` for 3k-token prompts (~190 blocks) that partly hit, and the rate at which
"stored" events are applied.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from dynamo_cli.config.models import RouterConfig
from dynamo_cli.kv.hashing import sequence_block_hashes
from dynamo_cli.routing.kv_router import KvRouter
from dynamo_cli.transport.wire import KvEvent

BS = 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=500_000)
    ap.add_argument("--decisions", type=int, default=5000)
    args = ap.parse_args()
    rng = random.Random(0)
    router = KvRouter(BS, RouterConfig(seed=0))
    workers = list(range(1, args.workers + 1))
    for w in workers:
        router.add_worker(w)

    # Sequences of 3000 tokens: a shared 1000-token system prompt, then private content.
    system = [rng.randrange(49152) for _ in range(1000)]
    seqs = [system + [rng.randrange(49152) for _ in range(2000)] for _ in range(256)]
    seq_hashes = [sequence_block_hashes(s, BS) for s in seqs]

    # Ingestion: stored events of ~190 blocks each, spread over workers, until --blocks entries.
    event_ids = dict.fromkeys(workers, 0)
    applied = 0
    t0 = time.perf_counter()
    k = 0
    while len(router.index) < args.blocks:
        w = workers[k % len(workers)]
        hashes = (
            seq_hashes[k % len(seq_hashes)]
            if k < len(seq_hashes) * 4
            else [rng.getrandbits(63) for _ in range(188)]
        )
        event_ids[w] += 1
        router.apply_events(w, [KvEvent(event_ids[w], "stored", hashes)])
        applied += len(hashes)
        k += 1
    ingest_s = time.perf_counter() - t0
    print(f"index: {len(router.index)} (worker, block) entries over {args.workers} workers")
    print(f"ingestion: {applied / ingest_s:,.0f} blocks/s ({k} stored events of ~188 blocks)")

    lat = []
    for i in range(args.decisions):
        hashes = seq_hashes[rng.randrange(len(seq_hashes))]
        t = time.perf_counter()
        d = router.select(workers, hashes, 3000)
        router.on_routed(f"r{i}", d, hashes)
        lat.append(time.perf_counter() - t)
        router.on_complete(f"r{i}")
    lat.sort()
    us = [x * 1e6 for x in lat]
    print(f"decision (select + on_routed), 3000-token prompts: p50 {us[len(us) // 2]:.0f} us, "
          f"p99 {us[int(len(us) * 0.99)]:.0f} us, mean {statistics.mean(us):.0f} us")  # fmt: skip


if __name__ == "__main__":
    main()
