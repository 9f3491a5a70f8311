"""The replay worker of benchmarks/frontend_replay behind a real frontend: what it recorded with the mocker
comes back, token for token with its logprobs, and a second request replays it without recording."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from benchmarks.frontend_replay import launch, role_argv, stop, wait_healthy, wait_ready
from benchmarks.replay_worker import ReplayWorker, replay_config
from dynamo_cli.models.resolve import resolve_model
from dynamo_cli.models.tokenizer import ModelTokenizer
from dynamo_cli.transport import protocol

pytestmark = pytest.mark.integration


async def _stream(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200, await r.aread()
            return [json.loads(line[6:]) async for line in r.aiter_lines() if line.startswith("data: {")]


def _entries(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for ev in events for c in ev["choices"] if c.get("logprobs") for e in c["logprobs"]["content"]]


async def test_a_frontend_streams_back_the_recorded_tokens_and_logprobs(
    etcd_url: str, nats_url: str, namespace: str, tmp_path: Path
) -> None:
    cfg = replay_config(etcd_url, nats_url, namespace)
    model = resolve_model(cfg.model, cfg.served_model_name)  # the frontend finds the folder made
    argv = role_argv("frontend", etcd_url, nats_url, namespace, 0, "--set", "frontend.port=0")
    frontend = launch("frontend", argv, tmp_path)
    worker = ReplayWorker(cfg, model, tokens_per_frame=3, interval_s=0.002)
    try:
        await worker.start()
        ready = await asyncio.to_thread(wait_ready, frontend, 60)
        await asyncio.to_thread(wait_healthy, ready["url"])
        body = {"model": ready["model"], "messages": [{"role": "user", "content": "Hello there"}],
                "max_tokens": 10, "stream": True, "ignore_eos": True, "temperature": 0,
                "logprobs": True, "top_logprobs": 5}  # fmt: skip
        first = await _stream(ready["url"], body)
        again = await _stream(ready["url"], body)
    finally:
        await worker.drain()
        await worker.close()
        await asyncio.to_thread(stop, frontend)

    (frames,) = worker.recorder.streams.values()
    outputs = [protocol.decode_output(f) for f in frames]
    assert [len(o.token_ids) for o in outputs] == [3, 3, 3, 1]  # frames of 3 tokens, as asked
    assert outputs[-1].finish_reason == "length"
    recorded = [orjson.loads(e) for o in outputs for e in o.logprobs_json or []]
    tok = ModelTokenizer(model.path)
    ids = [t for o in outputs for t in o.token_ids]
    assert [bytes(e["bytes"]) for e in recorded] == [tok.token_bytes(t) for t in ids]
    assert all(len(e["top_logprobs"]) == 5 for e in recorded)
    assert _entries(first) == recorded
    assert first[-1]["choices"][0]["finish_reason"] == "length"
    assert _entries(again) == recorded  # replayed, not drawn again
    assert worker.stats()["recorded"] == 1 and worker.stats()["served"] == 2
