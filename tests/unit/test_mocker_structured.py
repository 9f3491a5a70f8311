"""The mocker's structured outputs (llguidance token masks) and simulated logprobs."""

from __future__ import annotations

import functools
import itertools
import json
import random
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from llguidance import LLMatcher

from dynamo_cli.config.models import MockerConfig
from dynamo_cli.engines.mocker import MockerEngine
from dynamo_cli.engines.structured import (
    GrammarSampler,
    grammar_for,
    grammar_tokenizer,
    validate_structured,
)
from dynamo_cli.models.embedded import prepare_tokenizer_folder
from dynamo_cli.models.tokenizer import ModelTokenizer
from dynamo_cli.transport.wire import EngineOutput, EngineRequest, SamplingOptions

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
        },
        "kind": {"enum": ["a", "b", "c"]},
        "score": {"type": "number"},
    },
    "required": ["name", "age", "email", "tags", "address", "kind"],
}
SEEDS = range(30)
_ids = itertools.count()


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's tokenizer folder (49k vocabulary, byte-level BPE)."""
    return prepare_tokenizer_folder(tmp_path_factory.mktemp("smol") / "m")


@pytest.fixture(params=["smol", "tiny"])
def folder(request: pytest.FixtureRequest, smol_dir: Path, model_dir: Path) -> Path:
    return smol_dir if request.param == "smol" else model_dir


MakeEngine = Callable[..., MockerEngine]


@pytest.fixture
async def make_engine() -> AsyncIterator[MakeEngine]:
    engines: list[MockerEngine] = []

    def make(folder: Path | None = None, **overrides: Any) -> MockerEngine:
        overrides.setdefault("speedup_ratio", 1000.0)
        if folder is None:
            vocab, eos = 1000, [2, 3]
        else:
            tok = model_tok(folder)
            vocab, eos = tok.vocab_size, tok.eos_token_ids
        engine = MockerEngine(
            MockerConfig(**overrides), vocab_size=vocab, eos_token_ids=eos, model_path=folder
        )
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()


async def run(
    engine: MockerEngine, max_tokens: int = 400, prompt: list[int] | None = None, **sampling: Any
) -> tuple[list[int], list[EngineOutput]]:
    req = EngineRequest(
        f"r{next(_ids)}", prompt or [5, 6, 7, 8], SamplingOptions(max_tokens=max_tokens, **sampling)
    )
    outputs = [out async for out in engine.generate(req)]
    return [t for o in outputs for t in o.token_ids], outputs


@functools.lru_cache
def model_tok(folder: Path) -> ModelTokenizer:
    return ModelTokenizer(folder, fast_encode=False)


def text_of(folder: Path, ids: list[int]) -> str:
    return model_tok(folder).decode(ids)  # skips special tokens (EOS)


async def test_json_schema_outputs_are_valid_over_many_seeds(make_engine: MakeEngine, folder: Path) -> None:
    engine = make_engine(folder)
    tok = model_tok(folder)
    eos = set(tok.eos_token_ids)
    lengths = []
    for seed in SEEDS:
        ids, outs = await run(engine, max_tokens=300, seed=seed, structured={"json": PERSON})
        assert outs[-1].finish_reason == "stop", (seed, outs[-1].error, tok.decode(ids))
        assert ids[-1] in eos  # the grammar's end is EOS, as vLLM samples it
        value = json.loads(tok.decode(ids))
        jsonschema.validate(value, PERSON, format_checker=jsonschema.FormatChecker())
        lengths.append(len(ids))
    assert len(set(lengths)) > 5, lengths  # the seeds give different outputs


async def test_same_seed_same_output(make_engine: MakeEngine, smol_dir: Path) -> None:
    a, b = make_engine(smol_dir), make_engine(smol_dir)
    spec = {"json": PERSON}
    first, _ = await run(a, seed=7, structured=spec)
    again, _ = await run(b, seed=7, structured=spec)
    other, _ = await run(a, seed=8, structured=spec)
    assert first == again
    assert first != other


async def test_a_structured_request_resent_with_its_output_replays_the_grammar_and_continues(
    make_engine: MakeEngine, smol_dir: Path
) -> None:
    """What migration relies on: another engine given prompt + output so far and structured_replay
    resumes the grammar there and produces the same rest, still valid."""
    a, b = make_engine(smol_dir), make_engine(smol_dir)
    spec = {"json": PERSON}
    whole, _ = await run(a, max_tokens=300, seed=3, structured=spec)
    k = len(whole) // 2
    rest, outs = await run(
        b, max_tokens=300 - k, prompt=[5, 6, 7, 8, *whole[:k]], seed=3, structured=spec, structured_replay=k
    )
    assert whole[:k] + rest == whole and outs[-1].finish_reason == "stop"
    jsonschema.validate(json.loads(text_of(smol_dir, whole)), PERSON)
    _, broken = await run(
        b, prompt=[5, 6, 7, 8, *whole[1:k]], seed=3, structured=spec, structured_replay=k - 1
    )
    assert broken[-1].finish_reason == "error" and "break the grammar" in (broken[-1].error or "")


@pytest.mark.parametrize(
    ("spec", "check"),
    [
        ({"regex": r"[a-z]+@[a-z]+\.com"}, lambda t: re.fullmatch(r"[a-z]+@[a-z]+\.com", t)),
        # [0-9], not \d: the grammar engine's \d takes digits of newer Unicode than Python's re knows.
        ({"regex": r"[0-9]{3}-[0-9]{4}"}, lambda t: re.fullmatch(r"[0-9]{3}-[0-9]{4}", t)),
        ({"choice": ["yes", "no", "maybe so"]}, lambda t: t in ("yes", "no", "maybe so")),
        ({"json_object": True}, lambda t: isinstance(json.loads(t), dict)),
        ({"grammar": 'root ::= "(" [0-9]+ ("," [0-9]+)* ")"'}, lambda t: re.fullmatch(r"\(\d+(,\d+)*\)", t)),
        (
            {"grammar": 'start: "SELECT " COL " FROM t"\nCOL: /[a-z]+/'},
            lambda t: re.fullmatch(r"SELECT [a-z]+ FROM t", t),
        ),
    ],
)
async def test_other_kinds_match(
    make_engine: MakeEngine, folder: Path, spec: dict[str, Any], check: Callable[[str], Any]
) -> None:
    engine = make_engine(folder)
    seen = set()
    for seed in range(10):
        ids, outs = await run(engine, seed=seed, structured=spec)
        text = text_of(folder, ids)
        assert outs[-1].finish_reason == "stop", (spec, seed, text)
        assert check(text), (spec, text)
        seen.add(text)
    assert len(seen) > 1


async def test_max_tokens_cuts_with_length(make_engine: MakeEngine, smol_dir: Path) -> None:
    ids, outs = await run(make_engine(smol_dir), max_tokens=3, seed=1, structured={"json": PERSON})
    assert len(ids) == 3
    assert outs[-1].finish_reason == "length"
    assert text_of(smol_dir, ids).startswith("{")


async def test_bans_min_tokens_and_stop_ids_under_a_grammar(make_engine: MakeEngine, smol_dir: Path) -> None:
    engine = make_engine(smol_dir)
    table = grammar_tokenizer(smol_dir).token_bytes
    yes = {i: -100.0 for i, b in enumerate(table) if b and b"yes".startswith(b)}
    for seed in range(5):
        ids, _ = await run(engine, seed=seed, structured={"choice": ["yes", "no"]}, logit_bias=yes)
        assert text_of(smol_dir, ids) == "no"
    for seed in range(5):
        ids, outs = await run(engine, seed=seed, structured={"regex": "[a-z]+"}, min_tokens=6)
        assert len(ids) > 6 and outs[-1].finish_reason == "stop"
    starts_a = [i for i, b in enumerate(table) if b.startswith(b"a")]
    ids, outs = await run(engine, seed=0, structured={"regex": "a+b"}, stop_token_ids=starts_a)
    assert len(ids) == 1 and ids[0] in starts_a and outs[-1].finish_reason == "stop"  # cut mid-grammar


async def test_structured_needs_a_model_folder_and_a_valid_spec(
    make_engine: MakeEngine, smol_dir: Path
) -> None:
    _, outs = await run(make_engine(), structured={"regex": "a+"})
    assert outs[-1].finish_reason == "error" and "tokenizer" in (outs[-1].error or "")
    _, outs = await run(make_engine(smol_dir), structured={"json": {"type": "foo"}})
    assert outs[-1].finish_reason == "error" and "foo" in (outs[-1].error or "")


def test_validate_structured() -> None:
    assert validate_structured({"json": PERSON}) is None
    assert validate_structured({"json": json.dumps(PERSON)}) is None
    assert validate_structured({"regex": r"\d+"}) is None
    assert validate_structured({"choice": ["a", 'b"c']}) is None
    assert validate_structured({"grammar": 'root ::= "a" | "b"'}) is None
    assert validate_structured({"grammar": 'start: "a" NUM\nNUM: /[0-9]+/'}) is None
    assert validate_structured({"json_object": True}) is None
    bad = {
        "schema": ({"json": {"type": "foo"}}, "foo"),
        "unsupported": ({"json": {"type": "object", "not": {}}}, '["not"]'),
        "regex": ({"regex": "a(b"}, "unclosed group"),
        "lark": ({"grammar": "start: foo"}, "foo"),
        "gbnf": ({"grammar": 'root ::= "a" | ('}, "Expected"),
        "two keys": ({"regex": "a", "choice": ["a"]}, "exactly one"),
        "kind": ({"xml": "x"}, "xml"),
        "empty choice": ({"choice": []}, "choice"),
        "json_object": ({"json_object": False}, "json_object"),
        "huge": ({"regex": "a" * 200_000}, "larger"),
        "long message": ({"grammar": "start: " + "(" * 5000 + '"a"' + ")" * 5000}, "nested"),
    }
    for name, (spec, needle) in bad.items():
        message = validate_structured(spec)
        assert message is not None and needle in message and len(message) <= 400, (name, message)


def check_entry(entry: Any, token: int | None, k: int) -> None:
    own, ids, lps = entry
    assert own <= 0.0 and all(lp <= 0.0 for lp in lps)
    assert len(ids) == len(lps) <= k and len(set(ids)) == len(ids)
    assert lps == sorted(lps, reverse=True)
    if token is not None and token in ids:
        assert lps[ids.index(token)] == own


async def test_logprobs_shapes_and_invariants(make_engine: MakeEngine) -> None:
    engine = make_engine()
    plain, _ = await run(engine, max_tokens=20, seed=3, top_k=50)
    ids, outs = await run(engine, max_tokens=20, seed=3, top_k=50, logprobs=5)
    assert ids == plain  # asking for logprobs changes no token
    for out in outs:
        assert out.logprobs is not None and len(out.logprobs) == len(out.token_ids)
        for token, entry in zip(out.token_ids, out.logprobs, strict=True):
            check_entry(entry, token, 5)
            assert len(entry[1]) == 5 and entry[1][0] == token  # the sampled token ranks first
    again = [
        lp
        for o in (await run(engine, max_tokens=20, seed=3, top_k=50, logprobs=5))[1]
        for lp in o.logprobs or []
    ]
    assert again == [lp for o in outs for lp in o.logprobs or []]
    _, outs = await run(engine, max_tokens=4, seed=3, logprobs=0)
    assert all(e[1] == [] and e[0] <= 0.0 for o in outs for e in o.logprobs or [])
    _, outs = await run(engine, max_tokens=4, seed=3, top_k=1, logprobs=3)
    assert all(
        e == (0.0, [t], [0.0]) for o in outs for t, e in zip(o.token_ids, o.logprobs or [], strict=True)
    )
    _, outs = await run(engine, max_tokens=4)
    assert all(o.logprobs is None for o in outs)


async def test_structured_logprobs_list_only_allowed_tokens(make_engine: MakeEngine, smol_dir: Path) -> None:
    spec = {"json": PERSON}
    engine = make_engine(smol_dir)
    plain, _ = await run(engine, seed=4, structured=spec)
    ids, outs = await run(engine, seed=4, structured=spec, logprobs=4)
    assert ids == plain
    entries = [e for o in outs for e in o.logprobs or []]
    assert len(entries) == len(ids)
    tok = grammar_tokenizer(smol_dir)
    matcher = LLMatcher(tok.ll, grammar_for(spec))
    for token, entry in zip(ids, entries, strict=True):
        mask = matcher.compute_bitmask()
        check_entry(entry, token, 4)
        assert entry[1][0] == token
        assert all(mask[t // 8] >> (t % 8) & 1 for t in entry[1])
        if token not in tok.eos_ids:
            assert matcher.consume_token(token)
    assert entries[-1] == (0.0, [ids[-1]], [0.0])  # after the closing brace only EOS is allowed


async def test_prompt_logprobs(make_engine: MakeEngine) -> None:
    engine = make_engine()
    prompt = [11, 12, 13, 14, 15, 16, 17]
    _, outs = await run(engine, max_tokens=3, prompt=prompt, prompt_logprobs=3, seed=1)
    first = outs[0].prompt_logprobs
    assert first is not None and len(first) == len(prompt) and first[0] is None
    for token, entry in zip(prompt[1:], first[1:], strict=True):
        assert entry is not None
        check_entry(entry, token, 3)
        assert len(entry[1]) == 3
        if token not in entry[1]:
            assert entry[0] <= entry[2][-1]  # below the top list
    assert all(o.prompt_logprobs is None for o in outs[1:])
    _, again = await run(engine, max_tokens=3, prompt=prompt, prompt_logprobs=3, seed=2)
    assert again[0].prompt_logprobs == first  # a function of the prompt
    _, outs = await run(engine, max_tokens=3, prompt=prompt, prompt_logprobs=0)
    assert all(e is None or e[1] == [] for e in outs[0].prompt_logprobs or [None])


def test_sampler_alone_gives_valid_json(smol_dir: Path) -> None:
    sampler = GrammarSampler(grammar_tokenizer(smol_dir), {"json": PERSON})
    rng = random.Random(0)
    out: list[int] = []
    while not sampler.finished:
        token = sampler.next_token(rng, progress=len(out) / 400, can_stop=True)
        assert token is not None
        out.append(token)
    jsonschema.validate(json.loads(text_of(smol_dir, out)), PERSON)
