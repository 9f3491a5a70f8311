"""Structured outputs under a real grammar engine: llguidance's token masks.

``SamplingOptions.structured`` (one key: json, json_object, regex, choice or grammar) becomes an
llguidance grammar (``grammar_for``); ``validate_structured`` checks it without a tokenizer, for the
frontend to answer 400 before any work. The mocker samples through ``GrammarSampler``: every token is
one the grammar allows, so an output that ends on its own is valid by construction.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from llguidance import LLMatcher, LLParserLimits, LLTokenizer
    from llguidance._lib import JsonCompileOptions

    from dynamo_cli.models.tokenizer import ModelTokenizer

KINDS = ("json", "json_object", "regex", "choice", "grammar")
# A spec larger than this (as JSON text) is refused before llguidance sees it (validating 128 KiB of
# JSON schema takes ~0.1 s); error messages are cut to MAX_MESSAGE_CHARS (they quote the grammar).
MAX_SPEC_CHARS = 128 * 1024
MAX_MESSAGE_CHARS = 400
# JSON is generated compact (no optional whitespace), as a model asked for minified JSON writes it.
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}
# The chance that a step prefers a token that moves the output towards its end (see GrammarSampler);
# it rises to 1 as the output nears max_tokens.
BASE_PRESSURE = 0.25


class StructuredError(ValueError):
    """A structured-output spec that cannot be used; the message is for the client."""


def _short(message: str) -> str:
    message = message.strip()
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 3] + "..."


@lru_cache(maxsize=1)
def _limits() -> LLParserLimits:
    from llguidance import LLParserLimits

    # llguidance's default fuel and size bounds keep hostile grammars cheap; short error messages.
    return LLParserLimits(verbose_errors=False)


def _spec_kind(spec: Any) -> tuple[str, Any]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise StructuredError(f"structured output takes exactly one of {', '.join(KINDS)}")
    ((kind, value),) = spec.items()
    if kind not in KINDS:
        raise StructuredError(f"unknown structured output kind {kind!r}; expected one of {', '.join(KINDS)}")
    return kind, value


def _size_of(value: Any) -> int:
    try:
        return len(value) if isinstance(value, str) else len(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise StructuredError(f"the structured output spec is not JSON data ({e})") from e


def grammar_for(spec: dict[str, Any]) -> str:
    """The llguidance grammar of a ``structured`` spec. Raises StructuredError when the spec is malformed
    (the grammar itself is checked by ``validate_structured`` or when a matcher is built)."""
    from llguidance import LLMatcher
    from llguidance.gbnf_to_lark import any_to_lark

    kind, value = _spec_kind(spec)
    if _size_of(value) > MAX_SPEC_CHARS:
        raise StructuredError(f"the {kind} spec is larger than {MAX_SPEC_CHARS} characters")
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise StructuredError(_short(f"the JSON schema is not valid JSON ({e})")) from e
        if not isinstance(value, dict):
            raise StructuredError("the JSON schema must be an object")
        try:
            return LLMatcher.grammar_from_json_schema(value, overrides=_JSON_OPTIONS)
        except ValueError as e:
            raise StructuredError(_short(f"invalid JSON schema: {e}")) from e
    if kind == "json_object":
        if value is not True:
            raise StructuredError("json_object takes the value true")
        return LLMatcher.grammar_from_json_schema({"type": "object"}, overrides=_JSON_OPTIONS)
    if kind == "regex":
        if not isinstance(value, str):
            raise StructuredError("regex takes a string")
        return LLMatcher.grammar_from_regex(value)
    if kind == "choice":
        if not value or not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise StructuredError("choice takes a non-empty list of strings")
        # Lark string literals take JSON's escapes.
        return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in value))
    if not value or not isinstance(value, str):
        raise StructuredError("grammar takes a non-empty string (Lark, or GBNF as llama.cpp writes it)")
    try:
        lark = any_to_lark(value)  # GBNF to Lark; Lark (a start rule or %llguidance) passes unchanged
    except Exception as e:  # the converter's GbnfToLarkError, or a RecursionError on deep nesting
        raise StructuredError(_short(f"invalid grammar: {e}")) from e
    return LLMatcher.grammar_from_lark(lark)


def validate_structured(spec: Any) -> str | None:
    """A sentence saying why ``spec`` cannot be used (malformed spec, invalid schema, regex or grammar),
    or None when it can. Needs no tokenizer; bounded in size and in llguidance's parser fuel."""
    from llguidance import LLMatcher

    try:
        grammar = grammar_for(spec)
    except StructuredError as e:
        return str(e)
    error = LLMatcher.validate_grammar(grammar, None, limits=_limits())
    if error:
        kind, _ = _spec_kind(spec)
        return _short(f"invalid {kind}: {error}")
    return None


# ---- tokenizers -------------------------------------------------------------------------------------


_QUOTE, _BACKSLASH = ord('"'), ord("\\")


@dataclass(frozen=True, eq=False)
class GrammarTokenizer:
    """An llguidance tokenizer with what GrammarSampler needs to know of every token's bytes."""

    ll: LLTokenizer
    eos_ids: np.ndarray  # the model's EOS ids (the grammar's end)
    token_bytes: list[bytes]  # b"" for special tokens
    quote: np.ndarray  # bool per token: contains '"'
    closer: np.ndarray  # contains a closing bracket and no opening one
    opener: np.ndarray  # contains an opening bracket: '(', '[' or '{'
    punct: np.ndarray  # made only of ASCII punctuation (no letters, digits, spaces)
    first_byte: np.ndarray  # int16: the first byte, -1 for an empty or special token
    single: dict[int, int]  # byte -> the token that is that byte alone
    separators: np.ndarray  # the one-byte punctuation tokens but '"'

    @classmethod
    def from_model_tokenizer(cls, tok: ModelTokenizer) -> GrammarTokenizer:
        from llguidance import LLTokenizer

        eos = tok.eos_token_ids
        try:
            ll = LLTokenizer(tok.tokenizer.to_str(), n_vocab=tok.vocab_size, eos_token=eos or None)
        except Exception as e:  # llguidance reports unsupported tokenizers as ValueError/RuntimeError
            raise StructuredError(f"llguidance cannot use the tokenizer of {tok.folder.name}: {e}") from e
        size = ll.vocab_size
        table = [b"" if ll.is_special_token(i) else ll.decode_bytes([i]) for i in range(size)]
        punct_bytes = frozenset(b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
        openers, closers = frozenset(b"([{"), frozenset(b")]}")
        single = {b[0]: i for i, b in reversed(list(enumerate(table))) if len(b) == 1}
        separators = sorted(t for b, t in single.items() if b in punct_bytes and b != _QUOTE)
        return cls(
            ll=ll,
            eos_ids=np.array(sorted(set(eos or ll.eos_tokens)), dtype=np.int64),
            token_bytes=table,
            quote=np.fromiter((b'"' in b for b in table), bool, size),
            closer=np.fromiter(
                (not closers.isdisjoint(b) and openers.isdisjoint(b) for b in table), bool, size
            ),
            opener=np.fromiter((not openers.isdisjoint(b) for b in table), bool, size),
            punct=np.fromiter((bool(b) and punct_bytes.issuperset(b) for b in table), bool, size),
            first_byte=np.fromiter((b[0] if b else -1 for b in table), np.int16, size),
            single=single,
            separators=np.array(separators, dtype=np.int64),
        )


@lru_cache(maxsize=8)
def _load(folder: Path) -> GrammarTokenizer:
    from dynamo_cli.models.tokenizer import ModelTokenizer

    return GrammarTokenizer.from_model_tokenizer(ModelTokenizer(folder, fast_encode=False))


def grammar_tokenizer(folder: Path) -> GrammarTokenizer:
    """The GrammarTokenizer of a model folder (with tokenizer.json), built once per folder (~0.3 s)."""
    return _load(folder.resolve())


# ---- sampling ---------------------------------------------------------------------------------------


class GrammarSampler:
    """One request's grammar state: which tokens are allowed next, and a choice among them.

    The choice is uniform among the allowed tokens (the request's RNG), but biased towards an end:
    with a probability that starts at BASE_PRESSURE and rises to 1 as the output nears max_tokens, it
    prefers, in order: EOS where the grammar may end; inside a string, a token with the closing quote,
    else a one-byte separator after which the quote can come within two tokens (the '@' of an e-mail
    address), else punctuation; in JSON outside strings, a token that closes an object or array, then
    punctuation (it ends a number), then anything but an opening bracket; in other grammars, a token
    with a quote or a closing bracket; failing all that, a token with the rarest first byte among the
    allowed ones. When the grammar allows nothing but EOS, the output is complete.
    """

    def __init__(self, tokenizer: GrammarTokenizer, spec: dict[str, Any]) -> None:
        from llguidance import LLMatcher

        self.tok = tokenizer
        self.json = _spec_kind(spec)[0] in ("json", "json_object")
        self.matcher: LLMatcher = LLMatcher(tokenizer.ll, grammar_for(spec), limits=_limits())
        if self.matcher.is_error():
            raise StructuredError(_short(self.matcher.get_error()))
        self.finished = False
        self.allowed = np.zeros(0, dtype=np.int64)  # the last step's allowed tokens (less banned ones)
        self._in_string = self._escaped = False

    def replay(self, tokens: list[int]) -> None:
        """Consume ``tokens``, generated under this grammar elsewhere (a migrated request)."""
        for token in tokens:
            if not self.matcher.consume_token(token):
                raise StructuredError(
                    f"the tokens to resume from break the grammar: {_short(self.matcher.get_error())}"
                )
            self._track(token)

    def _mask(self) -> tuple[np.ndarray, np.ndarray]:
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        if self.matcher.is_error():
            raise StructuredError(f"the grammar engine failed: {_short(self.matcher.get_error())}")
        allowed = np.flatnonzero(bits[: len(self.tok.token_bytes)])
        return allowed, allowed[np.isin(allowed, self.tok.eos_ids)]

    def next_token(
        self,
        rng: random.Random,
        *,
        progress: float,
        can_stop: bool,
        banned: frozenset[int] = frozenset(),
        forced: int | None = None,
    ) -> int | None:
        """The next token, consumed by the grammar; None at the end for a model without an EOS id.
        ``finished`` is set when the token is the grammar's end (EOS). ``progress``: the share of
        max_tokens used. ``can_stop``: whether EOS may be chosen while other tokens are allowed."""
        allowed, eos = self._mask()
        if banned and allowed.size:
            kept = allowed[~np.isin(allowed, np.fromiter(banned, np.int64, len(banned)))]
            if kept.size:  # a -100 bias only lowers a logit: with everything banned, the mask decides
                allowed, eos = kept, eos[np.isin(eos, kept)]
        others = allowed[~np.isin(allowed, eos)] if eos.size else allowed
        self.allowed = allowed
        if not others.size:
            if not eos.size and not self.matcher.is_stopped():
                raise StructuredError("the grammar allows no token here")
            self.finished = True
            return int(eos[0]) if eos.size else None
        if forced is not None and ((forced in eos and can_stop) or forced in others):
            token = forced
        elif rng.random() < BASE_PRESSURE + (1.0 - BASE_PRESSURE) * min(1.0, progress) ** 2:
            if eos.size and can_stop:
                self.finished = True
                return int(eos[0])
            token = self._towards_end(rng, others)
        else:
            token = int(others[rng.randrange(others.size)])
        if token in eos:
            self.finished = True
            return token
        if not self.matcher.consume_token(token):
            raise StructuredError(f"the grammar engine refused a token: {_short(self.matcher.get_error())}")
        self._track(token)
        return token

    def _towards_end(self, rng: random.Random, others: np.ndarray) -> int:
        tok = self.tok
        if self._in_string:
            closing = self._separators_before_quote(others)
            if closing:
                return rng.choice(closing)
            tiers = [tok.punct]
        elif self.json:
            tiers = [tok.closer, tok.punct & ~tok.opener, ~tok.opener]
        else:
            tiers = [tok.quote | tok.closer]
        for flags in tiers:
            pick = others[flags[others]]
            if pick.size:
                return int(pick[rng.randrange(pick.size)])
        # The rarest first byte: a separator the grammar needs ('@', '.') rather than one more letter.
        firsts = tok.first_byte[others]
        bytes_, counts = np.unique(firsts, return_counts=True)
        byte = rng.choice(bytes_[counts == counts.min()].tolist())
        pick = others[firsts == byte]
        return int(pick[rng.randrange(pick.size)])

    def _separators_before_quote(self, others: np.ndarray) -> list[int]:
        """Inside a string: the allowed tokens with the closing quote, else the one-byte separators after
        which it can come within two tokens."""
        tok = self.tok
        quoted = others[tok.quote[others]]
        if quoted.size:
            return quoted.tolist()
        quote = tok.single.get(_QUOTE)
        if quote is None:
            return []
        fillers = [t for t in (tok.single.get(ord("a")), tok.single.get(ord("0"))) if t is not None]
        tails = [[quote], *([f, quote] for f in fillers)]
        separators = tok.separators[np.isin(tok.separators, others)].tolist()
        validate = self.matcher.validate_tokens
        return [s for s in separators if any(validate([s, *t]) == len(t) + 1 for t in tails)]

    def _track(self, token: int) -> None:
        """Follow string boundaries ('"' outside a string opens one, an unescaped one closes it)."""
        in_string, escaped = self._in_string, self._escaped
        for byte in self.tok.token_bytes[token]:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = in_string
            elif byte == _QUOTE:
                in_string = not in_string
        self._in_string, self._escaped = in_string, escaped
