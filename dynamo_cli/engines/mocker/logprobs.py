"""Simulated log-probabilities for the mocker: made up, but shaped like a model's.

Every value is a logprob (<= 0), a top list is sorted most likely first with distinct ids, and the
probabilities of one position never sum to more than 1. A sampled token is always the most likely
one (the mocker draws tokens without weights, so no other rank would be truer); a prompt token is the
most likely about half the time, else lower in the list or below it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from dynamo_cli.transport.wire import TokenLogprobs


def _tail(rng: random.Random, mass: float, n: int) -> list[float]:
    """``n`` descending probabilities summing to ``mass``."""
    weights = sorted((rng.random() + 0.01 for _ in range(n)), reverse=True)
    total = sum(weights)
    return [mass * w / total for w in weights]


def _log(p: float) -> float:
    return math.log(p) if p > 0.0 else -1e4


def sampled_logprobs(
    rng: random.Random, token: int, k: int, alternatives: list[int], covers_all: bool
) -> TokenLogprobs:
    """A sampled token's entry. ``alternatives``: up to k-1 other ids it could have been (distinct,
    without ``token``); ``covers_all``: they are all the others, so the probabilities sum to 1."""
    p = 1.0 if covers_all and not alternatives else rng.uniform(0.55, 0.99)
    rest = 1.0 - p
    tail = _tail(rng, rest if covers_all else rest * rng.uniform(0.5, 0.95), len(alternatives))
    own = _log(p)
    if k <= 0:
        return own, [], []
    return own, [token, *alternatives], [own, *map(_log, tail)]


def pick_alternatives(
    rng: random.Random, token: int, k: int, count: int, at: Callable[[int], int], skip: frozenset[int]
) -> tuple[list[int], bool]:
    """Up to k-1 distinct ids other than ``token`` and ``skip``, drawn from the ``count`` candidates
    ``at(0)``..``at(count - 1)``; and whether they are all of the candidates but ``token``."""
    want = min(k - 1, count)
    if want <= 0:
        return [], count <= 1
    picked: list[int] = []
    for index in rng.sample(range(count), min(count, want + 1)):
        t = at(index)
        if t != token and t not in skip:
            picked.append(t)
            if len(picked) == want:
                break
    return picked, len(picked) >= count - 1


def prompt_logprobs(prompt: list[int], k: int, vocab_size: int, seed: int) -> list[TokenLogprobs | None]:
    """One entry per prompt token (None for the first, which has no context): a function of ``seed``."""
    rng = random.Random(seed)
    out: list[TokenLogprobs | None] = [None]
    k = max(k, 0)
    for token in prompt[1:]:
        top = rng.uniform(0.3, 0.95)
        probs = sorted([top, *_tail(rng, (1.0 - top) * rng.uniform(0.5, 0.95), k)], reverse=True)
        rank = 0 if k == 0 or rng.random() < 0.5 else rng.randint(1, k)  # k: just below the top list
        ids: list[int] = []
        seen = {token}
        while len(ids) < k - (rank < k) and len(seen) < vocab_size:
            t = rng.randrange(vocab_size)
            if t not in seen:
                seen.add(t)
                ids.append(t)
        if rank < k:
            rank = min(rank, len(ids))  # a vocabulary smaller than k
            ids.insert(rank, token)
        out.append((_log(probs[rank]), ids, [_log(p) for p in probs[: len(ids)]]))
    return out
