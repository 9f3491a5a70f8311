"""Synthetic chat workloads of a given size, deterministic for a seed."""

from __future__ import annotations

import random
from pathlib import Path

import orjson

from dynamo_cli.deployment.handle import Deployment, start

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no will "
    "more can about said what out up time people model cache token server request worker router "
    "latency memory network prefill decode batch system design question answer history document "
    "context window engine throughput user round reply compute river mountain city garden music "
    "library science history energy market village ocean forest bridge planet"
).split()


def text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words))


def chat(seed: int, prompt_words: int, turns: int = 3) -> list[dict[str, str]]:
    """A multi-turn conversation of roughly ``prompt_words`` words (~1.1 tokens each)."""
    rng = random.Random(seed)
    per = max(1, prompt_words // (2 * turns + 1))
    messages = [{"role": "system", "content": text(rng, per)}]
    for _ in range(turns):
        messages.append({"role": "user", "content": text(rng, per)})
        messages.append({"role": "assistant", "content": text(rng, per)})
    messages[-1] = {"role": "user", "content": messages[-1]["content"]}
    return messages


def streaming_chat_body(model: str, messages: list[dict[str, str]], max_tokens: int) -> bytes:
    """A streaming chat request that always generates exactly ``max_tokens`` (greedy, EOS ignored)."""
    return orjson.dumps(
        {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True,
         "ignore_eos": True, "temperature": 0}
    )  # fmt: skip


def free_engine_deployment(tmp: Path, workers: int) -> Deployment:
    """`dynamo run agg` with mocker workers at speedup 1000 (the engine costs next to nothing)."""
    return start(tmp, "agg", "--engine", "mocker", "--workers", str(workers), "--speedup", "1000",
                 "--set", "log_level=warning")  # fmt: skip
