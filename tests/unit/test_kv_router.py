"""KV index and KV-aware selection: pure logic, replayable."""

from __future__ import annotations

from collections import Counter

import pytest

from dynamo_cli.config.models import RouterConfig
from dynamo_cli.kv.hashing import sequence_block_hashes
from dynamo_cli.routing.index import KvIndex
from dynamo_cli.routing.kv_router import KvRouter
from dynamo_cli.routing.policies import NoWorkersError
from dynamo_cli.transport.wire import KvEvent, LoadMetrics

BS = 4


def stored(eid: int, hashes: list[int]) -> KvEvent:
    return KvEvent(eid, "stored", hashes)


# ---- index --------------------------------------------------------------------------------------------
def test_overlap_is_the_leading_run_without_gaps() -> None:
    idx = KvIndex()
    idx.store(1, [10, 11, 12, 13])
    idx.store(2, [10, 11])
    idx.store(3, [10, 11, 12, 13, 14])
    assert idx.overlaps([10, 11, 12, 13, 14, 15]) == {1: 4, 2: 2, 3: 5}
    assert idx.overlaps([99, 10]) == {}
    idx.remove(3, [12])  # a hole: nothing after it counts
    assert idx.overlaps([10, 11, 12, 13, 14]) == {1: 4, 2: 2, 3: 2}
    idx.clear(1)
    assert idx.overlaps([10, 11, 12]) == {2: 2, 3: 2}
    assert idx.blocks_of(1) == 0 and len(idx) == 2 + 4


def test_index_matches_a_brute_force_answer() -> None:
    import random

    rng = random.Random(3)
    idx = KvIndex()
    held: dict[int, set[int]] = {w: set() for w in range(6)}
    prompts = [[rng.randrange(50) for _ in range(rng.randrange(1, 40))] for _ in range(40)]
    for _ in range(400):
        w = rng.randrange(6)
        hashes = sequence_block_hashes(rng.choice(prompts), BS)
        if rng.random() < 0.7:
            idx.store(w, hashes)
            held[w].update(hashes)
        else:
            gone = hashes[rng.randrange(len(hashes)) :] if hashes else []
            idx.remove(w, gone)
            held[w].difference_update(gone)
    for p in prompts:
        hashes = sequence_block_hashes(p, BS)
        expect = {}
        for w, blocks in held.items():
            n = 0
            while n < len(hashes) and hashes[n] in blocks:
                n += 1
            if n:
                expect[w] = n
        assert idx.overlaps(hashes) == expect


# ---- selection ----------------------------------------------------------------------------------------
def test_the_worker_holding_the_prefix_wins() -> None:
    r = KvRouter(BS, RouterConfig(seed=1))
    for w in (1, 2, 3):
        r.add_worker(w)
    prompt = list(range(40))
    hashes = sequence_block_hashes(prompt, BS)
    assert r.apply_events(2, [stored(1, hashes[:8])])
    d = r.select([1, 2, 3], hashes, len(prompt))
    assert (d.worker, d.overlap_blocks, d.request_blocks) == (2, 8, 10)


def test_equal_prefixes_spread_by_load() -> None:
    r = KvRouter(BS, RouterConfig(seed=1))
    for w in (1, 2):
        r.add_worker(w)
    hashes = sequence_block_hashes(list(range(40)), BS)
    picks = []
    for i in range(6):  # nothing cached anywhere: in-flight load decides
        d = r.select([1, 2], hashes, 40)
        r.on_routed(f"r{i}", d, hashes)
        picks.append(d.worker)
    assert Counter(picks) == {1: 3, 2: 3}


def test_load_beats_a_small_overlap() -> None:
    r = KvRouter(BS, RouterConfig(seed=1))
    r.add_worker(1)
    r.add_worker(2)
    hashes = sequence_block_hashes(list(range(40)), BS)
    r.apply_events(1, [stored(1, hashes[:1])])
    r.update_load(1, LoadMetrics(running=30, waiting=5, active_blocks=500, total_blocks=1000))
    assert r.select([1, 2], hashes, 40).worker == 2


def test_prefill_is_released_at_first_token_and_the_rest_at_completion() -> None:
    r = KvRouter(BS, RouterConfig())
    r.add_worker(1)
    hashes = sequence_block_hashes(list(range(40)), BS)
    d = r.select([1], hashes, 40)
    r.on_routed("a", d, hashes)
    assert r.in_flight(1) == (10, 10)
    r.on_first_token("a")
    assert r.in_flight(1) == (0, 10)
    r.on_complete("a")
    r.on_complete("a")  # idempotent: replicas may hear it twice
    assert r.in_flight(1) == (0, 0)


def test_routing_an_id_again_releases_its_earlier_load() -> None:
    r = KvRouter(BS, RouterConfig())
    r.add_worker(1)
    r.add_worker(2)
    hashes = sequence_block_hashes(list(range(40)), BS)
    first = r.select([1], hashes, 40)
    r.on_routed("a", first, hashes)
    second = r.select([2], hashes, 40)
    r.on_routed("a", second, hashes)
    assert r.in_flight(1) == (0, 0) and r.in_flight(2) == (10, 10)


def test_ties_are_broken_at_random_and_temperature_samples() -> None:
    r = KvRouter(BS, RouterConfig(seed=7))
    for w in (1, 2, 3):
        r.add_worker(w)
    assert {r.select([1, 2, 3], [], 8).worker for _ in range(60)} == {1, 2, 3}
    warm = KvRouter(BS, RouterConfig(seed=7, temperature=1.0))
    for w in (1, 2):
        warm.add_worker(w)
    hashes = sequence_block_hashes(list(range(400)), BS)
    warm.apply_events(1, [stored(1, hashes[:90])])
    picks = Counter(warm.select([1, 2], hashes, 400).worker for _ in range(300))
    assert picks[1] > picks[2] > 0  # mostly the cheap one, sometimes the other


def test_no_candidates() -> None:
    with pytest.raises(NoWorkersError):
        KvRouter(BS, RouterConfig()).select([], [], 10)


# ---- events -------------------------------------------------------------------------------------------
def test_event_gap_drops_the_worker_state_until_resync() -> None:
    r = KvRouter(BS, RouterConfig())
    r.add_worker(1)
    h = sequence_block_hashes(list(range(40)), BS)
    assert r.apply_events(1, [stored(1, h[:4]), stored(2, h[4:6])])
    assert r.index.overlaps(h) == {1: 6}
    assert r.apply_events(1, [stored(2, h[4:6])])  # a duplicate delivery is harmless
    assert not r.apply_events(1, [stored(5, h[6:8])])  # events 3 and 4 were lost
    assert r.index.blocks_of(1) == 2  # only what came after the gap
    r.resync(1, h[:8], 5)
    assert r.index.overlaps(h) == {1: 8}
    assert r.apply_events(1, [KvEvent(6, "removed", h[7:8])])
    assert r.index.overlaps(h) == {1: 7}
    assert r.apply_events(1, [KvEvent(7, "cleared")])
    assert r.index.overlaps(h) == {}


def test_a_departed_worker_leaves_nothing_behind() -> None:
    r = KvRouter(BS, RouterConfig())
    r.add_worker(1)
    h = sequence_block_hashes(list(range(40)), BS)
    r.apply_events(1, [stored(1, h)])
    r.on_routed("x", r.select([1], h, 40), h)
    r.remove_worker(1)
    assert len(r.index) == 0 and r.in_flight(1) == (0, 0)


def test_approximate_mode_remembers_its_own_decisions_for_a_while() -> None:
    r = KvRouter(BS, RouterConfig(approx_ttl_s=10, seed=3))
    r.add_worker(1, publishes_events=False)
    r.add_worker(2, publishes_events=False)
    h = sequence_block_hashes(list(range(80)), BS)
    first = r.select([1, 2], h, 80, now=0.0)
    r.on_routed("a", first, h, now=0.0)
    r.on_complete("a")
    again = r.select([1, 2], h, 80, now=5.0)
    assert (again.worker, again.overlap_blocks) == (first.worker, 20)
    later = r.select([1, 2], h, 80, now=11.0)  # the recorded guess has expired
    assert later.overlap_blocks == 0
