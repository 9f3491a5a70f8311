"""vLLM's KV events become this project's events, with the router's block hashes."""

from __future__ import annotations

from dynamo_cli.engines.vllm_kv_events import KvEventTranslator
from dynamo_cli.kv.hashing import sequence_block_hashes

BS = 4
TOKENS = list(range(100, 124))  # 6 blocks of 4


def test_stored_events_carry_our_chained_hashes_in_either_encoding() -> None:
    ours = sequence_block_hashes(TOKENS, BS)
    as_map = KvEventTranslator(BS)
    [ev] = as_map.translate({"type": "BlockStored", "block_hashes": [b"a", b"b", b"c"], "parent_block_hash": None,
                             "token_ids": TOKENS[:12], "block_size": BS})  # fmt: skip
    assert (ev.event_id, ev.kind, ev.block_hashes, ev.parent_hash) == (1, "stored", ours[:3], None)
    # A continuation names vLLM's parent hash; ours chain on from the parent's.
    [ev2] = as_map.translate({"type": "BlockStored", "block_hashes": [b"d", b"e", b"f"], "parent_block_hash": b"c",
                              "token_ids": TOKENS[12:], "block_size": BS})  # fmt: skip
    assert ev2.block_hashes == ours[3:] and ev2.parent_hash == ours[2] and ev2.event_id == 2
    as_array = KvEventTranslator(BS)
    [ev3] = as_array.translate(["BlockStored", [11, 12, 13, 14, 15, 16], None, TOKENS, BS])
    assert ev3.block_hashes == ours


def test_removals_and_clears_map_back_to_our_hashes() -> None:
    ours = sequence_block_hashes(TOKENS, BS)
    t = KvEventTranslator(BS)
    t.translate(
        {
            "type": "BlockStored",
            "block_hashes": [1, 2, 3, 4, 5, 6],
            "parent_block_hash": None,
            "token_ids": TOKENS,
        }
    )
    [gone] = t.translate({"type": "BlockRemoved", "block_hashes": [6, 5, 99]})
    assert gone.kind == "removed" and gone.block_hashes == [ours[5], ours[4]]  # an unknown hash is ignored
    assert sorted(t.cached()) == sorted(ours[:4]) and t.last_event_id == 2
    assert t.translate({"type": "BlockRemoved", "block_hashes": [99]}) == []
    [cleared] = t.translate({"type": "AllBlocksCleared"})
    assert cleared.kind == "cleared" and t.cached() == []
    assert t.translate({"type": "SomethingNew"}) == []
