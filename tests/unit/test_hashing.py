"""Block hashing: full blocks only, XXH3-64 (seed 1337) over little-endian u32 tokens, chained over parents."""

from __future__ import annotations

import random
import struct

import pytest
import xxhash

from dynamo_cli.kv.hashing import HASH_SEED, chain_hashes, local_block_hashes, sequence_block_hashes

BS = 16


def tokens(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(0, 2**32) for _ in range(n)]  # the whole u32 range, not just small ids


def reference_local(block: list[int]) -> int:
    """Computed here, independently of the module: XXH3-64, seed 1337, tokens as '<u32'."""
    return xxhash.xxh3_64_intdigest(struct.pack(f"<{len(block)}I", *block), seed=1337)


def reference_sequence(blocks: list[list[int]]) -> list[int]:
    out, parent = [], 0
    for block in blocks:
        parent = xxhash.xxh3_64_intdigest(struct.pack("<QQ", parent, reference_local(block)), seed=1337)
        out.append(parent)
    return out


def test_seed_is_1337() -> None:
    assert HASH_SEED == 1337


def test_local_hash_matches_an_independent_computation() -> None:
    toks = tokens(3 * BS, seed=1)
    blocks = [toks[i : i + BS] for i in range(0, len(toks), BS)]
    assert local_block_hashes(toks, BS) == [reference_local(b) for b in blocks]
    # one concrete value, to catch any change of the seed or the byte layout
    expected = xxhash.xxh3_64_intdigest(struct.pack("<16I", *range(16)), seed=1337)
    assert local_block_hashes(list(range(16)), 16) == [expected]


def test_sequence_hash_matches_an_independent_computation() -> None:
    toks = tokens(4 * BS, seed=2)
    blocks = [toks[i : i + BS] for i in range(0, len(toks), BS)]
    assert sequence_block_hashes(toks, BS) == reference_sequence(blocks)


@pytest.mark.parametrize(("n", "full"), [(0, 0), (1, 0), (BS - 1, 0), (BS, 1), (BS + 1, 1), (3 * BS - 1, 2)])
def test_only_full_blocks_are_hashed(n: int, full: int) -> None:
    toks = tokens(n, seed=3)
    assert len(local_block_hashes(toks, BS)) == full
    assert len(sequence_block_hashes(toks, BS)) == full


def test_partial_tail_does_not_change_the_hashes() -> None:
    toks = tokens(2 * BS, seed=4)
    base = sequence_block_hashes(toks, BS)
    for tail in ([1], tokens(BS - 1, seed=5)):
        assert sequence_block_hashes(toks + tail, BS) == base


def test_same_prefix_gives_the_same_leading_hashes() -> None:
    prefix = tokens(3 * BS, seed=6)
    a = sequence_block_hashes(prefix + tokens(2 * BS, seed=7), BS)
    b = sequence_block_hashes(prefix + tokens(2 * BS, seed=8), BS)
    assert a[:3] == b[:3]
    assert a[3] != b[3] and a[4] != b[4]


@pytest.mark.parametrize("k", [0, 1, 3])
def test_a_change_in_block_k_changes_hashes_from_k_on(k: int) -> None:
    toks = tokens(4 * BS, seed=9)
    changed = list(toks)
    changed[k * BS + BS // 2] ^= 1  # one token, in the middle of block k
    before, after = sequence_block_hashes(toks, BS), sequence_block_hashes(changed, BS)
    assert after[:k] == before[:k]
    assert all(a != b for a, b in zip(after[k:], before[k:], strict=True))
    # the local hashes of the other blocks do not move: only the chain carries the change
    lb, la = local_block_hashes(toks, BS), local_block_hashes(changed, BS)
    assert [i for i in range(4) if lb[i] != la[i]] == [k]


def test_identical_blocks_at_different_positions_get_different_sequence_hashes() -> None:
    block = tokens(BS, seed=10)
    local = local_block_hashes(block * 3, BS)
    seq = sequence_block_hashes(block * 3, BS)
    assert len(set(local)) == 1
    assert len(set(seq)) == 3


def test_token_order_within_a_block_matters() -> None:
    block = list(range(BS))
    assert local_block_hashes(block, BS) != local_block_hashes(block[::-1], BS)


def test_chain_hashes_is_consistent_with_sequence_block_hashes() -> None:
    toks = tokens(5 * BS, seed=11)
    local = local_block_hashes(toks, BS)
    seq = sequence_block_hashes(toks, BS)
    assert chain_hashes(local) == seq
    # continuing a chain from a parent gives the same hashes as hashing the whole sequence
    assert chain_hashes(local[2:], parent=seq[1]) == seq[2:]
    assert chain_hashes([]) == []


def test_hashes_are_unsigned_64_bit() -> None:
    for h in sequence_block_hashes(tokens(8 * BS, seed=12), BS) + local_block_hashes(tokens(8 * BS), BS):
        assert 0 <= h < 2**64


def test_block_size_changes_the_hashes() -> None:
    toks = tokens(64, seed=13)
    assert sequence_block_hashes(toks, 16)[:1] != sequence_block_hashes(toks, 32)[:1]
    assert len(sequence_block_hashes(toks, 32)) == 2


def test_accepts_any_sequence_of_ints() -> None:
    toks = tokens(2 * BS, seed=14)
    assert sequence_block_hashes(tuple(toks), BS) == sequence_block_hashes(toks, BS)
