"""`dynamo run disagg` with the mocker: where prompts are prefilled, the KV that moves, and failures."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from dynamo_cli.deployment.handle import Deployment, start
from tests.e2e.helpers import scrape, wait_for

pytestmark = pytest.mark.e2e

DECISIONS = "dynamo_disagg_prefill_decisions_total"


def _doc(k: int, words: int) -> str:
    return f"Document {k}: " + " ".join(f"w{k}x{i}" for i in range(words))


def _ask(dep: Deployment, content: str, max_tokens: int = 8) -> str:
    client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=60)
    resp = client.chat.completions.create(
        model=dep.model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens,  # type: ignore[arg-type]
        temperature=0, extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert resp.choices[0].finish_reason == "length"
    return resp.choices[0].message.content or ""


def _decisions(dep: Deployment) -> dict[tuple[str, str], float]:
    out = {}
    for series, value in scrape(dep.url + "/metrics").items():
        if series.startswith(DECISIONS + "{"):
            labels = dict(kv.split("=", 1) for kv in series[len(DECISIONS) + 1 : -1].split(","))
            out[(labels["outcome"].strip('"'), labels["reason"].strip('"'))] = value
    return out


def _delta(before: dict, after: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _disagg(tmp: Path, *flags: str) -> Deployment:
    return start(tmp, "disagg", "--engine", "mocker", "--set", "router.replicas=0", "--set", "log_level=warning",
                 *flags)  # fmt: skip


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = _disagg(
        tmp_path_factory.mktemp("disagg"), "--speedup", "10", "--set", "disagg.max_local_prefill_length=200"
    )
    yield d
    d.stop()


def test_long_uncached_prompts_go_remote_short_and_cached_ones_stay(dep: Deployment) -> None:
    before = _decisions(dep)
    long_prompt = _doc(1, 300)  # ~1500 tokens
    _ask(dep, long_prompt)
    _ask(dep, "Hi")
    _ask(dep, long_prompt)  # the decode worker cached it when it took the KV over
    assert _delta(before, _decisions(dep)) == {
        ("remote", "long_uncached"): 1,
        ("local", "short_prompt"): 1,
        ("local", "prefix_cached"): 1,
    }
    m = scrape(dep.url + "/metrics")
    moved = sum(v for k, v in m.items() if k.startswith("dynamo_disagg_kv_transfer_bytes_total"))
    # SmolLM2-135M: 30 layers x 2 x 3 KV heads x 64 x 2 bytes = 23,040 bytes a token (all but the last).
    assert moved > 1000 * 23040 and moved % 23040 == 0, moved


def test_outputs_equal_the_aggregated_deployments(dep: Deployment, tmp_path: Path) -> None:
    prompts = [_doc(10 + k, 250) for k in range(3)] + ["What is 2+2?"]
    disagg = [_ask(dep, p, 24) for p in prompts]
    agg = start(tmp_path, "agg", "--engine", "mocker", "--workers", "1", "--speedup", "10",
                "--set", "router.replicas=0")  # fmt: skip
    try:
        assert [_ask(agg, p, 24) for p in prompts] == disagg
    finally:
        agg.stop()


def test_a_full_prefill_queue_keeps_work_local(tmp_path: Path) -> None:
    # Speedup 0.2: a ~1300-token prefill takes ~0.3 s, so concurrent ones find the queue occupied.
    d = _disagg(tmp_path, "--speedup", "0.2", "--set", "disagg.max_local_prefill_length=200",
                "--set", "disagg.max_prefill_queue_size=1")  # fmt: skip
    try:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda k: _ask(d, _doc(100 + k, 250), 2), range(6)))
        got = _decisions(d)
        assert got.get(("local", "queue_full"), 0) >= 1, got
        assert got.get(("remote", "long_uncached"), 0) >= 1, got
        assert sum(got.values()) == 6
    finally:
        d.stop()


def test_without_prefill_workers_requests_fall_back_and_start_up_warns(tmp_path: Path) -> None:
    d = _disagg(tmp_path, "--prefill-workers", "0", "--speedup", "10",
                "--set", "disagg.max_local_prefill_length=200")  # fmt: skip
    try:
        assert "starts no prefill workers" in d.log_text()
        _ask(d, _doc(3, 300))
        assert _decisions(d) == {("fallback", "no_prefill_worker"): 1}
    finally:
        d.stop()


def test_prefill_workers_without_remote_prefill_is_warned_about(tmp_path: Path) -> None:
    d = _disagg(tmp_path, "--no-remote-prefill", "--speedup", "10")
    try:
        assert "will get no work" in d.log_text()
        _ask(d, _doc(4, 300))
        assert _decisions(d) == {("local", "remote_prefill_off"): 1}
    finally:
        d.stop()


def test_a_prefill_worker_killed_mid_queue_fails_no_request(tmp_path: Path) -> None:
    # Every prompt goes remote; each prefill takes ~0.5 s. The prefill worker is killed while it holds
    # the work: it is redelivered (to the restarted worker) or, past the timeout, prefilled locally; a
    # prefill it had finished but whose staged KV died with it is prefilled locally as a failed transfer.
    d = _disagg(tmp_path, "--speedup", "0.05", "--set", "disagg.conditional_disagg=false",
                "--set", "disagg.redelivery_s=1.5", "--set", "disagg.prefill_timeout_s=15")  # fmt: skip
    try:
        victim = d.pid("prefill-0")
        with ThreadPoolExecutor(4) as pool:
            answers = pool.map(lambda k: _ask(d, _doc(200 + k, 120), 4), range(4))
            wait_for(lambda: scrape(d.url + "/metrics").get(
                f'dynamo_disagg_prefill_queue_depth{{model="{d.model}"}}', 0) > 0, 10, "queued prefills")  # fmt: skip
            time.sleep(0.2)
            os.kill(victim, signal.SIGKILL)
            assert all(answers)  # every request succeeded
        got = _decisions(d)
        assert sum(got.values()) == 4 and set(got) <= {
            ("remote", "always_remote"),
            ("fallback", "prefill_timeout"),
            ("fallback", "transfer_failed"),
        }
        assert "prefill-0" in d.log_text() and "restart" in d.log_text().lower()
    finally:
        d.stop()


def test_a_stalled_prefill_worker_times_out_into_a_local_prefill(tmp_path: Path) -> None:
    d = _disagg(tmp_path, "--speedup", "10", "--set", "disagg.max_local_prefill_length=200",
                "--set", "disagg.prefill_timeout_s=1.5")  # fmt: skip
    prefill = d.pid("prefill-0")
    try:
        os.kill(prefill, signal.SIGSTOP)  # alive (its lease holds for a while) but doing nothing
        t0 = time.monotonic()
        _ask(d, _doc(5, 300))
        assert time.monotonic() - t0 > 1.4  # it waited for the stalled prefill worker first
        assert _decisions(d) == {("fallback", "prefill_timeout"): 1}  # then its timeout ended the wait
    finally:
        os.kill(prefill, signal.SIGCONT)
        d.stop()


def test_a_decode_worker_killed_after_remote_prefills_loses_no_stream(tmp_path: Path) -> None:
    """Every prompt is prefilled remotely; decode-0 dies mid-generation. Its streams migrate to decode-1,
    which prefills prompt + tokens so far again, and each answer is exactly the undisturbed one."""
    d = _disagg(tmp_path, "--speedup", "1", "--decode-workers", "2", "--set", "disagg.conditional_disagg=false",
                "--set", "router.mode=round-robin")  # fmt: skip
    try:
        client = openai.OpenAI(base_url=d.base_url, api_key="x", max_retries=0, timeout=60)
        started = [0]

        def stream(k: int, count: bool) -> str:
            chunks = client.chat.completions.create(
                model=d.model, messages=[{"role": "user", "content": _doc(300 + k, 100)}],  # type: ignore[arg-type]
                max_tokens=300, temperature=0, stream=True, extra_body={"ignore_eos": True},
            )  # fmt: skip
            parts = []
            for c in chunks:
                if c.choices and c.choices[0].delta.content:
                    if not parts and count:
                        started[0] += 1
                    parts.append(c.choices[0].delta.content)
            return "".join(parts)

        with ThreadPoolExecutor(4) as pool:
            undisturbed = list(pool.map(lambda k: stream(k, False), range(4)))
            futures = [pool.submit(stream, k, True) for k in range(4)]
            wait_for(lambda: started[0] == 4, 30, "all four streams to start")
            os.kill(d.pid("decode-0"), signal.SIGKILL)
            assert [f.result(timeout=90) for f in futures] == undisturbed
        metrics = scrape(d.url + "/metrics")
        assert metrics[f'dynamo_frontend_migrations_total{{model="{d.model}",reason="worker_died"}}'] == 2
    finally:
        d.stop()
