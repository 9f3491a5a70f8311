"""Routing policies: pure functions of the candidates (no I/O), used by the router role and the frontend."""

from __future__ import annotations

import abc
import random
from collections.abc import Sequence

from dynamo_cli.errors import UsageError


class NoWorkersError(Exception):
    """No worker can take the request."""


class Policy(abc.ABC):
    @abc.abstractmethod
    def select(self, candidates: Sequence[int]) -> int:
        """Pick one instance id from a non-empty, ordered list of candidates."""

    def choose(self, candidates: Sequence[int], exclude: Sequence[int] = ()) -> int:
        pool = [c for c in candidates if c not in exclude] if exclude else list(candidates)
        if not pool:
            raise NoWorkersError("no worker is available")
        return self.select(pool)


class RoundRobin(Policy):
    """Each candidate in turn. Stable under joins and leaves: the cursor walks the sorted ids."""

    def __init__(self) -> None:
        self._last: int | None = None

    def select(self, candidates: Sequence[int]) -> int:
        ordered = sorted(candidates)
        if self._last is None:
            choice = ordered[0]
        else:
            choice = next((c for c in ordered if c > self._last), ordered[0])
        self._last = choice
        return choice


class RandomChoice(Policy):
    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def select(self, candidates: Sequence[int]) -> int:
        return candidates[self._rng.randrange(len(candidates))]


def make_policy(mode: str, seed: int | None = None) -> Policy:
    if mode == "round-robin":
        return RoundRobin()
    if mode == "random":
        return RandomChoice(seed)
    raise UsageError(f"unknown router mode '{mode}'", hint="use round-robin or random")
