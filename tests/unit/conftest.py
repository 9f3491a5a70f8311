"""Shared unit fixtures: tiny model folders built in the test run with the `tokenizers` library."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from dynamo_cli.models.tokenizer import ModelTokenizer

# Enough text to give the BPE some merges, with multi-byte characters of every UTF-8 length.
CORPUS = [
    "hello world, the quick brown fox jumps over the lazy dog",
    "héllo 你好 🎉 naïve café crème brûlée",
    "The capital of France is Paris. 12345 67890",
    "emoji 🎉🎉 and 中文字符 测试 ünïcödé Ω≈ç√∫",
    "STOP here, stop there. END of story",
]
SPECIALS = ["<|im_start|>", "<|im_end|>"]
CONTEXT = 64

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_model_folder(
    dest: Path,
    tok: Tokenizer,
    *,
    chat_template: str | None = CHATML,
    eos_token: str | None = "<|im_end|>",
    context: int = CONTEXT,
) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    tok.save(str(dest / "tokenizer.json"))
    cfg: dict[str, object] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    if eos_token is not None:
        cfg["eos_token"] = eos_token
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg))
    (dest / "config.json").write_text(
        json.dumps(
            {"vocab_size": tok.get_vocab_size(with_added_tokens=True), "max_position_embeddings": context}
        )
    )
    return dest


def byte_level_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def wordpiece() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[UNK]", *SPECIALS], show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def metaspace_byte_fallback() -> Tokenizer:
    """A SentencePiece-style BPE (Llama 2 shape): Metaspace, byte fallback for characters not in vocab."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", *SPECIALS], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    # Byte tokens are ordinary vocabulary in SentencePiece models: append <0x00>..<0xFF> to the vocab.
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    next_id = max([*vocab.values(), *(t["id"] for t in spec["added_tokens"])]) + 1
    for i in range(256):
        vocab[f"<0x{i:02X}>"] = next_id + i
    spec["model"]["byte_fallback"] = True
    return Tokenizer.from_str(json.dumps(spec))


BUILDERS: dict[str, Callable[[], Tokenizer]] = {
    "bpe": byte_level_bpe,
    "wordpiece": wordpiece,
    "metaspace": metaspace_byte_fallback,
}

MakeModelFolder = Callable[..., Path]


@pytest.fixture
def make_model_folder(tmp_path: Path) -> MakeModelFolder:
    """make_model_folder(kind="bpe", chat_template=..., eos_token=..., context=...) -> a fresh folder."""
    made = iter(range(1_000_000))

    def make(kind: str = "bpe", **kwargs: object) -> Path:
        return write_model_folder(tmp_path / f"{kind}-{next(made)}", BUILDERS[kind](), **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE model folder with a ChatML template and <|im_end|> as EOS."""
    return write_model_folder(tmp_path_factory.mktemp("tiny-bpe"), byte_level_bpe())


@pytest.fixture(scope="session")
def tok(model_dir: Path) -> ModelTokenizer:
    return ModelTokenizer(model_dir)


@pytest.fixture(autouse=True)
def _unit_tier_stays_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests open no network socket and start no process: those belong in tests/integration.
    (Local socket pairs, which every asyncio event loop makes, are allowed.)"""
    import multiprocessing.process
    import os
    import socket
    import subprocess

    real_init = socket.socket.__init__

    def guarded_init(self: socket.socket, family: int = -1, *args: object, **kwargs: object) -> None:
        if family in (socket.AF_INET, socket.AF_INET6) and kwargs.get("fileno") is None:
            raise AssertionError("a unit test opened a network socket: move it to tests/integration")
        real_init(self, family, *args, **kwargs)  # type: ignore[arg-type]

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("a unit test started a process: move it to tests/integration")

    monkeypatch.setattr(socket.socket, "__init__", guarded_init)
    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", no_process)
    monkeypatch.setattr(os, "fork", no_process)
