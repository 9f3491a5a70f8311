"""etcd and NATS behind the secret `dynamo run --listen` generates, on loopback: clients with it get in,
clients without it or with another do not, and what is shown never carries it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamo_cli.deployment.servers import (
    choose_etcd,
    choose_nats,
    enable_etcd_auth,
    etcd_version,
    nats_info,
    plan_etcd,
    plan_nats,
)
from dynamo_cli.errors import RequestError
from dynamo_cli.transport import etcd_gateway
from dynamo_cli.transport.discovery import EtcdDiscovery
from dynamo_cli.transport.messaging import connect_nats
from tests.conftest import _start, _stop

pytestmark = pytest.mark.integration
SECRET = "test-secret_123"


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(etcd endpoint, NATS URL), both with the credentials."""
    d = tmp_path_factory.mktemp("locked")
    etcd = plan_etcd("spawn", d, "127.0.0.1", SECRET)
    nats = plan_nats("spawn", d, "127.0.0.1", SECRET)
    procs = [
        _start(etcd, lambda: etcd_version(etcd.url, 0.2) is not None, d / "etcd.log"),
        _start(nats, lambda: nats_info(nats.url, 0.2) is not None, d / "nats.log"),
    ]
    try:
        enable_etcd_auth(etcd.url, SECRET)
        assert SECRET not in etcd.url + nats.url and SECRET in etcd.client_url and SECRET in nats.client_url
        yield etcd.client_url, nats.client_url
    finally:
        for p in procs:
            _stop(p)


def _other(url: str) -> str:
    return url.replace(SECRET, "guess")


def test_etcd_takes_the_secret_and_refuses_anything_else(locked: tuple[str, str]) -> None:
    etcd, _ = locked
    etcd_gateway.put(etcd, "k", b"v")
    assert etcd_gateway.get(etcd, "k") == b"v"
    bare = etcd.replace(f"root:{SECRET}@", "")
    for client in (bare, _other(etcd)):
        with pytest.raises(OSError):
            etcd_gateway.get(client, "k")
    assert choose_etcd(etcd).failure is None
    refused = choose_etcd(_other(etcd)).failure
    assert refused is not None and "refuses the credentials" in refused and "guess" not in refused


def test_discovery_keeps_its_lease_through_the_gateway_with_a_token(locked: tuple[str, str]) -> None:
    etcd, _ = locked

    async def scenario() -> int:
        d = await EtcdDiscovery.connect(etcd, "creds", ttl=2)
        try:
            await d.register("worker", {"x": 1})
            await asyncio.sleep(2.5)  # past the TTL: only refreshes keep it
            return len(await d.watch("worker", lambda _e: None))
        finally:
            await d.close()

    assert asyncio.run(scenario()) == 1


def test_nats_takes_the_token_and_refuses_anything_else(locked: tuple[str, str]) -> None:
    _, nats = locked

    async def connect(url: str) -> bool:
        try:
            nc = await connect_nats(url, name="test", timeout=2)
        except RequestError as e:
            assert "guess" not in str(e) and SECRET not in str(e)
            return False
        await nc.close()
        return True

    assert asyncio.run(connect(nats)) is True
    assert asyncio.run(connect(_other(nats))) is False
    assert choose_nats(nats).failure is None
    refused = choose_nats(_other(nats)).failure
    assert refused is not None and "refuses this client" in refused and "guess" not in refused


def test_a_plan_for_a_server_with_credentials_shows_none(locked: tuple[str, str], tmp_path: Path) -> None:
    etcd, nats = locked
    for plan in (plan_etcd(etcd, tmp_path), plan_nats(nats, tmp_path)):
        assert not plan.spawn and SECRET not in plan.url and SECRET in plan.client_url
