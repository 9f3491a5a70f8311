"""Doctor's checks that probe the machine: ports, sockets, etcd/NATS endpoints, ucx_info."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynamo_cli.config.loader import load_config
from dynamo_cli.doctor import CHECKS, diagnose, rdma, services
from dynamo_cli.doctor.checks import STATUSES
from dynamo_cli.transport.ports import free_port
from tests.unit.test_doctor import H100, FakeNvml, make_ctx, one, run_cli

pytestmark = pytest.mark.integration


def test_ucx_transports_are_parsed_from_ucx_info(tmp_path: Path) -> None:
    script = tmp_path / "ucx_info"
    script.write_text(
        "#!/bin/sh\necho '# Library version: 1.18.0'\n"
        "printf '#      Transport: tcp\\n#         Device: lo\\n#      Transport: rc_mlx5\\n'\n"
    )
    script.chmod(0o755)
    assert rdma.ucx_info_transports(str(script)) == ("1.18.0", ["tcp", "rc_mlx5"])


@pytest.fixture
def fake_nats() -> Iterator[Any]:
    """fake_nats(jetstream) -> url of a loopback server that sends NATS's INFO line to each client."""
    servers: list[socket.socket] = []

    def start(jetstream: bool) -> str:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        servers.append(srv)
        info = json.dumps({"version": "2.15.1", "jetstream": jetstream}).encode()

        def serve() -> None:
            try:
                while True:
                    conn, _ = srv.accept()
                    with conn:
                        conn.sendall(b"INFO " + info + b"\r\n")
            except OSError:
                return

        threading.Thread(target=serve, daemon=True).start()
        return f"nats://127.0.0.1:{srv.getsockname()[1]}"

    yield start
    for s in servers:
        s.close()


def test_nats_endpoint_needs_jetstream(fake_nats: Any) -> None:
    r = one(services.check_nats(make_ctx("agg", f"infra.nats={fake_nats(False)}")))
    assert r.status == "FAIL" and "without JetStream" in r.detail and r.fix and "-js" in r.fix
    r = one(services.check_nats(make_ctx("agg", f"infra.nats={fake_nats(True)}")))
    assert r.status == "PASS" and "NATS 2.15.1" in r.detail and "JetStream on" in r.detail


def test_unreachable_endpoints_fail_with_a_fix() -> None:
    port = free_port()
    r = one(services.check_etcd(make_ctx("agg", f"infra.etcd=http://127.0.0.1:{port}")))
    assert r.status == "FAIL" and "does not answer" in r.detail and r.fix and "infra.etcd: auto" in r.fix
    r = one(services.check_nats(make_ctx("agg", f"infra.nats=nats://127.0.0.1:{port}")))
    assert r.status == "FAIL"


def test_a_busy_frontend_port_fails_and_names_its_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = one(services.check_ports(make_ctx("agg", f"frontend.port={port}")))
    assert r.status == "FAIL" and f"port {port} is in use" in r.detail
    assert f"pid {__import__('os').getpid()}" in r.detail
    assert r.fix and "--port" in r.fix
    r = one(services.check_ports(make_ctx("agg", f"frontend.port={port}")))
    assert r.status == "PASS"  # released


def test_a_frontend_host_that_is_not_this_machine_fails() -> None:
    r = one(services.check_ports(make_ctx("agg", "frontend.host=192.0.2.1", f"frontend.port={free_port()}")))
    assert r.status == "FAIL" and "cannot listen on 192.0.2.1" in r.detail


def test_every_check_answers_with_fakes_and_the_json_shape(tmp_path: Path) -> None:
    report = diagnose(
        load_config("disagg", sets=["frontend.port=0", "engine=vllm"], environ={}),
        nvml=FakeNvml([H100, H100]),
        infiniband=tmp_path,
        environ={},
        torch_probe=lambda timeout: {"available": True, "count": 2},
    )
    data = json.loads(json.dumps(report.as_dict()))
    assert set(data) == {"ok", "checks", "elapsed_s"}
    assert data["ok"] == all(c["status"] != "FAIL" for c in data["checks"])
    names = [c["name"] for c in data["checks"]]
    assert {c.name for c in CHECKS} - {"profile"} <= set(names)
    for c in data["checks"]:
        assert set(c) == {"name", "status", "detail", "fix"} and c["status"] in STATUSES
        assert c["detail"] and "crashed" not in c["detail"], c
        assert c["status"] in ("PASS", "INFO") or c["fix"], c


def test_doctor_on_this_machine_exits_0_and_nothing_crashes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["doctor", "--json", "--port", "0"], capsys)  # the default profile: agg
    data = json.loads(out)
    assert code == 0, [c for c in data["checks"] if c["status"] == "FAIL"]
    assert data["ok"] is True and data["profile"] == "agg"
    by_name = {c["name"]: c for c in data["checks"]}
    has_gpu = shutil.which("nvidia-smi") is not None
    assert by_name["gpus"]["status"] == ("PASS" if has_gpu else "WARN")
    assert not any("crashed" in c["detail"] for c in data["checks"])


def test_doctor_exits_1_on_a_busy_port_and_shows_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        code, out, _ = run_cli(
            ["doctor", "agg", "--engine", "mocker", "--set", f"frontend.port={port}"], capsys
        )
    assert code == 1
    line = next(line for line in out.splitlines() if " ports " in line)
    assert line.split()[0] == "FAIL"
    assert "fix: pass --port N" in out
    assert "cannot run agg" in out
