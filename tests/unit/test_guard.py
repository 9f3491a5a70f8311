"""The frontend's door: API keys, redaction, rate limits and admission control."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from dynamo_cli.config.frontend import REDACTED, FrontendConfig, redacted
from dynamo_cli.config.loader import dump_config, shown_config
from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.errors import ConfigError
from dynamo_cli.frontend import guard
from dynamo_cli.frontend.access import (
    ENV_CHILD,
    ENV_DEFAULT,
    client_options,
    for_children,
    keys_for,
    resolve_keys,
)
from dynamo_cli.frontend.guard import AcceptQueue, Admission, Guard, RateLimiter, admission_limit
from dynamo_cli.frontend.metrics import FrontendMetrics


# ---- keys ----------------------------------------------------------------------------------------
def test_keys_from_env_file_text_and_the_default_variable(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("k-file-1\n\n  k-file-2  \n")
    env = {"MY_KEYS": "k-env-1, k-env-2", ENV_DEFAULT: "k-default"}
    got = resolve_keys(["env:MY_KEYS", f"file:{f}", "k-text", "k-env-1"], env)
    assert got == ["k-env-1", "k-env-2", "k-file-1", "k-file-2", "k-text", "k-default"]
    assert resolve_keys([], {}) == []


@pytest.mark.parametrize(
    "entry, why",
    [("env:UNSET", "not set"), ("file:/nonexistent/keys", "cannot read"), (REDACTED, "not passed on")],
)
def test_a_reference_that_names_nothing_is_an_error_never_an_open_server(entry: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        resolve_keys([entry], {})


def test_metrics_behind_a_key_needs_a_key() -> None:
    with pytest.raises(ConfigError, match="no key is configured"):
        keys_for(FrontendConfig(metrics_auth=True), {})
    assert keys_for(FrontendConfig(metrics_auth=True), {ENV_DEFAULT: "k"}) == ["k"]


def test_an_empty_key_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("\n")
    with pytest.raises(ConfigError, match="holds no key"):
        resolve_keys([f"file:{tmp_path / 'k'}"], {})


def test_keys_written_out_are_redacted_where_shown_and_references_stand() -> None:
    cfg = DynamoConfig()
    cfg.frontend.api_keys = ["sk-secret-1", "env:KEYS", "file:/etc/keys"]
    assert redacted(cfg.frontend.api_keys) == [REDACTED, "env:KEYS", "file:/etc/keys"]
    assert "sk-secret-1" not in dump_config(cfg)
    assert shown_config(cfg)["frontend"]["api_keys"] == [REDACTED, "env:KEYS", "file:/etc/keys"]


def test_children_get_the_keys_by_environment_and_the_file_names_the_variable() -> None:
    entries, env = for_children(["a", "b"])
    assert entries == [f"env:{ENV_CHILD}"] and env == {ENV_CHILD: "a,b"}
    assert resolve_keys(entries, env) == ["a", "b"]
    assert for_children([]) == ([], {})


def test_own_clients_send_the_key_and_accept_the_deployments_certificate(tmp_path: Path) -> None:
    plain = client_options(FrontendConfig(), [])
    assert plain == {}
    opts = client_options(FrontendConfig(ssl_certfile=str(tmp_path / "c.pem")), ["k1", "k2"])
    assert opts["headers"] == {"Authorization": "Bearer k1"}
    assert opts["verify"].check_hostname is False


def test_tls_key_or_ca_without_a_certificate_is_refused() -> None:
    with pytest.raises(ValueError, match=r"need frontend\.ssl_certfile"):
        FrontendConfig(ssl_keyfile="k.pem")


# ---- rate limits ---------------------------------------------------------------------------------
def test_token_bucket_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(guard.time, "monotonic", lambda: now[0])
    rl = RateLimiter(rate=2.0, burst=3)
    assert [rl.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.take("a") == pytest.approx(0.5)  # empty: one token comes in 1/rate
    assert rl.take("b") == 0.0  # another key has its own bucket
    now[0] += 0.5
    assert rl.take("a") == 0.0
    now[0] += 100
    assert [rl.take("a") for _ in range(4)][-1] > 0  # refilled only up to the burst


# ---- admission -----------------------------------------------------------------------------------
def test_admission_limit_follows_the_workers_unless_fixed() -> None:
    n = [0]
    auto = admission_limit(FrontendConfig(inflight_per_worker=8), lambda: n[0])
    assert auto() == 8  # no worker yet: as for one, so requests fail fast instead of queueing
    n[0] = 3
    assert auto() == 24
    assert admission_limit(FrontendConfig(max_inflight=5), lambda: 100)() == 5


async def test_admission_queues_in_order_and_refuses_beyond_the_queue() -> None:
    lengths: list[int] = []
    adm = Admission(lambda: 2, max_queued=2, timeout_s=30, on_queue=lengths.append)
    assert await adm.acquire() and await adm.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        assert await adm.acquire()
        order.append(i)

    waiters = [asyncio.create_task(wait(i)) for i in range(2)]
    await asyncio.sleep(0)
    assert adm.queued == 2 and lengths[-1] == 2
    assert not await adm.acquire()  # the queue is full: refused at once
    adm.release()
    adm.release()
    await asyncio.gather(*waiters)
    assert order == [0, 1] and adm.active == 2 and adm.queued == 0 and lengths[-1] == 0


async def test_admission_wait_times_out_and_a_cancelled_waiter_gives_its_slot_on() -> None:
    adm = Admission(lambda: 1, max_queued=4, timeout_s=0.001)
    assert await adm.acquire()
    assert not await adm.acquire()  # waited timeout_s, then refused
    assert adm.queued == 0
    adm.timeout_s = 30
    first = asyncio.create_task(adm.acquire())
    second = asyncio.create_task(adm.acquire())
    await asyncio.sleep(0)
    adm.release()  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it runs: it keeps the slot or passes it on, never loses it
    got = (await asyncio.gather(first, return_exceptions=True))[0]
    if got is True:  # asyncio.wait_for returned the result it already had: the caller releases it
        adm.release()
    assert await second
    assert adm.active == 1 and adm.queued == 0


# ---- the middleware ------------------------------------------------------------------------------
class _App:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def _call(app: Guard, path: str, auth: str | None = None, method: str = "POST") -> tuple[int, dict]:
    headers = [(b"authorization", auth.encode())] if auth else []
    scope = {"type": "http", "path": path, "method": method, "headers": headers}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    hdrs = {k.decode(): v.decode() for k, v in sent[0].get("headers", [])}
    return sent[0]["status"], hdrs


async def test_guard_checks_keys_on_v1_and_leaves_health_open() -> None:
    m = FrontendMetrics("m")
    inner = _App()
    g = Guard(inner, FrontendConfig(), ["k1", "k2"], m, "m", lambda: 10)
    assert (await _call(g, "/v1/chat/completions"))[0] == 401
    status, hdrs = await _call(g, "/v1/models", "Bearer nope", "GET")
    assert status == 401 and hdrs["www-authenticate"] == "Bearer"
    assert (await _call(g, "/v1/chat/completions", "Basic k1"))[0] == 401
    assert (await _call(g, "/v1/chat/completions", "Bearer k2"))[0] == 200
    assert (await _call(g, "/v1/models", "bearer k1", "GET"))[0] == 200
    for path in ("/health", "/live", "/metrics", "/openapi.json", "/docs"):
        assert (await _call(g, path, method="GET"))[0] == 200
    assert m.rejected.labels("m", "unauthorized")._value.get() == 3
    locked = Guard(inner, FrontendConfig(metrics_auth=True), ["k1"], m, "m", lambda: 10)
    assert (await _call(locked, "/metrics", method="GET"))[0] == 401


async def test_guard_rate_limits_per_key_with_retry_after() -> None:
    m = FrontendMetrics("m")
    cfg = FrontendConfig(rate_limit_rps=0.5, rate_limit_burst=1)
    g = Guard(_App(), cfg, ["a", "b"], m, "m", lambda: 10)
    assert (await _call(g, "/v1/completions", "Bearer a"))[0] == 200
    status, hdrs = await _call(g, "/v1/completions", "Bearer a")
    assert status == 429 and hdrs["retry-after"] == "2"
    assert (await _call(g, "/v1/completions", "Bearer b"))[0] == 200
    assert (await _call(g, "/v1/models", "Bearer a", "GET"))[0] == 200  # only generation is limited


async def test_guard_sheds_overload_with_503_and_retry_after() -> None:
    m = FrontendMetrics("m")
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] != "/health":
            started.set()
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    g = Guard(slow, FrontendConfig(max_queued=0), [], m, "m", lambda: 1)
    first = asyncio.create_task(_call(g, "/v1/chat/completions"))
    await started.wait()
    status, hdrs = await _call(g, "/v1/chat/completions")
    assert status == 503 and hdrs["retry-after"] == "1"
    assert (await _call(g, "/health", method="GET"))[0] == 200  # not admission-controlled
    release.set()
    assert (await first)[0] == 200
    assert g.admission.active == 0
    assert m.rejected.labels("m", "overloaded")._value.get() == 1


async def test_the_slot_is_free_once_the_last_byte_is_sent() -> None:
    """A streamed response lingers after its last byte (disconnect watch, closing the generator); the
    client's next request must find the slot free by then."""
    m = FrontendMetrics("m")
    linger, lingering = asyncio.Event(), asyncio.Event()
    g: Guard

    async def streamed(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        assert g.admission.active == 0  # released with the last byte, before the app returns
        lingering.set()
        await linger.wait()

    g = Guard(streamed, FrontendConfig(max_queued=0), [], m, "m", lambda: 1)
    first = asyncio.create_task(_call(g, "/v1/chat/completions"))
    await lingering.wait()
    assert not first.done()
    linger.set()
    assert (await first)[0] == 200
    assert g.admission.active == 0  # and not released twice


async def test_a_frontend_behind_on_its_own_cpu_refuses_new_requests() -> None:
    m = FrontendMetrics("m")
    g = Guard(_App(), FrontendConfig(max_loop_lag_ms=100), [], m, "m", lambda: 10)
    g.lag.lag_s = 0.3  # as the timer would find it on a saturated loop
    status, hdrs = await _call(g, "/v1/completions")
    assert status == 503 and hdrs["retry-after"] == "1"
    assert (await _call(g, "/health", method="GET"))[0] == 200
    assert m.rejected.labels("m", "busy")._value.get() == 1
    g.lag.lag_s = 0.0
    assert (await _call(g, "/v1/completions"))[0] == 200


def test_the_accept_queue_is_read_from_the_listening_socket() -> None:
    """Connections the kernel completed that nobody accepted yet (the unit tier opens no network socket:
    a socketpair stands in, whose TCP_INFO cannot be read, so the queue reads 0 and is not asked again)."""
    a, b = socket.socketpair()
    with a, b:
        q = AcceptQueue(a)
        assert q.length() == 0 and q.sock is None
    assert AcceptQueue(None).length() == 0


async def test_a_long_accept_queue_refuses_new_requests() -> None:
    m = FrontendMetrics("m")
    g = Guard(_App(), FrontendConfig(max_accept_queue=8), [], m, "m", lambda: 10)
    g.accept_queue.length = lambda: 9  # type: ignore[method-assign]
    status, _ = await _call(g, "/v1/chat/completions")
    assert status == 503 and m.rejected.labels("m", "busy")._value.get() == 1
    g.accept_queue.length = lambda: 8  # type: ignore[method-assign]
    assert (await _call(g, "/v1/chat/completions"))[0] == 200
