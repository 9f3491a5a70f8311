"""Local etcd/NATS helpers: ports, probes of a closed port, and plans (nothing is started here)."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynamo_cli.deployment.servers import (
    ServerPlan,
    etcd_version,
    find_etcd,
    find_nats_server,
    nats_info,
    plan_etcd,
    plan_nats,
)
from dynamo_cli.errors import StartupError
from dynamo_cli.transport.ports import free_port, port_is_free

pytestmark = pytest.mark.integration


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    return free_port()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[socket.socket | OSError]:
    """What each socket.create_connection call gave: the socket, or the error it raised."""
    outcomes: list[socket.socket | OSError] = []
    real = socket.create_connection

    def spy(*args: Any, **kwargs: Any) -> socket.socket:
        try:
            s = real(*args, **kwargs)
        except OSError as e:
            outcomes.append(e)
            raise
        outcomes.append(s)
        return s

    monkeypatch.setattr(socket, "create_connection", spy)
    return outcomes


@pytest.fixture
def bound_socket() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        yield s
    finally:
        s.close()


def in_venv(path: Path) -> bool:
    return Path(sys.prefix).resolve() in path.resolve().parents


# ---- ports --------------------------------------------------------------------------------------------


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))  # raises if it were taken


def test_port_is_free_is_false_for_a_bound_socket(bound_socket: socket.socket) -> None:
    port = bound_socket.getsockname()[1]
    assert port_is_free("127.0.0.1", port) is False


def test_port_is_free_is_false_for_a_bound_but_not_listening_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        assert port_is_free("127.0.0.1", s.getsockname()[1]) is False


def test_port_is_free_is_true_once_released(closed_port: int) -> None:
    assert port_is_free("127.0.0.1", closed_port) is True


# ---- probes -------------------------------------------------------------------------------------------


# "Quickly": one connection attempt, which the refusal ends (no timeout waited out, no retry).


def test_etcd_version_is_none_for_a_closed_port_quickly(
    closed_port: int, connects: list[socket.socket | OSError]
) -> None:
    assert etcd_version(f"http://127.0.0.1:{closed_port}") is None
    assert [type(c) for c in connects] == [ConnectionRefusedError]


def test_nats_info_is_none_for_a_closed_port_quickly(
    closed_port: int, connects: list[socket.socket | OSError]
) -> None:
    assert nats_info(f"nats://127.0.0.1:{closed_port}") is None
    assert nats_info(f"127.0.0.1:{closed_port}") is None  # no scheme
    assert [type(c) for c in connects] == [ConnectionRefusedError] * 2


def test_probes_of_a_silent_server_give_up_after_their_timeout(
    bound_socket: socket.socket, connects: list[socket.socket | OSError]
) -> None:
    # a listener that accepts (in the kernel backlog) but never answers: no HTTP reply, no INFO line
    port = bound_socket.getsockname()[1]
    t0 = time.monotonic()
    assert etcd_version(f"http://127.0.0.1:{port}", timeout=0.2) is None
    assert nats_info(f"nats://127.0.0.1:{port}", timeout=0.2) is None
    assert time.monotonic() - t0 >= 2 * 0.2 * 0.9  # each waited for an answer (a lower bound only)
    # Each connected once, and waited with the timeout it was given (not the default, not forever).
    assert [c.gettimeout() if isinstance(c, socket.socket) else c for c in connects] == [0.2, 0.2]


# ---- plans --------------------------------------------------------------------------------------------


def test_plan_etcd_with_an_unreachable_url_is_a_startup_error(closed_port: int, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    with pytest.raises(StartupError) as e:
        plan_etcd(url, tmp_path)
    assert e.value.exit_code == 3
    assert url in e.value.message
    assert e.value.hint
    assert list(tmp_path.iterdir()) == []  # nothing was prepared for a server that will not be used


def test_plan_nats_with_an_unreachable_url_is_a_startup_error(closed_port: int, tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{closed_port}"
    with pytest.raises(StartupError) as e:
        plan_nats(url, tmp_path)
    assert e.value.exit_code == 3
    assert url in e.value.message
    assert e.value.hint


def test_plan_etcd_spawn_describes_a_private_loopback_server(tmp_path: Path) -> None:
    plan = plan_etcd("spawn", tmp_path)
    assert isinstance(plan, ServerPlan)
    assert plan.name == "etcd"
    assert plan.spawn is True
    binary = Path(plan.argv[0])
    assert binary.is_file() and os.access(binary, os.X_OK)
    assert plan.url.startswith("http://127.0.0.1:")
    port = int(plan.url.rsplit(":", 1)[1])
    assert 0 < port < 65536
    # the client URL it listens on is the one it advertises and the one we will connect to
    argv = plan.argv
    assert argv[argv.index("--listen-client-urls") + 1] == plan.url
    assert argv[argv.index("--advertise-client-urls") + 1] == plan.url
    # its data lives in a fresh folder under the work dir
    assert plan.data_dir is not None
    data_dir = Path(plan.data_dir)
    assert data_dir.is_dir() and data_dir.parent == tmp_path
    assert argv[argv.index("--data-dir") + 1] == plan.data_dir


def test_plan_nats_spawn_describes_a_private_loopback_server_with_jetstream(tmp_path: Path) -> None:
    plan = plan_nats("spawn", tmp_path)
    assert plan.name == "nats"
    assert plan.spawn is True
    binary = Path(plan.argv[0])
    assert binary.is_file() and os.access(binary, os.X_OK)
    assert plan.url.startswith("nats://127.0.0.1:")
    port = plan.url.rsplit(":", 1)[1]
    assert plan.argv[plan.argv.index("-p") + 1] == port
    assert plan.argv[plan.argv.index("-a") + 1] == "127.0.0.1"
    assert "-js" in plan.argv
    assert plan.data_dir is not None and Path(plan.data_dir).parent == tmp_path


def test_two_spawn_plans_get_separate_data_dirs(tmp_path: Path) -> None:
    a, b = plan_etcd("spawn", tmp_path), plan_etcd("spawn", tmp_path)
    assert a.data_dir != b.data_dir


def test_an_existing_server_plan_spawns_nothing() -> None:
    assert ServerPlan("etcd", "http://h:2379").spawn is False


# ---- binaries -----------------------------------------------------------------------------------------


def test_find_etcd_finds_the_binary_in_the_venv() -> None:
    path = find_etcd()
    assert path is not None
    assert path.is_file() and os.access(path, os.X_OK)
    assert path.name == "etcd"
    assert in_venv(path), path


def test_find_nats_server_finds_the_binary_in_the_venv() -> None:
    path = find_nats_server()
    assert path is not None
    assert path.is_file() and os.access(path, os.X_OK)
    assert path.name == "nats-server"
    assert in_venv(path), path


def test_listen_port_is_free_and_below_the_ephemeral_range() -> None:
    """Not a port the kernel may hand an outgoing connection before the server binds it."""
    from dynamo_cli.transport.ports import _ephemeral_range, listen_port

    low, _ = _ephemeral_range()
    for _ in range(20):
        port = listen_port()
        assert port_is_free("127.0.0.1", port)
        if low > 20000:
            assert 10000 <= port < low
