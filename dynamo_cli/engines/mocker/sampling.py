"""The mocker's token sampling: output tokens drawn from a request's top-p / top-k candidate window
under logit_bias, EOS and stop tokens, or from what a structured-output grammar allows, with their
simulated logprobs."""

from __future__ import annotations

import asyncio
import math
import random
import sys
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from dynamo_cli.config.models import MockerConfig
from dynamo_cli.engines.mocker import logprobs
from dynamo_cli.engines.mocker.request import Request
from dynamo_cli.transport.wire import REQUEST_ERROR, FinishReason, TokenLogprobs

if TYPE_CHECKING:
    from dynamo_cli.engines.structured import GrammarSampler

_U64 = (1 << 64) - 1
_LOGPROB_SALT = 0x6C6F6770726F6273  # logprobs draw from their own RNG: asking for them changes no token


def _tokens_digest(tokens: Sequence[int], seed: int = 0) -> int:
    return xxhash.xxh3_64_intdigest(_packed(tokens), seed & _U64)


def _packed(tokens: Sequence[int]) -> bytes:
    """Token ids as 8-byte little-endian integers: the bytes a request's history hash reads."""
    packed = array("q", tokens)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


class _SplitMix(random.Random):
    """SplitMix64 behind random.Random's interface: seeding is one assignment (Mersenne Twister's
    costs ~5 µs), so a request's generator is re-seeded before every token. Not for secrets."""

    _state = 0

    def seed(self, a: Any = None, version: int = 2) -> None:
        self._state = (a if isinstance(a, int) else random.getrandbits(64)) & _U64

    def getrandbits(self, k: int) -> int:
        out, bits = 0, 0
        while bits < k:
            out = (out << 64) | self._next()
            bits += 64
        return out >> (bits - k)

    def random(self) -> float:
        return (self._next() >> 11) * (1.0 / (1 << 53))

    def _next(self) -> int:
        self._state = z = (self._state + 0x9E3779B97F4A7C15) & _U64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
        return z ^ (z >> 31)

    def getstate(self) -> Any:
        return self._state

    def setstate(self, state: Any) -> None:
        self._state = state


async def grammar_sampler(
    folder: Path | None, spec: dict[str, Any], replay: list[int] | None = None
) -> tuple[GrammarSampler | None, str | None]:
    """The grammar state of a structured request, built off the event loop (the first request of
    a model also loads its tokenizer), having consumed ``replay``; or why there is none. ``folder``:
    the model folder."""
    if folder is None:
        return None, "structured output needs the model's tokenizer; this mocker has no model folder"
    from dynamo_cli.engines.structured import GrammarSampler, StructuredError, grammar_tokenizer
    from dynamo_cli.errors import DynamoError

    def build() -> GrammarSampler:
        sampler = GrammarSampler(grammar_tokenizer(folder), spec)
        sampler.replay(replay or [])
        return sampler

    try:
        return await asyncio.to_thread(build), None
    except (StructuredError, DynamoError) as e:
        return None, f"structured output: {e}"


class TokenSampler:
    """Draws one request's tokens. ``vocab_size`` and ``eos_token_ids`` come from the model
    (``cfg.vocab_size`` overrides the former); ``instance_seed`` seeds unseeded sampling."""

    def __init__(
        self, cfg: MockerConfig, vocab_size: int, eos_token_ids: list[int], instance_seed: int
    ) -> None:
        self.cfg = cfg
        self._vocab = cfg.vocab_size if cfg.vocab_size is not None else vocab_size
        self._eos_id = eos_token_ids[0] if eos_token_ids else None
        # Output tokens come from range(vocab) minus the EOS ids; index j maps to a token by skipping them.
        self._eos_skip = sorted({e for e in eos_token_ids if 0 <= e < self._vocab})
        self._num_candidates = self._vocab - len(self._eos_skip)
        if self._num_candidates < 1:
            raise ValueError(f"vocab_size {self._vocab} leaves no token besides the EOS ids")
        self._rng = random.Random(instance_seed)  # for unseeded sampling

    def prepare(self, req: Request) -> None:
        """Seed ``req``'s draws and place its candidate window. Greedy or seeded, each token's draws
        depend only on the seed and the tokens before it (prompt and output alike), as a model's
        output does: a request re-sent with its output so far appended (a migrated one) continues
        exactly. The window depends on the seed alone."""
        s = req.sampling
        if s.temperature <= 0:
            seed = 0
        elif s.seed is not None:
            seed = s.seed & _U64
        else:
            seed = self._rng.getrandbits(64)
        req.history = xxhash.xxh3_64(seed=seed)
        req.history.update(_packed(req.tokens))
        rng = req.rng = _SplitMix(seed)
        if s.logprobs is not None:
            req.lp_rng = _SplitMix(seed ^ _LOGPROB_SALT)
        n = self._num_candidates
        k = n if s.top_p >= 1.0 else max(1, math.ceil(s.top_p * n))
        if s.top_k > 0:
            k = min(k, s.top_k)
        req.k = k
        req.offset = rng.randrange(n) if k < n else 0

    def prompt_logprobs(self, req: Request, k: int) -> list[TokenLogprobs | None]:
        """The prompt's logprobs: a function of the prompt, as a model's."""
        prompt = req.tokens[: req.prompt_len]
        seed = _tokens_digest(prompt, _LOGPROB_SALT)
        return logprobs.prompt_logprobs(prompt, k, self._vocab, seed)

    def _window_token(self, req: Request, index: int) -> int:
        """The token at ``index`` (modulo its size) of the request's candidate window."""
        token = (req.offset + index % req.k) % self._num_candidates
        for eos in self._eos_skip:
            if token >= eos:
                token += 1
        return token

    def _candidate(self, req: Request, index: int) -> int:
        """The token at ``index`` of the request's candidate window, or the next one logit_bias does
        not ban (all banned: the one drawn, as a -100 bias only lowers a logit)."""
        first = -1
        for j in range(min(req.k, len(req.banned) + 1)):
            token = self._window_token(req, index + j)
            if token not in req.banned:
                return token
            first = token if first < 0 else first
        return first

    def sample(self, req: Request) -> FinishReason | None:
        """Append one output token; return a finish reason if it ends the request."""
        s = req.sampling
        rng = req.rng
        assert rng is not None
        self._reseed(req)
        can_stop = not s.ignore_eos and req.num_output >= s.min_tokens
        eos_roll = rng.random() if self.cfg.eos_rate > 0.0 else 1.0
        reason: FinishReason | None = None
        eos = self._eos_id
        if (
            can_stop
            and eos is not None
            and eos not in req.banned
            and req.forced is None
            and eos_roll < self.cfg.eos_rate
        ):
            token, reason = eos, "stop"
        else:
            token = req.forced if req.forced is not None else self._candidate(req, int(rng.random() * req.k))
            if can_stop and token in req.stop_ids:
                reason = "stop"
        self._append(req, token)
        if reason is None and req.num_output >= s.max_tokens:
            reason = "length"
        return reason

    def sample_structured(self, req: Request) -> FinishReason | None:
        """``sample`` under a grammar: the token is one it allows; its end (EOS) stops the request,
        even before min_tokens or with ignore_eos, since no other token is valid then."""
        from dynamo_cli.engines.structured import StructuredError

        s = req.sampling
        sampler = req.sampler
        assert sampler is not None and req.rng is not None
        self._reseed(req)
        can_stop = not s.ignore_eos and req.num_output >= s.min_tokens
        try:
            done = s.structured_replay + req.num_output  # a migrated request's progress counts it all
            token = sampler.next_token(
                req.rng,
                progress=done / (s.structured_replay + s.max_tokens),
                can_stop=can_stop,
                banned=req.banned,
                forced=req.forced,
            )
        except StructuredError as e:
            req.error = f"{REQUEST_ERROR}structured output: {e}"  # the grammar's, not the engine's fault
            return "error"
        reason: FinishReason | None = "stop" if sampler.finished else None
        if token is None:  # the grammar ended and the model has no EOS token to say so
            return reason
        if can_stop and token in req.stop_ids:
            reason = "stop"
        self._append(req, token)
        if reason is None and req.num_output >= s.max_tokens:
            reason = "length"
        return reason

    @staticmethod
    def _reseed(req: Request) -> None:
        """Seed the next token's draws from the request's history."""
        assert req.history is not None and req.rng is not None
        h = req.history.intdigest()
        req.rng.seed(h)
        if req.lp_rng is not None:
            req.lp_rng.seed(h ^ _LOGPROB_SALT)

    def _append(self, req: Request, token: int) -> None:
        assert req.history is not None
        req.history.update(token.to_bytes(8, "little", signed=True))
        req.tokens.append(token)
        req.pending.append(token)
        req.num_output += 1
        if req.lp_rng is not None:
            req.pending_lp.append(self._token_logprobs(req, token))

    def _token_logprobs(self, req: Request, token: int) -> TokenLogprobs:
        """Logprobs of a sampled token; the alternatives come from the tokens it was drawn among."""
        rng, k = req.lp_rng, req.sampling.logprobs
        assert rng is not None and k is not None
        if req.sampler is not None:
            allowed = req.sampler.allowed
            count, at = len(allowed), lambda i: int(allowed[i])
        else:
            count, at = req.k, lambda i: self._window_token(req, i)
        others, covers_all = logprobs.pick_alternatives(rng, token, k, count, at, req.banned)
        return logprobs.sampled_logprobs(rng, token, k, others, covers_all)
