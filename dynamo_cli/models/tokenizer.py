"""The frontend's preprocessing: chat template -> text -> token ids, and token ids -> text, incrementally.

Reads a Hugging Face model folder with the `tokenizers` library and jinja2 directly (no transformers,
no torch): tokenizer.json, tokenizer_config.json (chat template, special tokens) and
generation_config.json (EOS ids).
"""

from __future__ import annotations

import codecs
import json
import logging
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from dynamo_cli.errors import StartupError, UsageError
from dynamo_cli.models.fastbpe import FastBpe, bytes_to_unicode

logger = logging.getLogger(__name__)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class TemplateError(UsageError):
    """The chat template rejected the messages (e.g. roles out of order)."""


class ModelTokenizer:
    """Tokenizer, chat template and stop tokens of one model folder."""

    def __init__(self, folder: Path, *, fast_encode: bool = True):
        from tokenizers import Tokenizer

        self.folder = folder
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise StartupError(
                f"{folder} has no tokenizer.json",
                hint="save a fast tokenizer into the folder with transformers' save_pretrained",
            )
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        cfg = _read_json(folder / "tokenizer_config.json")
        gen = _read_json(folder / "generation_config.json")
        model_cfg = _read_json(folder / "config.json")
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.chat_template = self._find_template(folder, cfg)
        self._compiled: Any = None
        self.vocab_size = max(
            self.tokenizer.get_vocab_size(with_added_tokens=True), int(model_cfg.get("vocab_size") or 0)
        )
        self.context_length = int(
            model_cfg.get("max_position_embeddings") or cfg.get("model_max_length") or 4096
        )
        eos_ids: list[int] = []
        for source in (gen.get("eos_token_id"), model_cfg.get("eos_token_id")):
            if isinstance(source, int):
                eos_ids.append(source)
            elif isinstance(source, list):
                eos_ids.extend(int(x) for x in source)
        if self.eos_token is not None and (tid := self.tokenizer.token_to_id(self.eos_token)) is not None:
            eos_ids.append(tid)
        self.eos_token_ids = sorted(set(eos_ids))
        self.special_ids = {
            tid
            for tok, added in self.tokenizer.get_added_tokens_decoder().items()
            if added.special
            for tid in [tok]
        }
        spec = json.loads(self.tokenizer.to_str())  # tokenizer.json as the library sees it
        self._byte_table = self._build_byte_table(spec)
        self.longest_token = self._longest_token(spec)
        self._fast = None
        if fast_encode:
            self._fast = FastBpe.build(
                spec, lambda text: self.tokenizer.encode(text, add_special_tokens=False).ids
            )
        logger.debug("%s: fast encoder %s", folder.name, "on" if self._fast else "off")

    @staticmethod
    def _find_template(folder: Path, cfg: dict[str, Any]) -> str | None:
        jinja = folder / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text()
        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: take "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        return template if isinstance(template, str) else None

    # ---- text -> ids ------------------------------------------------------------------------------
    @property
    def fast_encode(self) -> bool:
        return self._fast is not None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Text to ids. Releases the GIL while it works (tiktoken does; `tokenizers` does only in its
        batch call, so that is the one used), so other threads and the event loop keep running."""
        if self._fast is not None and not add_special_tokens:
            return self._fast.encode(text)
        return self.tokenizer.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def render_chat(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        if self.chat_template is None:
            raise UsageError(
                f"model {self.folder.name} has no chat template",
                hint="use /v1/completions, or a model folder whose tokenizer_config.json has chat_template",
            )
        if self._compiled is None:
            self._compiled = _compile_template(self.chat_template)
        from jinja2.exceptions import TemplateError as JinjaError

        try:
            return self._compiled.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
                **kwargs,
            )
        except JinjaError as e:
            raise TemplateError(f"the chat template rejected the messages: {e}") from e

    def encode_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
        # The template writes BOS itself where the model wants it.
        return self.encode(self.render_chat(messages, **kwargs), add_special_tokens=False)

    # ---- ids -> text ------------------------------------------------------------------------------
    def _build_byte_table(self, spec: dict[str, Any]) -> list[bytes] | None:
        """For byte-level BPE: the bytes of every token id (special tokens map to b'')."""
        decoder = spec.get("decoder") or {}
        if decoder.get("type") != "ByteLevel":
            return None
        b2u = {c: b for b, c in bytes_to_unicode().items()}
        size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        table: list[bytes] = [b""] * size
        added = {t["id"]: t for t in spec.get("added_tokens", [])}
        for token, tid in self.tokenizer.get_vocab(with_added_tokens=True).items():
            if tid >= size:
                continue
            if tid in added:
                table[tid] = b"" if added[tid].get("special") else token.encode()
                continue
            try:
                table[tid] = bytes(b2u[c] for c in token)
            except KeyError:
                table[tid] = token.encode()
        return table

    def _longest_token(self, spec: dict[str, Any]) -> int:
        """The most characters of input one token can stand for; 0 when a normalizer could shorten the
        text (then no bound from the text's length holds)."""
        if not _normalizer_keeps_length(spec.get("normalizer")):
            return 0
        if self._byte_table is not None:
            longest = max((len(b) for b in self._byte_table), default=1)
        else:  # a character of the vocabulary's spelling stands for at least one character of input
            longest = max((len(t) for t in self.tokenizer.get_vocab(with_added_tokens=True)), default=1)
        added = (len(t.get("content", "")) for t in spec.get("added_tokens", []))
        return max(longest, *added, 1)

    def token_bytes(self, token_id: int) -> bytes:
        """One token's own bytes, as logprobs report them: a special token's text; for byte-level BPE the
        raw bytes (possibly part of a character); otherwise the piece as decoded alone."""
        if token_id in self.special_ids or self._byte_table is None:
            if token_id in self.special_ids:
                return (self.tokenizer.id_to_token(token_id) or "").encode()
            piece = self.tokenizer.id_to_token(token_id) or ""
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece byte
                return bytes([int(piece[3:5], 16)])
            return piece.replace("\u2581", " ").encode()
        table = self._byte_table
        return table[token_id] if 0 <= token_id < len(table) else b""

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special_tokens)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas; never splits a multi-byte character."""

    __slots__ = ("_stream", "_table", "_tok", "_utf8", "skip_special")

    def __init__(self, tok: ModelTokenizer, skip_special_tokens: bool):
        self._tok = tok
        self.skip_special = skip_special_tokens
        self._table = tok._byte_table if skip_special_tokens else None
        if self._table is not None:
            self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        else:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def step(self, token_ids: list[int]) -> str:
        """Text for these new tokens (may be '' while a character is incomplete)."""
        if self._table is not None:
            table = self._table
            n = len(table)
            return self._utf8.decode(b"".join(table[t] if 0 <= t < n else b"" for t in token_ids))
        out = []
        tokenizer = self._tok.tokenizer
        for t in token_ids:
            piece = self._stream.step(tokenizer, t)
            if piece:
                out.append(piece)
        return "".join(out)

    def flush(self) -> str:
        """Whatever is left at the end (an incomplete character becomes U+FFFD)."""
        if self._table is not None:
            return self._utf8.decode(b"", final=True)
        return ""


def _normalizer_keeps_length(spec: dict[str, Any] | None) -> bool:
    """Normalizers that never make text shorter: none, prepending, replacing a space by one character
    (SentencePiece's "▁"), and sequences of those."""
    if spec is None:
        return True
    kind = spec.get("type")
    if kind == "Sequence":
        return all(_normalizer_keeps_length(n) for n in spec.get("normalizers", []))
    if kind == "Prepend":
        return True
    if kind == "Replace":
        pattern = spec.get("pattern") or {}
        return pattern.get("String") == " " and len(spec.get("content", "")) >= 1
    return False


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StartupError(f"{path} is not readable JSON ({e})") from e
    return data if isinstance(data, dict) else {}


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError as JinjaError

    raise JinjaError(message)


@lru_cache(maxsize=16)
def _compile_template(source: str):
    """Compile a chat template the way Hugging Face runs them: sandboxed, trim_blocks, lstrip_blocks."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )

    def tojson(
        value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False
    ):
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
