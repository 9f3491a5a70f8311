"""The fast byte-level BPE encoder must give exactly the ids `tokenizers` gives, or not be used."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from dynamo_cli.models.embedded import prepare_tokenizer_folder
from dynamo_cli.models.fastbpe import FastBpe
from dynamo_cli.models.tokenizer import ModelTokenizer


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> ModelTokenizer:
    return ModelTokenizer(prepare_tokenizer_folder(tmp_path_factory.mktemp("smol") / "m"))


def _reference(tok: ModelTokenizer, text: str) -> list[int]:
    return tok.tokenizer.encode(text, add_special_tokens=False).ids


def test_fast_path_is_used_for_smollm2(smol: ModelTokenizer) -> None:
    assert smol.fast_encode


def test_matches_tokenizers_on_random_multilingual_text(smol: ModelTokenizer) -> None:
    rng = random.Random(1234)
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x600, 0x6FF), (0x900, 0x97F),
              (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0x1F300, 0x1F64F), (0x2000, 0x206F),
              (0x660, 0x669), (0xFF10, 0xFF19)]  # fmt: skip
    pieces = ["\n", "\t", " ", "  ", "\r\n", "'s", "'ll", " 1", " 23", "<|im_start|>", "<|im_end|>", "    7,"]
    for _ in range(3000):
        parts = []
        for _ in range(rng.randint(1, 25)):
            if rng.random() < 0.3:
                parts.append(rng.choice(pieces))
            else:
                lo, hi = rng.choice(ranges)
                parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6))))
        text = "".join(parts)
        assert smol.encode(text, add_special_tokens=False) == _reference(smol, text), repr(text)


def test_matches_tokenizers_on_source_code(smol: ModelTokenizer) -> None:
    root = Path(__file__).resolve().parents[2] / "dynamo_cli"
    files = sorted(root.rglob("*.py"))
    assert len(files) > 20
    for f in files:
        text = f.read_text()
        assert smol.encode(text, add_special_tokens=False) == _reference(smol, text), f


def test_whitespace_before_digits_follows_the_digits_split(smol: ModelTokenizer) -> None:
    # tokenizers splits digits first, so whitespace before a digit is a piece of its own.
    for text in ["x = [\n    7, 8]", "a\n        1000", "  1", "\t\t2"]:
        assert smol.encode(text, add_special_tokens=False) == _reference(smol, text)


def test_bytes_without_a_token_are_dropped_as_the_reference_drops_them(smol: ModelTokenizer) -> None:
    text = "a\x04b \xc0\xff\U0006c22b x\x1d\x13"  # bytes SmolLM2's vocabulary has no token for
    ids = smol.encode(text, add_special_tokens=False)
    assert ids == smol.tokenizer.encode(text, add_special_tokens=False).ids
    assert min(ids) >= 0


def test_unknown_layouts_keep_the_reference(tmp_path: Path) -> None:
    folder = prepare_tokenizer_folder(tmp_path / "m")
    spec = json.loads((folder / "tokenizer.json").read_text())
    reference = lambda text: [0]  # noqa: E731 - never agrees: the self-check must refuse
    assert FastBpe.build(spec, reference) is None
    with_normalizer = {**spec, "normalizer": {"type": "NFC"}}
    assert FastBpe.build(with_normalizer, lambda t: []) is None
    with_dropout = {**spec, "model": {**spec["model"], "dropout": 0.1}}
    assert FastBpe.build(with_dropout, lambda t: []) is None
    odd_pre = {**spec, "pre_tokenizer": {"type": "Whitespace"}}
    assert FastBpe.build(odd_pre, lambda t: []) is None


def test_can_be_switched_off(tmp_path: Path) -> None:
    tok = ModelTokenizer(prepare_tokenizer_folder(tmp_path / "m"), fast_encode=False)
    assert not tok.fast_encode
    assert tok.encode("hello 123", add_special_tokens=False) == _reference(tok, "hello 123")
