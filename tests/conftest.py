"""Shared fixtures: real etcd and NATS on random loopback ports, stopped exactly as started."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dynamo_cli.deployment.servers import ServerPlan, etcd_version, nats_info, plan_etcd, plan_nats


def _start(plan: ServerPlan, ready: Callable[[], bool], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(plan.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 20
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{plan.name} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.02)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def infra_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="dynamo-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd_url(infra_dir: Path) -> Iterator[str]:
    plan = plan_etcd("spawn", infra_dir)
    proc = _start(plan, lambda: etcd_version(plan.url, 0.2) is not None, infra_dir / "etcd.log")
    yield plan.url
    _stop(proc)


@pytest.fixture(scope="session")
def nats_url(infra_dir: Path) -> Iterator[str]:
    plan = plan_nats("spawn", infra_dir)
    proc = _start(plan, lambda: nats_info(plan.url, 0.2) is not None, infra_dir / "nats.log")
    yield plan.url
    _stop(proc)


@pytest.fixture
def namespace() -> str:
    """A fresh namespace per test, so tests sharing etcd and NATS never see each other."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests use their own model cache unless DYNAMO_CACHE_DIR is set (CI shares one between runs)."""
    if os.environ.get("DYNAMO_CACHE_DIR"):
        yield
        return
    os.environ["DYNAMO_CACHE_DIR"] = str(tmp_path_factory.mktemp("dynamo-cache"))
    yield
    del os.environ["DYNAMO_CACHE_DIR"]
