"""VllmEngine's disaggregated prefill/decode on CPU: two engines in this process, KV pulled over NIXL.

The tiny random Llama ignores its context (it repeats one token whatever came before), so a decode on
wrong or missing KV would still "match"; its weights are sharpened here until the next tokens depend on
the whole prompt, which makes token-for-token equality mean something.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import pytest_asyncio

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.models.tiny import build_tiny_llama
from dynamo_cli.transport.ports import free_port
from dynamo_cli.transport.wire import EngineOutput, EngineRequest, SamplingOptions
from tests.e2e.helpers import child_pids

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="the vLLM engine is not installed"),
    pytest.mark.asyncio(loop_scope="module"),
]

BLOCK = 32
DECODE_TIMEOUT_S = 2.0  # the decode engine's disagg.prefill_timeout_s: how long it waits for KV


def _process_tree(pid: int) -> list[int]:
    out = [pid]
    for child in child_pids(pid):
        out += _process_tree(child)
    return out


@dataclass
class Pair:
    prefill: Any  # VllmEngine
    decode: Any
    prefill_pids: list[int]  # the prefill engine's processes (engine core and its worker)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pair(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pair]:
    if importlib.util.find_spec("nixl") is None:
        pytest.fail("NIXL is not installed: run scripts/install.sh (it installs nixl and nixl-cu12)")
    from dynamo_cli.engines.vllm_engine import VllmEngine

    model = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", weight_scale=8)
    saved_env = dict(os.environ)
    scratch = tmp_path_factory.mktemp("vllm-scratch")
    os.environ.update(TMPDIR=str(scratch), VLLM_CACHE_ROOT=str(scratch / "cache"))
    # float32: in bf16 the decode engine's own pass over the last prompt token (vLLM always recomputes
    # it) can round differently from a whole-prompt prefill and flip a near-tie a few tokens later.
    vllm = {
        "block_size": BLOCK,
        "cpu_kv_cache_gib": 1,
        "enforce_eager": True,
        "extra_args": {"dtype": "float32"},
    }
    base = {"engine": "vllm", "vllm": vllm}
    prefill = VllmEngine(DynamoConfig.model_validate(base | {"disagg": {"remote_prefill": True}}), model)
    decode_cfg = base | {"disagg": {"remote_prefill": True, "prefill_timeout_s": DECODE_TIMEOUT_S}}
    decode = VllmEngine(DynamoConfig.model_validate(decode_cfg), model, seed=1)
    try:
        before = set(child_pids(os.getpid()))
        await prefill.start()
        pids = [p for c in set(child_pids(os.getpid())) - before for p in _process_tree(c)]
        await decode.start()
        yield Pair(prefill, decode, pids)
    finally:
        await decode.close()
        await prefill.close()
        os.environ.clear()
        os.environ.update(saved_env)


_rng = random.Random(7)


def _prompt() -> list[int]:
    """A prompt nobody has seen: several hundred random token ids, not a multiple of the block size."""
    return [_rng.randrange(100, 40000) for _ in range(_rng.randrange(400, 650))]


async def _run(
    engine: Any, prompt: list[int], max_tokens: int, kv: dict[str, Any] | None = None
) -> list[EngineOutput]:
    rid = f"r{_rng.getrandbits(48):x}"
    sampling = SamplingOptions(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return [o async for o in engine.generate(EngineRequest(rid, prompt, sampling, kv))]


def _tokens(outs: list[EngineOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


async def _local_reference(engine: Any, prompt: list[int], max_tokens: int = 16) -> list[int]:
    """What the engine decodes on its own, from a cold cache, leaving the cache cold again."""
    tokens = _tokens(await _run(engine, prompt, max_tokens))
    await _cold(engine)
    return tokens


async def _cold(engine: Any) -> None:
    """Empty the prefix cache; vLLM refuses while a request holds blocks (an aborted pull keeps its
    blocks until vLLM's own handshake attempt gives up, 5 s)."""
    deadline = time.monotonic() + 10
    while not await engine.reset_prefix_cache():
        assert time.monotonic() < deadline, "the prefix cache never emptied"
        await asyncio.sleep(0.1)


async def _prefill(pair: Pair, prompt: list[int]) -> dict[str, Any]:
    outs = await _run(pair.prefill, prompt, 1, {"do_remote_decode": True})
    params = outs[-1].kv_transfer_params
    assert outs[-1].finish_reason == "length" and params is not None
    return msgpack.unpackb(msgpack.packb(params))  # what a decode worker gets over NATS


async def _eventually(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "vLLM's stats never showed it"
        await asyncio.sleep(0.05)


async def test_decode_on_pulled_kv_matches_a_local_run(pair: Pair) -> None:
    totals = pair.decode.kv_transfer_totals
    per_block = pair.decode.kv_bytes_per_block
    assert per_block > 0  # layers * (K, V) * KV heads * head dim * dtype bytes * block size
    for _ in range(3):
        prompt = _prompt()
        local = await _local_reference(pair.decode, prompt)
        params = await _prefill(pair, prompt)
        blocks = math.ceil(len(prompt) / BLOCK)
        assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
        assert params["remote_host"] == "127.0.0.1" and params["remote_port"] == pair.prefill.side_channel[1]
        assert [len(g) for g in params["remote_block_ids"]] == [blocks]
        assert params == msgpack.unpackb(msgpack.packb(params))  # plain lists, ints and strings

        before = dict(totals)
        outs = await _run(pair.decode, prompt, 16, params)
        assert _tokens(outs) == local
        assert outs[0].disagg == {"kv_transfer": "nixl", "kv_blocks": blocks, "kv_bytes": blocks * per_block}
        # The KV really moved: NIXL read exactly those blocks, and the decode engine computed no prompt token.
        await _eventually(lambda b=before, n=len(prompt): totals["tokens_pulled"] == b["tokens_pulled"] + n)
        assert totals["bytes"] - before["bytes"] == blocks * per_block
        assert totals["transfers"] == before["transfers"] + 1 and totals["failed"] == before["failed"]
        assert totals["tokens_computed"] == before["tokens_computed"]


async def test_the_decode_runs_on_the_pulled_kv_and_refuses_another_prompts(pair: Pair) -> None:
    a, b = _prompt(), _prompt()
    b = b[: len(a)] if len(b) > len(a) else b + a[len(b) :]  # same length, different tokens
    own = await _local_reference(pair.decode, a)
    # The KV of b's prompt with a's last token (the one a decode engine computes itself).
    mixed = await _local_reference(pair.decode, [*b[:-1], a[-1]])
    assert mixed != own  # the sharpened model does depend on the context

    params = await _prefill(pair, b)
    outs = await _run(pair.decode, a, 16, params)
    assert outs[0].disagg == {
        "kv_transfer": "local",
        "cause": "transfer_failed",
        "reason": "the prefill computed another prompt",
    }
    assert _tokens(outs) == own
    await _cold(pair.decode)  # or a's own blocks would serve the next decode

    params = await _prefill(pair, b)
    del params["dynamo_prompt"]  # params from elsewhere: vLLM takes b's KV for a's prompt, unchecked
    outs = await _run(pair.decode, a, 16, params)
    assert outs[0].disagg is not None and outs[0].disagg["kv_transfer"] == "nixl"
    assert _tokens(outs) == mixed  # decoded on the pulled KV, not on a recomputed prompt
    await _cold(pair.decode)  # b's KV now sits in the cache under a's tokens


async def test_a_transfer_that_cannot_work_falls_back_to_a_local_prefill(pair: Pair) -> None:
    totals = pair.decode.kv_transfer_totals

    async def decode(
        prompt: list[int], params: dict[str, Any], expected: list[int]
    ) -> tuple[dict[str, Any], float]:
        t0 = time.monotonic()
        outs = await _run(pair.decode, prompt, 16, params)
        assert _tokens(outs) == expected and outs[-1].finish_reason == "length" and outs[0].disagg is not None
        return outs[0].disagg, time.monotonic() - t0

    # Params used twice: the first pull let the prefill engine free the blocks.
    prompt = _prompt()
    local = await _local_reference(pair.decode, prompt)
    params = await _prefill(pair, prompt)
    assert (await decode(prompt, params, local))[0]["kv_transfer"] == "nixl"
    await _cold(pair.decode)
    info, _ = await decode(prompt, params, local)
    assert info == {
        "kv_transfer": "local",
        "cause": "transfer_failed",
        "reason": "these params were used already (their blocks are freed)",
    }
    await _cold(pair.decode)

    # Params past their lease: the prefill engine may have reused the blocks.
    prompt = _prompt()
    local = await _local_reference(pair.decode, prompt)
    params = await _prefill(pair, prompt)
    params["dynamo_expires_at"] = time.time()
    info, _ = await decode(prompt, params, local)
    assert info["kv_transfer"] == "local" and info["cause"] == "kv_lease" and "lease" in info["reason"]
    await _cold(pair.decode)

    # The prefill engine is gone (nothing listens on its side channel): no wait at all.
    prompt = _prompt()
    local = await _local_reference(pair.decode, prompt)
    params = await _prefill(pair, prompt) | {"remote_port": free_port()}
    info, _ = await decode(prompt, params, local)
    # Seen as a dead side channel at once, not waited for until the prefill timeout:
    assert info["kv_transfer"] == "local" and info["cause"] == "side_channel"
    await _cold(pair.decode)

    # vLLM itself fails the load (the handshake finds another engine there): it recomputes.
    prompt = _prompt()
    local = await _local_reference(pair.decode, prompt)
    params = await _prefill(pair, prompt) | {"remote_engine_id": "someone-else"}
    before = dict(totals)
    info, _ = await decode(prompt, params, local)
    # Asked for, and then recomputed here: the decode reports it as a local prefill.
    assert info == {
        "kv_transfer": "local",
        "cause": "transfer_failed",
        "reason": "vLLM could not load the prefill's KV and computed the prompt itself",
    }
    await _eventually(lambda: totals["failed"] > before["failed"])  # its handshake (maybe a heartbeat's too)
    assert totals["tokens_computed"] == before["tokens_computed"] + len(prompt)
    assert totals["tokens_pulled"] == before["tokens_pulled"]
    await _cold(pair.decode)

    # The prefill engine hangs (stopped): vLLM would wait 5 s per handshake, or forever on a transfer;
    # the decode engine gives up after its prefill_timeout_s and prefills itself.
    prompt = _prompt()
    local = await _local_reference(pair.decode, prompt)
    params = await _prefill(pair, prompt) | {"remote_engine_id": "a-stopped-one"}
    for pid in pair.prefill_pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        info, took = await decode(prompt, params, local)
    finally:
        for pid in pair.prefill_pids:
            os.kill(pid, signal.SIGCONT)
    assert info == {
        "kv_transfer": "local",
        "cause": "prefill_timeout",
        "reason": f"no KV from the prefill engine within {DECODE_TIMEOUT_S:g} s",
    }
    assert took >= DECODE_TIMEOUT_S  # it did wait for the prefill engine first
    await _cold(pair.decode)

    # Both engines still serve, and a pull still works.
    prompt = _prompt()
    local = await _local_reference(pair.decode, prompt)
    assert (await decode(prompt, await _prefill(pair, prompt), local))[0]["kv_transfer"] == "nixl"
