"""VllmEngine's logprobs, prompt logprobs and structured outputs, engine-level (no HTTP): one tiny random
Llama on CPU for the whole module.

The tiny model's next-token distribution is nearly flat, so a sampled token is seldom among the top few
(the case where vLLM hands back one entry more than asked for), and structured output from it is noise
that the grammar alone keeps valid. The first request that asks for logprobs takes seconds: vLLM then
compiles its rank-counting kernel (torch.compile, on CPU too).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.models.tiny import build_tiny_llama
from dynamo_cli.models.tokenizer import ModelTokenizer
from dynamo_cli.transport.wire import EngineOutput, EngineRequest, SamplingOptions, TokenLogprobs

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="the vLLM engine is not installed"),
]
on_engine_loop = pytest.mark.asyncio(loop_scope="module")  # the loop the module's engine lives on

SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green"]}, "n": {"type": "integer"}},
    "required": ["color", "n"],
    "additionalProperties": False,
}


@dataclass
class Tiny:
    engine: Any  # VllmEngine
    tok: ModelTokenizer
    prompt: list[int]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tiny(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Tiny]:
    from dynamo_cli.engines.vllm_engine import VllmEngine

    model = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")
    saved_env = dict(os.environ)
    scratch = tmp_path_factory.mktemp("vllm-scratch")
    os.environ.update(TMPDIR=str(scratch), VLLM_CACHE_ROOT=str(scratch / "cache"))
    vllm = {"block_size": 32, "cpu_kv_cache_gib": 1, "enforce_eager": True, "max_model_len": 2048}
    engine = VllmEngine(DynamoConfig.model_validate({"engine": "vllm", "vllm": vllm}), model)
    tok = ModelTokenizer(model)
    try:
        await engine.start()
        yield Tiny(engine, tok, tok.tokenizer.encode("one two three four five six").ids)
    finally:
        await engine.close()
        os.environ.clear()
        os.environ.update(saved_env)


_ids = iter(range(1_000_000))


async def _run(tiny: Tiny, prompt: list[int] | None = None, **sampling: Any) -> list[EngineOutput]:
    request = EngineRequest(f"r{next(_ids)}", prompt or tiny.prompt, SamplingOptions(**sampling))
    return [o async for o in tiny.engine.generate(request)]


def _pairs(outs: list[EngineOutput]) -> list[tuple[int, TokenLogprobs]]:
    """Every generated token with its logprobs entry, checking they line up output by output."""
    pairs: list[tuple[int, TokenLogprobs]] = []
    for o in outs:
        assert o.logprobs is not None and len(o.logprobs) == len(o.token_ids)
        pairs += zip(o.token_ids, o.logprobs, strict=True)
    return pairs


def _check_entry(token: int, entry: TokenLogprobs, k: int) -> None:
    own, ids, lps = entry
    assert len(ids) == len(lps) == k and len(set(ids)) == k
    assert lps == sorted(lps, reverse=True)
    assert all(math.isfinite(x) and x <= 0 for x in [own, *lps])
    assert sum(math.exp(x) for x in lps) <= 1 + 1e-6
    if k:
        assert own <= lps[0] + 1e-6
    if token in ids:
        assert own == lps[ids.index(token)]


@on_engine_loop
async def test_sampled_logprobs_have_exactly_k_top_entries(tiny: Tiny) -> None:
    outs = await _run(tiny, max_tokens=24, temperature=1.0, seed=3, ignore_eos=True, logprobs=2)
    pairs = _pairs(outs)
    assert len(pairs) == 24 and outs[-1].finish_reason == "length"
    for token, entry in pairs:
        _check_entry(token, entry, 2)
    # the case where vLLM gives the sampled token as a third entry did happen, and was trimmed
    assert any(token not in ids for token, (_, ids, _) in pairs)


@on_engine_loop
async def test_greedy_token_is_the_most_likely(tiny: Tiny) -> None:
    outs = await _run(tiny, max_tokens=12, temperature=0, ignore_eos=True, logprobs=3)
    pairs = _pairs(outs)
    assert len(pairs) == 12
    for token, (own, ids, lps) in pairs:
        _check_entry(token, (own, ids, lps), 3)
        assert token in ids and own == lps[0]  # top-1 (or tied with it)
    no_top = _pairs(await _run(tiny, max_tokens=4, temperature=0, ignore_eos=True, logprobs=0))
    assert [t for t, _ in no_top] == [t for t, _ in pairs[:4]]
    assert all(ids == [] and lps == [] for _, (_, ids, lps) in no_top)


@on_engine_loop
async def test_prompt_logprobs_line_up_with_the_prompt(tiny: Tiny) -> None:
    outs = await _run(tiny, max_tokens=3, temperature=0, ignore_eos=True, prompt_logprobs=2)
    first = outs[0].prompt_logprobs
    assert first is not None and len(first) == len(tiny.prompt) and first[0] is None
    for token, entry in zip(tiny.prompt[1:], first[1:], strict=True):
        assert entry is not None
        _check_entry(token, entry, 2)
    assert all(o.prompt_logprobs is None and o.logprobs is None for o in outs[1:])
    assert outs[0].logprobs is None  # not asked for
    # position i scores prompt token i: the greedy token's own logprob comes back as the last prompt entry
    greedy = await _run(tiny, max_tokens=1, temperature=0, logprobs=0)
    token, (own, _, _) = _pairs(greedy)[0]
    again = await _run(tiny, [*tiny.prompt, token], max_tokens=1, temperature=0, prompt_logprobs=0)
    last = again[0].prompt_logprobs
    assert last is not None and last[-1] is not None
    assert last[-1][0] == pytest.approx(own, abs=0.05)


@on_engine_loop
async def test_json_schema_output_validates(tiny: Tiny) -> None:
    import jsonschema

    stopped = 0
    for seed in range(8):  # the noise model pads with whitespace: some runs hit max_tokens first
        outs = await _run(tiny, max_tokens=300, temperature=1.0, seed=seed, structured={"json": SCHEMA})
        text = tiny.tok.decode([t for o in outs for t in o.token_ids])
        assert outs[-1].finish_reason in ("stop", "length"), outs[-1].error
        if outs[-1].finish_reason == "stop":
            jsonschema.validate(json.loads(text), SCHEMA)
            stopped += 1
            if stopped == 2:
                break
    assert stopped >= 1, "no run finished within 300 tokens"


@on_engine_loop
async def test_choice_output_is_one_of_the_choices(tiny: Tiny) -> None:
    choices = ["yes", "no", "maybe"]
    for seed in range(3):
        outs = await _run(tiny, max_tokens=20, temperature=1.0, seed=seed, structured={"choice": choices})
        assert outs[-1].finish_reason == "stop"
        assert tiny.tok.decode([t for o in outs for t in o.token_ids]) in choices


@on_engine_loop
@pytest.mark.parametrize(
    ("structured", "says"),
    [
        ({"regex": "(unclosed"}, "regex"),
        ({"json": {"type": "bogus"}}, "bogus"),
        ({"regex": "a+", "choice": ["a"]}, "exactly one"),
        ({"pattern": "a+"}, "exactly one"),
    ],
)
async def test_bad_constraint_fails_the_request_not_the_engine(
    tiny: Tiny, structured: dict[str, Any], says: str
) -> None:
    outs = await _run(tiny, max_tokens=8, structured=structured)
    assert len(outs) == 1 and outs[0].finish_reason == "error" and outs[0].token_ids == []
    assert outs[0].error is not None and says in outs[0].error
    after = await _run(tiny, max_tokens=5, temperature=0, ignore_eos=True)
    assert after[-1].finish_reason == "length" and sum(len(o.token_ids) for o in after) == 5
    assert not tiny.engine._engine.errored


def test_conversion_trims_the_extra_entry_and_clamps_infinities() -> None:
    from dynamo_cli.engines.vllm_outputs import LOGPROB_FLOOR, prompt_logprobs, token_logprobs

    def lp(logprob: float, rank: int) -> Any:
        return SimpleNamespace(logprob=logprob, rank=rank, decoded_token=None)

    # vLLM's order: the chosen token first, then the top k by rank
    outside = {7: lp(-float("inf"), 900), 3: lp(-0.5, 1), 4: lp(-1.5, 2)}
    assert token_logprobs(7, outside, 2) == (LOGPROB_FLOOR, [3, 4], [-0.5, -1.5])
    inside = {4: lp(-1.5, 2), 3: lp(-0.5, 1)}
    assert token_logprobs(4, inside, 2) == (-1.5, [3, 4], [-0.5, -1.5])
    tied = {5: lp(-0.7, 1), 6: lp(-0.7, 1)}  # the chosen token ties with the top one vLLM listed
    assert token_logprobs(5, tied, 1) == (-0.7, [6], [-0.7])
    assert token_logprobs(9, {9: lp(-2.0, 4)}, 0) == (-2.0, [], [])
    assert token_logprobs(9, {9: lp(float("nan"), 4)}, 0) == (LOGPROB_FLOOR, [], [])
    assert prompt_logprobs([1, 4], [None, inside], 2) == [None, (-1.5, [3, 4], [-0.5, -1.5])]
