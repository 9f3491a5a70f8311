"""A faster encoder for byte-level BPE tokenizers (GPT-2 family: SmolLM, Llama 3, Qwen, ...).

The `tokenizers` library spends most of a long prompt's encode time in its byte-level
pre-tokenizer (~1.2 us per token here). tiktoken runs the same algorithm: a regex split, then
byte-pair merges by rank, where rank = the merge's position in tokenizer.json, the conversion
tiktoken itself uses for GPT-2's merge list. It is ~4x faster.

The fast path is only built for layouts it understands exactly (no normalizer, BPE without
dropout/byte-fallback, a known pre-tokenizer, plain added tokens), and only kept if it reproduces the
reference encoder's ids on a check corpus at load time. Otherwise the caller keeps `tokenizers`.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

# GPT-2's split, with SmolLM-style single digits handled by Digits(individual_digits=True) first:
# a digit is its own piece, and whitespace before a digit ends its piece.
_GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_GPT2_SINGLE_DIGITS = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""

CHECK_CORPUS = [
    "The capital of France is Paris. 12345 3.14159 x² 1,000,000",
    "héllo 你好 🎉 naïve café Ünïcödé ŁÓDŹ Ελληνικά русский العربية हिन्दी 日本語 한국어",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\n\n\t\ttabs   and    spaces\r\n",
    "I'm sure you'll see they've DON'T it's we'd   \n  7, 8\n    9:",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable character map used by byte-level BPE."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _pattern(pre: dict[str, Any] | None) -> str | None:
    """The split regex equivalent to a tokenizer.json pre_tokenizer, if it is one we know."""
    if pre is None:
        return None
    kind = pre.get("type")
    if kind == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return _GPT2
    if kind != "Sequence":
        return None
    steps = pre.get("pretokenizers", [])
    types = [s.get("type") for s in steps]
    if (
        types == ["Digits", "ByteLevel"]
        and steps[0].get("individual_digits")
        and steps[1].get("use_regex", True)
    ):
        if not steps[1].get("add_prefix_space"):
            return _GPT2_SINGLE_DIGITS
    if (
        types == ["Split", "ByteLevel"]
        and not steps[1].get("use_regex", True)
        and not steps[1].get("add_prefix_space")
    ):
        split = steps[0]
        if (
            split.get("behavior") == "Isolated"
            and not split.get("invert")
            and "Regex" in split.get("pattern", {})
        ):
            return split["pattern"]["Regex"]
    return None


class FastBpe:
    def __init__(self, encoding: Any, rank_to_id: list[int]):
        self._encoding = encoding
        self._rank_to_id = rank_to_id
        # A byte the vocabulary has no token for (SmolLM2's lacks 0x04, 0xc0, 0xf5..0xff, ...) is
        # dropped, as the reference tokenizer drops it when there is no unknown token.
        self._drops = any(i < 0 for i in rank_to_id[:256])

    def encode(self, text: str) -> list[int]:
        table = self._rank_to_id
        ids = [table[r] for r in self._encoding.encode(text, allowed_special="all")]
        if self._drops and -1 in ids:
            ids = [i for i in ids if i >= 0]
        return ids

    @classmethod
    def build(cls, spec: dict[str, Any], reference: Any) -> FastBpe | None:
        """From a parsed tokenizer.json; ``reference(text) -> ids`` is the encoder to agree with."""
        try:
            import tiktoken
        except ImportError:
            return None
        model = spec.get("model") or {}
        if spec.get("normalizer") is not None or model.get("type") != "BPE":
            return None
        if model.get("dropout") or model.get("byte_fallback") or model.get("continuing_subword_prefix"):
            return None
        if model.get("end_of_word_suffix"):
            return None
        pattern = _pattern(spec.get("pre_tokenizer"))
        if pattern is None:
            return None
        added = spec.get("added_tokens", [])
        if any(
            t.get("lstrip") or t.get("rstrip") or t.get("single_word") or t.get("normalized") for t in added
        ):
            return None
        b2u = bytes_to_unicode()
        u2b = {c: b for b, c in b2u.items()}
        vocab: dict[str, int] = model["vocab"]
        try:
            ranks = {bytes([b]): b for b in range(256)}
            for i, merge in enumerate(model["merges"]):
                left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
                merged = bytes(u2b[c] for c in left + right)
                if merged in ranks:  # the same bytes from two rules: ranks would be ambiguous
                    return None
                ranks[merged] = 256 + i
        except (KeyError, ValueError):
            return None
        n_ranks = 256 + len(model["merges"])
        special_base = n_ranks
        rank_to_id = [-1] * (special_base + len(added))
        for raw, rank in ranks.items():
            rank_to_id[rank] = vocab.get("".join(b2u[b] for b in raw), -1)
        if any(i < 0 for i in rank_to_id[256:n_ranks]):  # a merge the vocabulary has no token for
            return None
        specials = {}
        for j, tok in enumerate(added):
            specials[tok["content"]] = special_base + j
            rank_to_id[special_base + j] = tok["id"]
        try:
            encoding = tiktoken.Encoding(
                "dynamo-fastbpe",
                pat_str=pattern,
                mergeable_ranks=ranks,
                special_tokens=specials,
                explicit_n_vocab=None,
            )
        except Exception as e:  # a regex tiktoken's engine cannot compile, for instance
            logger.debug("fast BPE unavailable: %s", e)
            return None
        fast = cls(encoding, rank_to_id)
        for text in CHECK_CORPUS:
            try:
                ok = fast.encode(text) == reference(text)
            except (KeyError, IndexError, ValueError):
                ok = False
            if not ok:
                logger.info("fast BPE disagrees with the reference tokenizer; using the reference")
                return None
        return fast
