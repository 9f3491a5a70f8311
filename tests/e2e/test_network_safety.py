"""Safe on a network, end to end on the mocker: API keys, TLS and mutual TLS with a CA the test makes,
keys kept out of everything a user or another process can read, per-key rate limits, and overload
shed with 503 while /health keeps answering."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import trustme

from dynamo_cli.deployment.handle import Deployment, start
from tests.e2e.helpers import wait_for

pytestmark = pytest.mark.e2e

KEY_FILE_KEYS = ["sk-file-one-4c1f", "sk-file-two-9a7e"]
FLAG_KEY = "sk-flag-3b5d"
ENV_KEY = "sk-env-77d2"
ALL_KEYS = [*KEY_FILE_KEYS, FLAG_KEY, ENV_KEY]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[trustme.CA, Path]]:
    d = tmp_path_factory.mktemp("ca")
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(d / "ca.pem"))
    cert = authority.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    yield authority, d


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, ca: tuple[trustme.CA, Path]) -> Iterator[Deployment]:
    _, d = ca
    tmp = tmp_path_factory.mktemp("secured")
    keys = tmp / "keys.txt"
    keys.write_text("\n".join(KEY_FILE_KEYS) + "\n")
    dep = start(
        tmp, "agg", "--engine", "mocker", "--speedup", "50",
        "--api-key-file", str(keys), "--api-key", FLAG_KEY, "--ssl-certfile", str(d / "server.pem"),
        "--planner", "--set", "planner.interval_s=0.5", "--set", "frontend.metrics_auth=true",
        env={"DYNAMO_API_KEY": ENV_KEY},
    )  # fmt: skip
    yield dep
    dep.stop()


def _trust(ca_dir: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_dir / "ca.pem"))


def _client(dep: Deployment, ca_dir: Path, key: str) -> openai.OpenAI:
    http = httpx.Client(verify=_trust(ca_dir), timeout=30)
    return openai.OpenAI(base_url=dep.base_url, api_key=key, max_retries=0, http_client=http)


def test_https_with_any_configured_key_and_401_without(
    secured: Deployment, ca: tuple[trustme.CA, Path]
) -> None:
    _, d = ca
    assert secured.url.startswith("https://")
    for key in ALL_KEYS:
        with _client(secured, d, key) as client:
            out = client.chat.completions.create(model=secured.model, **CHAT)  # type: ignore[call-overload]
        assert out.choices[0].message.content
    for key in ("sk-wrong", ALL_KEYS[0] + "x", ALL_KEYS[0][:-1]):
        with _client(secured, d, key) as client, pytest.raises(openai.AuthenticationError) as err:
            client.models.list()
        assert err.value.status_code == 401
        assert err.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    with httpx.Client(verify=_trust(d)) as http:
        assert http.get(f"{secured.url}/health").status_code == 200
        assert http.get(f"{secured.url}/live").status_code == 200
        assert http.get(f"{secured.url}/metrics").status_code == 401  # frontend.metrics_auth
        metrics = http.get(f"{secured.url}/metrics", headers={"Authorization": f"Bearer {ENV_KEY}"})
        assert metrics.status_code == 200
        assert 'dynamo_frontend_rejected_requests_total{model="' in metrics.text
        r = http.post(f"{secured.url}/v1/completions", json={"model": secured.model, "prompt": "x"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(httpx.ConnectError):  # the certificate is checked: without the CA it fails
        httpx.get(f"{secured.url}/health")


def test_the_planner_scrapes_over_https_with_a_key(secured: Deployment) -> None:
    """/metrics behind a key and TLS: the planner's observations keep coming (a failed scrape skips the
    interval and sends none)."""
    wait_for(
        lambda: sum(e.get("event") == "observation" for e in list(secured.events)) >= 3,
        30,
        "three planner observations",
    )
    assert "planner interval skipped" not in secured.log_text()


def test_no_key_in_logs_config_events_command_lines_or_config_show(secured: Deployment) -> None:
    seen = [secured.log_text(), json.dumps(secured.events)]
    config_files = set()
    for pid in secured.all_pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        seen.append(b" ".join(argv).decode(errors="replace"))
        for i, arg in enumerate(argv[:-1]):
            if arg == b"role":  # role NAME CONFIG
                config_files.add(Path(argv[i + 2].decode()))
    assert config_files, "no role process names its config file"
    for path in config_files:
        assert path.stat().st_mode & 0o777 == 0o600
        seen.append(path.read_text())
    assert "warning: an API key given as text" in secured.log_text()
    shown = subprocess.run(
        [sys.executable, "-m", "dynamo_cli", "config", "show", "agg", "--set", f"frontend.api_keys=[{FLAG_KEY}]"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    seen.append(shown.stdout + shown.stderr)
    assert "<redacted>" in shown.stdout
    everything = "\n".join(seen)
    for key in ALL_KEYS:
        assert key not in everything


def test_bench_over_https_with_a_key(secured: Deployment, ca: tuple[trustme.CA, Path]) -> None:
    """`dynamo bench` takes an https URL (a private CA through SSL_CERT_FILE) and a key."""
    _, d = ca
    argv = [sys.executable, "-m", "dynamo_cli", "bench", "multi-round-qa", "--base-url", secured.base_url,
            "--num-users", "2", "--num-rounds", "2", "--qps", "8", "--answer-len", "8", "--json"]  # fmt: skip
    env = {**os.environ, "SSL_CERT_FILE": str(d / "ca.pem")}
    ok = subprocess.run([*argv, "--api-key", ENV_KEY], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    summary = json.loads(ok.stdout)
    assert summary["requests"] == 4 and summary["failed"] == 0
    refused = subprocess.run([*argv, "--api-key", "sk-wrong"], capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and ENV_KEY not in refused.stdout + refused.stderr


def test_mutual_tls_refuses_a_client_without_a_certificate(
    tmp_path: Path, ca: tuple[trustme.CA, Path]
) -> None:
    authority, d = ca
    dep = start(
        tmp_path, "agg", "--engine", "mocker", "--speedup", "50",
        "--ssl-certfile", str(d / "server.pem"), "--ssl-ca-certs", str(d / "ca.pem"),
    )  # fmt: skip
    try:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.get(f"{dep.url}/health", verify=_trust(d)).raise_for_status()
        ctx = _trust(d)
        client_cert = authority.issue_cert("client.example")
        client_cert.configure_cert(ctx)
        with httpx.Client(verify=ctx, timeout=30) as http:
            body = {"model": dep.model, **CHAT}
            assert http.post(f"{dep.url}/v1/chat/completions", json=body).status_code == 200
    finally:
        dep.stop()


def test_rate_limit_per_key_answers_429_with_retry_after(tmp_path: Path) -> None:
    dep = start(
        tmp_path, "agg", "--engine", "mocker", "--speedup", "50", "--api-key", "sk-a", "--api-key", "sk-b",
        "--set", "frontend.rate_limit_rps=0.2", "--set", "frontend.rate_limit_burst=2",
    )  # fmt: skip
    try:
        body = {"model": dep.model, **CHAT}

        def post(key: str) -> httpx.Response:
            return httpx.post(f"{dep.base_url}/chat/completions", json=body, timeout=30,
                              headers={"Authorization": f"Bearer {key}"})  # fmt: skip

        assert [post("sk-a").status_code for _ in range(3)] == [200, 200, 429]
        refused = post("sk-a")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert post("sk-b").status_code == 200  # the other key has its own bucket
    finally:
        dep.stop()


def test_overload_is_shed_with_503_and_health_answers_throughout(tmp_path: Path) -> None:
    """A burst far beyond what is admitted: every answer is 200 or 503 with Retry-After, and /health
    answers while it lasts."""
    dep = start(
        tmp_path, "agg", "--engine", "mocker", "--speedup", "2",
        "--set", "frontend.max_inflight=4", "--set", "frontend.max_queued=4",
    )  # fmt: skip
    try:
        statuses: Counter[int] = Counter()
        health: list[int] = []

        async def go() -> None:
            body = {"model": dep.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 32}
            limits = httpx.Limits(max_connections=200)
            async with httpx.AsyncClient(timeout=60, limits=limits) as http:

                async def one() -> None:
                    r = await http.post(f"{dep.base_url}/chat/completions", json=body)
                    statuses[r.status_code] += 1
                    if r.status_code == 503:
                        assert r.headers["retry-after"] == "1"
                        assert r.json()["error"]["code"] == "overloaded"

                async def probe() -> None:
                    while sum(statuses.values()) < 80:
                        health.append((await http.get(f"{dep.url}/health", timeout=5)).status_code)
                        await asyncio.sleep(0.05)

                await asyncio.gather(probe(), *(one() for _ in range(80)))

        asyncio.run(go())
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[503] > 0 and statuses[200] >= 8, statuses
        assert health and set(health) == {200}
        text = httpx.get(f"{dep.url}/metrics").text
        line = next(ln for ln in text.splitlines() if 'reason="overloaded"' in ln and "rejected" in ln)
        assert float(line.split()[-1]) == statuses[503]
        assert os.path.exists(f"/proc/{dep.pid('frontend')}")
    finally:
        dep.stop()
