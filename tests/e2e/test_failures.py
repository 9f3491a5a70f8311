"""What happens when things go wrong: dead workers, dead roles, Ctrl-C, busy ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from dynamo_cli.deployment.handle import DYNAMO, Deployment, process_alive, start
from tests.e2e.helpers import child_pids, scrape, wait_for

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Write a long story."}]


def _stream_text(client: openai.OpenAI, model: str, i: int, started: list[int] | None = None) -> str:
    """One greedy streamed chat of 300 tokens: its text, or its error."""
    chunks = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"Write a long story, number {i}."}],
        max_tokens=300,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},  # type: ignore[arg-type]
    )
    parts: list[str] = []
    try:
        for c in chunks:
            if c.choices and c.choices[0].delta.content:
                if not parts and started is not None:
                    started[0] += 1
                parts.append(c.choices[0].delta.content)
            if c.choices and c.choices[0].finish_reason:
                assert c.choices[0].finish_reason == "length", c.choices[0].finish_reason
            if c.usage is not None:
                assert c.usage.completion_tokens == 300 and c.usage.prompt_tokens < 40, c.usage
    except openai.APIError as e:
        return f"error: {e.message}"
    return "".join(parts)


def _streams_through(dep: Deployment, client: openai.OpenAI, n: int, victim: str, sig: int) -> list[str]:
    """``n`` streams (as _stream_text); once all have started, ``victim`` gets ``sig``."""
    started = [0]
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(_stream_text, client, dep.model, i, started) for i in range(n)]
        wait_for(lambda: started[0] == n, 30, f"all {n} streams to start")
        os.kill(dep.pid(victim), sig)
        return [f.result(timeout=90) for f in futures]


def test_a_killed_workers_streams_migrate_and_continue_exactly(tmp_path: Path) -> None:
    # speedup 1: 300 tokens take seconds, so requests are mid-stream when the worker dies.
    dep = start(tmp_path, "agg", "--engine", "mocker", "--workers", "2", "--speedup", "1")
    try:
        client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=60)
        with ThreadPoolExecutor(6) as pool:
            undisturbed = list(pool.map(lambda i: _stream_text(client, dep.model, i), range(6)))
        assert not any(t.startswith("error") for t in undisturbed), undisturbed
        results = _streams_through(dep, client, 6, "worker-0", signal.SIGKILL)
        # Every stream finished, token for token as the undisturbed run: the victim's moved to the
        # other worker, which continued them from the prompt and the tokens already streamed.
        assert results == undisturbed
        metrics = scrape(dep.url + "/metrics")
        moved = sum(v for k, v in metrics.items() if k.startswith("dynamo_frontend_migrations_total"))
        assert moved == 3, {k: v for k, v in metrics.items() if "migrat" in k}
        # The launcher told the frontend at once: no stream waited for the idle timeout.
        assert metrics[f'dynamo_frontend_migrations_total{{model="{dep.model}",reason="worker_died"}}'] == 3
        assert (
            metrics[f'dynamo_frontend_migrated_requests_total{{model="{dep.model}",outcome="finished"}}'] == 3
        )
        # The launcher names the dead worker and restarts it.
        wait_for(lambda: "restarting worker-0 (1/3 in 60 s)" in dep.log_text(), 20, "the restart notice")
        assert "worker-0 exited unexpectedly with signal SIGKILL" in dep.log_text()
        wait_for(
            lambda: httpx.get(dep.url + "/health", timeout=5).json().get("workers") == 2,
            30,
            "two workers again",
        )
    finally:
        code = dep.stop()
    assert code == 130


LIST_OF_40 = {
    "type": "array",
    "items": {"type": "string", "maxLength": 12},
    "minItems": 40,
    "maxItems": 40,
}


def test_a_structured_stream_migrates_with_its_grammar_replayed(tmp_path: Path) -> None:
    # The mocker resumes the grammar over the tokens so far: the migrated output is the undisturbed
    # one, valid JSON of 40 strings.
    dep = start(tmp_path, "agg", "--engine", "mocker", "--workers", "2", "--speedup", "1")
    try:
        client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=60)
        started = [0]

        def one(i: int, count: bool) -> str:
            chunks = client.chat.completions.create(
                model=dep.model, messages=[{"role": "user", "content": f"List {i}."}], max_tokens=1000,
                seed=i, stream=True,
                response_format={"type": "json_schema", "json_schema": {"name": "l", "schema": LIST_OF_40}},
            )  # type: ignore[call-overload]  # fmt: skip
            parts: list[str] = []
            for c in chunks:
                if c.choices and c.choices[0].delta.content:
                    if not parts and count:
                        started[0] += 1
                    parts.append(c.choices[0].delta.content)
                if c.choices and c.choices[0].finish_reason:
                    assert c.choices[0].finish_reason == "stop"
            return "".join(parts)

        with ThreadPoolExecutor(4) as pool:
            undisturbed = list(pool.map(lambda i: one(i, False), range(4)))
            futures = [pool.submit(one, i, True) for i in range(4)]
            wait_for(lambda: started[0] == 4, 30, "all four streams to start")
            os.kill(dep.pid("worker-0"), signal.SIGKILL)
            results = [f.result(timeout=90) for f in futures]
        assert results == undisturbed
        assert all(len(json.loads(r)) == 40 for r in results)
        metrics = scrape(dep.url + "/metrics")
        assert metrics[f'dynamo_frontend_migrations_total{{model="{dep.model}",reason="worker_died"}}'] == 2
    finally:
        dep.stop()


def test_without_migration_a_killed_workers_streams_end_with_an_error(tmp_path: Path) -> None:
    dep = start(
        tmp_path, "agg", "--engine", "mocker", "--workers", "2", "--speedup", "1",
        "--set", "frontend.migration_limit=0",
    )  # fmt: skip
    try:
        client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=60)
        results = _streams_through(dep, client, 6, "worker-0", signal.SIGKILL)
        errors = [r for r in results if r.startswith("error")]
        # Round-robin put three on each worker: the victim's three fail clearly, the others finish.
        assert len(errors) == 3, results
        assert all("failed mid-request" in e and "migration_limit: 0" in e for e in errors), errors
        # New requests keep working right away (the dead instance is skipped or retried elsewhere).
        for _ in range(6):
            r = client.chat.completions.create(model=dep.model, messages=MESSAGES, max_tokens=3)  # type: ignore[arg-type]
            assert r.choices[0].finish_reason == "length"
    finally:
        code = dep.stop()
    assert code == 130


def test_a_stalled_workers_streams_migrate_after_the_idle_timeout(tmp_path: Path) -> None:
    # SIGSTOP: alive for the launcher and etcd (its lease thread stops too, but the TTL is longer than
    # the test), silent for the frontend. Its streams move once they have been quiet for 1 s.
    dep = start(
        tmp_path, "agg", "--engine", "mocker", "--workers", "2", "--speedup", "1",
        "--set", "frontend.stream_idle_timeout_s=1",
    )  # fmt: skip
    victim = dep.pid("worker-0")
    try:
        client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=60)
        with ThreadPoolExecutor(4) as pool:
            undisturbed = list(pool.map(lambda i: _stream_text(client, dep.model, i), range(4)))
        assert _streams_through(dep, client, 4, "worker-0", signal.SIGSTOP) == undisturbed
        metrics = scrape(dep.url + "/metrics")
        moved = metrics[f'dynamo_frontend_migrations_total{{model="{dep.model}",reason="idle_timeout"}}']
        assert moved == 2, {k: v for k, v in metrics.items() if "migrat" in k}
    finally:
        os.kill(victim, signal.SIGCONT)
        dep.stop()


def test_ctrl_c_drains_and_leaves_no_process(tmp_path: Path) -> None:
    dep = start(tmp_path, "agg", "--engine", "mocker", "--workers", "2", "--speedup", "1")
    pids = dep.all_pids()
    client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=60)
    with ThreadPoolExecutor(1) as pool:
        # In flight when Ctrl-C comes: it still completes (drain), then everything stops.
        fut = pool.submit(
            lambda: client.chat.completions.create(
                model=dep.model, messages=MESSAGES, max_tokens=150, extra_body={"ignore_eos": True}
            )  # type: ignore[arg-type]
        )
        time.sleep(0.5)
        code = dep.stop(signal.SIGINT)
        r = fut.result(timeout=30)
    assert code == 130
    assert r.usage is not None and r.usage.completion_tokens == 150
    # Every role stopped by itself once drained: none had to be killed at supervisor.stop_timeout_s.
    assert "did not stop in" not in dep.log_text()
    assert [p for p in pids if process_alive(p)] == []
    assert "Stopped." in dep.log_text()


def test_a_stopped_worker_hands_back_what_it_cannot_finish_and_it_migrates(tmp_path: Path) -> None:
    # A 1 s stop timeout: the worker drains for 0.75 s, too short for 300 tokens at speedup 1 (~2 s).
    dep = start(
        tmp_path, "agg", "--engine", "mocker", "--workers", "2", "--speedup", "1",
        "--set", "supervisor.stop_timeout_s=1",
    )  # fmt: skip
    try:
        client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=60)
        with ThreadPoolExecutor(4) as pool:
            undisturbed = list(pool.map(lambda i: _stream_text(client, dep.model, i), range(4)))
        # SIGTERM, as `dynamo role` gets it, or a worker the planner scales down.
        results = _streams_through(dep, client, 4, "worker-0", signal.SIGTERM)
        assert results == undisturbed
        metrics = scrape(dep.url + "/metrics")
        moved = {k: v for k, v in metrics.items() if k.startswith("dynamo_frontend_migrations_total")}
        # Its engine stopped them ("aborted") or its endpoint handed them back ("unavailable"), at once.
        assert sum(moved.values()) == 2 and all("aborted" in k or "unavailable" in k for k in moved), moved
        assert "draining 2 in-flight request(s)" in dep.log_text()
    finally:
        dep.stop()


def test_second_ctrl_c_forces(tmp_path: Path) -> None:
    dep = start(tmp_path, "agg", "--engine", "mocker", "--workers", "1")
    pids = dep.all_pids()
    dep.proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    dep.proc.send_signal(signal.SIGINT)
    assert dep.proc.wait(20) == 130
    wait_for(lambda: not any(process_alive(p) for p in pids), 10, "every child to be gone")


def _serving(dep) -> bool:
    try:
        r = httpx.post(
            dep.url + "/v1/chat/completions",
            json={"model": dep.model, "messages": MESSAGES, "max_tokens": 3},
            timeout=5,
        )
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def _role_pid(dep, name: str) -> int | None:
    """The live pid of a role the launcher started (it changes when the role is restarted)."""
    for pid in child_pids(dep.proc.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"role" in cmd and cmd[cmd.index(b"role") + 1].decode() == name.split("-")[0]:
            if name == "frontend" or cmd[cmd.index(b"--index") + 1].decode() == name.split("-")[1]:
                return pid
    return None


def test_killed_frontend_and_router_come_back_under_load(tmp_path: Path) -> None:
    dep = start(tmp_path, "agg", "--engine", "mocker", "--workers", "2", "--speedup", "20")
    stop = threading.Event()
    results: list[int | str] = []

    def load() -> None:  # a client that keeps asking, through both kills
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.post(
                        dep.url + "/v1/chat/completions",
                        json={"model": dep.model, "messages": MESSAGES, "max_tokens": 20},
                    )
                    results.append(r.status_code)
                except httpx.HTTPError as e:
                    results.append(type(e).__name__)
                    time.sleep(0.05)

    threads = [threading.Thread(target=load) for _ in range(4)]
    try:
        url = dep.url
        for t in threads:
            t.start()
        for name in ("frontend", "router-0"):
            old = _role_pid(dep, name)
            assert old is not None
            served = len(results)
            os.kill(old, signal.SIGKILL)
            wait_for(
                lambda n=name: f"restarting {n} (1/5 in 60 s)" in dep.log_text(), 20, f"{name}'s restart"
            )
            wait_for(lambda: _serving(dep), 60, f"the deployment to serve again after {name} died")
            assert dep.proc.poll() is None, "the launcher exited"
            new = _role_pid(dep, name)
            assert new is not None and new != old
            wait_for(lambda s=served: results[s:].count(200) >= 20, 30, "the clients to be served again")
        assert dep.url == url  # the frontend came back on the port it first got (--port 0)
        assert results.count(200) > 40
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        code = dep.stop()
    assert code == 130


def test_a_frontend_that_keeps_dying_stops_the_deployment(tmp_path: Path) -> None:
    dep = start(tmp_path, "agg", "--engine", "mocker", "--workers", "1", "--set", "frontend.max_restarts=0")
    pids = dep.all_pids()
    os.kill(dep.pid("frontend"), signal.SIGKILL)
    code = dep.proc.wait(60)
    assert code == 1
    log = dep.log_text()
    assert "frontend exited unexpectedly with signal SIGKILL" in log
    assert "error: frontend exited with signal SIGKILL" in log
    wait_for(lambda: not any(process_alive(p) for p in pids), 10, "every child to be gone")


def test_a_killed_etcd_and_nats_are_started_again(tmp_path: Path) -> None:
    dep = start(tmp_path, "agg", "--engine", "mocker", "--workers", "1", "--set", "infra.lease_ttl_s=3")
    try:
        for name in ("etcd", "nats"):
            os.kill(dep.pid(name), signal.SIGKILL)
            wait_for(
                lambda n=name: f"restarting {n} (1/5 in 60 s)" in dep.log_text(), 20, f"{name}'s restart"
            )
            wait_for(lambda: _serving(dep), 60, f"the deployment to serve again after {name} died")
            assert dep.proc.poll() is None
        # Discovery still works after etcd came back: the dead worker's lease runs out and its
        # successor is seen (a watch that did not resume would keep routing to the dead one).
        os.kill(dep.pid("worker-0"), signal.SIGKILL)
        wait_for(lambda: "restarting worker-0 (1/3 in 60 s)" in dep.log_text(), 20, "the worker's restart")
        time.sleep(3 + 2)  # the dead worker's lease (3 s) expires
        wait_for(lambda: _serving(dep), 30, "the restarted worker to serve")
        assert all(_serving(dep) for _ in range(5))
    finally:
        code = dep.stop()
    assert code == 130


def test_busy_port_is_a_clear_startup_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = subprocess.run(
            [*DYNAMO, "run", "agg", "--engine", "mocker", "--port", str(port), "--set", "infra.etcd=spawn", "--set", "infra.nats=spawn"],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "hint:" in proc.stderr


def test_bad_profile_exits_2_without_starting_anything(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers:\n  count: many\n")
    proc = subprocess.run([*DYNAMO, "run", str(bad)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "workers.count" in proc.stderr
    assert "spawning" not in proc.stderr
    assert sys.executable  # the same interpreter runs the CLI
