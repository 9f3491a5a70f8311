"""The mocker's block pool: ref counts, prefix caching, LRU eviction and the KV events it emits."""

from __future__ import annotations

import pytest

from dynamo_cli.engines.mocker.pool import BlockPool, BlockTable
from dynamo_cli.kv.hashing import sequence_block_hashes
from dynamo_cli.transport.wire import KvEvent

BS = 4


def make_pool(num_blocks: int = 8, caching: bool = True) -> tuple[BlockPool, list[KvEvent]]:
    events: list[KvEvent] = []
    return BlockPool(num_blocks, BS, enable_prefix_caching=caching, on_event=events.append), events


def prefill(pool: BlockPool, tokens: list[int]) -> tuple[BlockTable, int]:
    """Admit ``tokens`` like the engine does: match the cached prefix, allocate, compute, commit."""
    table = BlockTable(sequence_block_hashes(tokens, BS))
    prefix = pool.match(table.hashes, (len(tokens) - 1) // BS)
    assert pool.allocate(table, len(tokens), prefix)
    pool.commit(table, tokens, len(tokens))
    return table, len(prefix)


def test_allocate_and_release_count_blocks() -> None:
    pool, _ = make_pool(8, caching=False)
    a, b = BlockTable(), BlockTable()
    assert pool.allocate(a, 9)  # 3 blocks of 4
    assert pool.allocate(b, 4)
    assert (pool.used, pool.free, pool.total) == (4, 4, 8)
    assert len(a.blocks) == 3 and len(b.blocks) == 1
    assert all(pool.ref_count(x) == 1 for x in a.blocks + b.blocks)
    assert pool.allocate(a, 12)  # still 3 blocks: nothing new
    assert len(a.blocks) == 3
    pool.release(a)
    assert a.blocks == []
    assert (pool.used, pool.free) == (1, 7)


def test_exhaustion_is_all_or_nothing() -> None:
    pool, _ = make_pool(4)
    a, b = BlockTable(), BlockTable()
    assert pool.allocate(a, 12)
    assert not pool.allocate(b, 8)  # needs 2, only 1 free
    assert b.blocks == [] and pool.used == 3
    assert pool.allocate(b, 4)
    assert pool.free == 0
    assert not pool.allocate(a, 13)


def test_stored_events_carry_sequence_hashes_and_tokens() -> None:
    pool, events = make_pool()
    tokens = list(range(100, 110))  # 2 full blocks + 2 tokens
    table, matched = prefill(pool, tokens)
    assert matched == 0
    assert [e.kind for e in events] == ["stored"]
    (ev,) = events
    assert ev.event_id == 1
    assert ev.block_hashes == sequence_block_hashes(tokens, BS)
    assert ev.parent_hash is None
    assert ev.token_ids == tokens[:8]
    assert pool.cached == 2

    # Decode fills the third block: one more event whose parent is the previous block.
    tokens += [7, 8]
    assert pool.allocate(table, 12)
    pool.commit(table, tokens, 12)
    ev = events[-1]
    assert ev.event_id == 2
    assert ev.block_hashes == sequence_block_hashes(tokens, BS)[2:]
    assert ev.parent_hash == sequence_block_hashes(tokens, BS)[1]
    assert ev.token_ids == tokens[8:12]
    assert table.hashes == sequence_block_hashes(tokens, BS)


def test_prefix_hit_after_free_takes_references() -> None:
    pool, events = make_pool()
    tokens = list(range(13))  # 3 full blocks + 1
    first, _ = prefill(pool, tokens)
    first_blocks = list(first.blocks)
    pool.release(first)
    assert pool.used == 0 and pool.cached == 3
    assert all(pool.ref_count(b) == 0 for b in first_blocks)

    second, matched = prefill(pool, [*tokens, 99, 98])
    assert matched == 3
    assert second.blocks[:3] == first_blocks[:3]
    assert all(pool.ref_count(b) == 1 for b in first_blocks[:3])
    assert [e.kind for e in events] == ["stored"]  # nothing new to store

    _, matched = prefill(pool, [*tokens[:8], 5, 5, 5, 5, 5])
    assert matched == 2  # shares the first two blocks only
    assert pool.ref_count(second.blocks[0]) == 2
    assert pool.ref_count(second.blocks[2]) == 1


def test_match_never_covers_whole_prompt() -> None:
    pool, _ = make_pool()
    tokens = list(range(8))  # exactly 2 blocks
    first, _ = prefill(pool, tokens)
    pool.release(first)
    _, matched = prefill(pool, tokens)
    assert matched == 1  # the last block is recomputed so at least one token is computed


def test_lru_eviction_order_and_removed_events() -> None:
    pool, events = make_pool(4)
    a_tokens, b_tokens = list(range(8)), list(range(50, 58))
    a, _ = prefill(pool, a_tokens)
    b, _ = prefill(pool, b_tokens)
    pool.release(a)  # freed first: least recently used
    pool.release(b)
    assert pool.free == 4 and pool.cached == 4
    a_hashes = sequence_block_hashes(a_tokens, BS)

    c = BlockTable()
    assert pool.allocate(c, 4)
    # Within a request the tail block is evicted before its prefix.
    assert events[-1].kind == "removed" and events[-1].block_hashes == [a_hashes[1]]
    assert pool.allocate(c, 12)
    assert events[-1].kind == "removed"
    assert events[-1].block_hashes == [a_hashes[0], sequence_block_hashes(b_tokens, BS)[1]]
    assert pool.cached == 1
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    # The survivor is still a hit.
    assert len(pool.match(sequence_block_hashes(b_tokens, BS))) == 1


def test_reuse_refreshes_lru_position() -> None:
    pool, events = make_pool(4)
    a, _ = prefill(pool, [*range(4), 0])
    b, _ = prefill(pool, [*range(20, 24), 0])
    pool.release(a)
    pool.release(b)
    a2, matched = prefill(pool, [*range(4), 1])  # touch a's block: now most recent
    assert matched == 1
    pool.release(a2)
    c = BlockTable()
    assert pool.allocate(c, 16)
    removed = [h for e in events if e.kind == "removed" for h in e.block_hashes]
    assert removed == sequence_block_hashes(list(range(20, 24)), BS) + sequence_block_hashes(
        list(range(4)), BS
    )


def test_duplicate_block_is_not_registered_twice() -> None:
    pool, events = make_pool()
    tokens = [*range(12), 1]
    # Two requests prefill the same prompt concurrently: neither sees the other's blocks at admission.
    a, b = BlockTable(sequence_block_hashes(tokens, BS)), BlockTable(sequence_block_hashes(tokens, BS))
    assert pool.allocate(a, len(tokens)) and pool.allocate(b, len(tokens))
    pool.commit(a, tokens, len(tokens))
    pool.commit(b, tokens, len(tokens))
    assert [e.kind for e in events] == ["stored"]
    assert pool.cached == 3
    assert all(pool.block_hash(x) is None for x in b.blocks)
    pool.release(b)  # the duplicates go back as plain free blocks, nothing is "removed"
    assert pool.cached == 3 and [e.kind for e in events] == ["stored"]
    # A duplicate in the middle splits the stored run; the next part names its parent.
    c_tokens = tokens[:4] + [77] * 8
    c = BlockTable(sequence_block_hashes(c_tokens, BS))
    assert pool.allocate(c, len(c_tokens))
    pool.commit(c, c_tokens, len(c_tokens))
    assert events[-1].block_hashes == sequence_block_hashes(c_tokens, BS)[1:]
    assert events[-1].parent_hash == sequence_block_hashes(c_tokens, BS)[0]


def test_clear_drops_cache_and_emits_cleared() -> None:
    pool, events = make_pool()
    a, _ = prefill(pool, list(range(9)))
    b, _ = prefill(pool, list(range(30, 39)))
    pool.release(a)
    pool.clear()
    assert events[-1].kind == "cleared"
    assert pool.cached == 0
    assert pool.used == len(b.blocks) and pool.free == 8 - len(b.blocks)
    assert pool.match(sequence_block_hashes(list(range(9)), BS)) == []
    pool.release(b)  # in-use blocks were unregistered: freeing them evicts nothing later
    c = BlockTable()
    assert pool.allocate(c, 32)
    assert [e.kind for e in events].count("removed") == 0


def test_no_caching_means_no_events_and_no_hits() -> None:
    pool, events = make_pool(caching=False)
    a, _ = prefill(pool, list(range(9)))
    pool.release(a)
    _, matched = prefill(pool, list(range(9)))
    assert matched == 0 and events == [] and pool.cached == 0


def test_prefix_for_nonempty_table_is_rejected() -> None:
    pool, _ = make_pool()
    t, _ = prefill(pool, list(range(9)))
    with pytest.raises(ValueError):
        pool.allocate(t, 20, [0])


def test_large_pool_operations_stay_cheap() -> None:
    pool, events = make_pool(16384)
    tables = []
    for r in range(300):
        tokens = [r] * 4 * 40 + [1]
        tables.append(prefill(pool, tokens)[0])
    assert pool.used == 300 * 41
    for t in tables:
        pool.release(t)
    assert pool.used == 0 and pool.cached == 300 * 40
    # Reuse everything again through eviction.
    big = BlockTable()
    assert pool.allocate(big, 16384 * BS)
    assert sum(len(e.block_hashes) for e in events if e.kind == "removed") == 300 * 40
