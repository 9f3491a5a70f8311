"""The KV-aware router in a real deployment: prefixes go where they are cached."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from dynamo_cli.deployment.handle import Deployment, start
from dynamo_cli.transport import protocol
from dynamo_cli.transport.discovery import EtcdDiscovery
from dynamo_cli.transport.messaging import NatsRequestPlane
from dynamo_cli.transport.wire import KvEvent
from tests.e2e.helpers import scrape, wait_for

pytestmark = pytest.mark.e2e


def _cached_fractions(base_url: str, model: str, rounds: int = 3) -> list[float]:
    """4 long distinct prompts, each asked ``rounds`` times in turn: cached share of each repeat."""
    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=30)
    prompts = [f"Document {k}: " + " ".join(f"w{k}x{i}" for i in range(250)) for k in range(4)]
    out = []
    for r in range(rounds):
        for p in prompts:
            resp = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": p}], max_tokens=2
            )  # type: ignore[arg-type]
            assert resp.usage is not None and resp.usage.prompt_tokens_details is not None
            if r > 0:
                out.append(resp.usage.prompt_tokens_details.cached_tokens / resp.usage.prompt_tokens)
    return out


def test_kv_mode_sends_every_repeat_to_its_prefix(tmp_path: Path) -> None:
    dep = start(tmp_path, "agg", "--engine", "mocker", "--workers", "3", "--router-mode", "kv", "--speedup", "50",
                "--set", "router.replicas=0")  # fmt: skip
    try:
        fractions = _cached_fractions(dep.base_url, dep.model)
        assert min(fractions) > 0.9, fractions  # every repeat found its prefix
        metrics = httpx.get(dep.url + "/metrics", timeout=10).text
        values = {
            ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in metrics.splitlines() if ln and ln[0] != "#"
        }
        assert (
            values["dynamo_router_overlap_blocks_total"] / values["dynamo_router_prompt_blocks_total"] > 0.5
        )
        assert values["dynamo_router_kv_events_total"] > 0
        assert values["dynamo_router_approximate_workers"] == 0
    finally:
        dep.stop()


def test_round_robin_misses_what_kv_finds(tmp_path: Path) -> None:
    dep = start(
        tmp_path,
        "agg",
        "--engine",
        "mocker",
        "--workers",
        "3",
        "--router-mode",
        "round-robin",
        "--speedup",
        "50",
    )
    try:
        fractions = _cached_fractions(dep.base_url, dep.model)
        assert min(fractions) < 0.5, fractions  # 4 prompts over 3 workers: repeats land elsewhere
    finally:
        dep.stop()


def test_approximate_mode_warns_and_still_routes_to_the_prefix(tmp_path: Path) -> None:
    dep = start(tmp_path, "agg", "--engine", "mocker", "--workers", "3", "--router-mode", "kv", "--speedup", "50",
                "--set", "router.kv_events=false")  # fmt: skip
    try:
        fractions = _cached_fractions(dep.base_url, dep.model)
        assert min(fractions) > 0.9, fractions
        assert "APPROXIMATE ROUTING" in dep.log_text()
    finally:
        dep.stop()


def _long_streams(dep, n: int, max_tokens: int) -> tuple[ThreadPoolExecutor, list, list[int]]:
    """Start n long streaming requests; returns once every one has produced a token."""
    client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=120)
    started = [0]

    def one(k: int) -> int:
        stream = client.chat.completions.create(
            model=dep.model, messages=[{"role": "user", "content": f"story {k} " * 50}], max_tokens=max_tokens,  # type: ignore[arg-type]
            stream=True, extra_body={"ignore_eos": True},
        )  # fmt: skip
        n_chunks = 0
        for c in stream:
            if c.choices and c.choices[0].delta.content:
                n_chunks += 1
                if n_chunks == 1:
                    started[0] += 1
        return n_chunks

    pool = ThreadPoolExecutor(n)
    futures = [pool.submit(one, k) for k in range(n)]
    wait_for(lambda: started[0] == n, 60, "every stream to start")
    return pool, futures, started


def test_router_replicas_share_their_view(tmp_path: Path) -> None:
    dep = start(tmp_path, "agg", "--engine", "mocker", "--workers", "2", "--router-mode", "kv", "--speedup", "1",
                "--set", "router.replicas=2")  # fmt: skip
    try:
        urls = [dep.ready["roles"][f"router-{i}"]["metrics"] for i in range(2)]
        pool, futures, _ = _long_streams(dep, 6, 300)
        # Each replica routed some of the six, and each counts all six: decisions and completions are shared.
        wait_for(
            lambda: all(scrape(u)["dynamo_router_tracked_requests"] == 6 for u in urls),
            10,
            "both views at 6",
        )
        assert all(scrape(u)['dynamo_router_decisions_total{mode="kv"}'] >= 1 for u in urls)
        assert all(f.result(timeout=120) > 0 for f in futures)
        pool.shutdown()
        wait_for(
            lambda: all(scrape(u)["dynamo_router_tracked_requests"] == 0 for u in urls),
            10,
            "both views at 0",
        )
        assert min(_cached_fractions(dep.base_url, dep.model)) > 0.9
    finally:
        dep.stop()


@pytest.fixture(scope="module")
def kv_dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = start(tmp_path_factory.mktemp("kv"), "agg", "--engine", "mocker", "--workers", "2", "--router-mode", "kv",
              "--speedup", "50", "--set", "router.replicas=0", "--set", "infra.lease_ttl_s=2")  # fmt: skip
    yield d
    d.stop()


def test_a_departed_worker_leaves_the_index(kv_dep: Deployment) -> None:
    _cached_fractions(kv_dep.base_url, kv_dep.model, rounds=1)
    metrics = kv_dep.url + "/metrics"

    def per_worker() -> dict[str, float]:
        prefix = 'dynamo_router_worker_blocks{worker="'
        return {k[len(prefix) : -2]: v for k, v in scrape(metrics).items() if k.startswith(prefix)}

    wait_for(lambda: any(per_worker().values()), 5, "blocks indexed")
    holder = max(per_worker(), key=lambda w: per_worker()[w])
    name = next(n for n, info in kv_dep.ready["roles"].items() if info.get("instance") == holder)
    os.kill(kv_dep.pid(name), signal.SIGKILL)
    # Its lease (2 s) expires, discovery says it left, the router drops what it held.
    wait_for(lambda: holder not in per_worker(), 15, "the dead worker's blocks to go")
    wait_for(
        lambda: httpx.get(kv_dep.url + "/health", timeout=5).json().get("workers") == 2, 30, "the restart"
    )
    assert min(_cached_fractions(kv_dep.base_url, kv_dep.model)) > 0.9


def test_an_event_gap_triggers_a_resync(kv_dep: Deployment) -> None:
    async def forge_gap() -> None:
        disc = await EtcdDiscovery.connect(kv_dep.ready["etcd"], "dynamo")
        worker = (await disc.watch(protocol.WORKER, lambda e: None))[0].instance_id
        plane = await NatsRequestPlane.connect(kv_dep.ready["nats"], name="test")
        # Event 10**6 after a handful: the router must distrust its view of this worker and re-read it.
        gap = protocol.encode_kv_events(worker, [KvEvent(10**6, "stored", [12345])])
        await plane.publish(protocol.kv_events_subject("dynamo"), gap)
        await plane.close()
        await disc.close()

    metrics = kv_dep.url + "/metrics"
    before = scrape(metrics).get("dynamo_router_resyncs_total", 0.0)
    asyncio.run(forge_gap())
    wait_for(lambda: scrape(metrics).get("dynamo_router_resyncs_total", 0.0) > before, 10, "a resync")
    assert min(_cached_fractions(kv_dep.base_url, kv_dep.model)) > 0.9  # the re-read view still routes well


def test_least_loaded_spreads_by_load(tmp_path: Path) -> None:
    dep = start(
        tmp_path,
        "agg",
        "--engine",
        "mocker",
        "--workers",
        "2",
        "--router-mode",
        "least-loaded",
        "--speedup",
        "1",
    )
    try:
        running: dict[int, int] = {}

        async def watch_load(stop: asyncio.Event) -> None:
            plane = await NatsRequestPlane.connect(dep.ready["nats"], name="test")

            async def on_load(data: bytes) -> None:
                wid, load = protocol.decode_load(data)
                running[wid] = load.running

            unsub = await plane.subscribe(protocol.load_subject("dynamo"), on_load)
            await stop.wait()
            await unsub()
            await plane.close()

        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        watcher = threading.Thread(target=loop.run_until_complete, args=(watch_load(stop),), daemon=True)
        watcher.start()
        pool, futures, _ = _long_streams(dep, 4, 300)
        wait_for(
            lambda: sorted(running.values()) == [2, 2], 10, f"two requests on each worker (saw {running})"
        )
        assert all(f.result(timeout=120) > 0 for f in futures)
        pool.shutdown()
        loop.call_soon_threadsafe(stop.set)
        watcher.join(10)
    finally:
        dep.stop()
