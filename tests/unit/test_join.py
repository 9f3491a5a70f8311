"""Joining from another machine: the join URL, and credentials kept out of what people see."""

from __future__ import annotations

import pytest

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.deployment.join import endpoints, join_url
from dynamo_cli.deployment.launcher import _spawned
from dynamo_cli.errors import UsageError
from dynamo_cli.transport.etcd_gateway import etcd_credentials, parse_etcd_endpoint
from dynamo_cli.transport.ports import without_secret


def test_a_join_url_carries_both_endpoints_with_their_credentials() -> None:
    url = join_url("10.1.2.3", 2379, 4222, "s3cr-t_x", "prod")
    assert url == "dynamo://s3cr-t_x@10.1.2.3:2379/prod?nats=4222"
    etcd, nats, namespace = endpoints(url)
    assert (etcd, nats, namespace) == (
        "http://root:s3cr-t_x@10.1.2.3:2379",
        "nats://s3cr-t_x@10.1.2.3:4222",
        "prod",
    )
    assert etcd_credentials(etcd) == ("root", "s3cr-t_x")
    assert parse_etcd_endpoint(etcd) == ("10.1.2.3", 2379)


def test_an_ipv6_head_is_bracketed() -> None:
    etcd, nats, _ = endpoints(join_url("fd00::1", 2379, 4222, "k", "dynamo"))
    assert etcd == "http://root:k@[fd00::1]:2379" and nats == "nats://k@[fd00::1]:4222"
    assert parse_etcd_endpoint(etcd) == ("fd00::1", 2379)


@pytest.mark.parametrize(
    "url",
    [
        "http://k@h:1/ns?nats=2",
        "dynamo://k@h/ns?nats=2",
        "dynamo://k@h:1/ns",
        "dynamo://k@h:1/?nats=2",
        "nonsense",
    ],
)
def test_a_malformed_join_url_is_a_usage_error(url: str) -> None:
    with pytest.raises(UsageError, match="not a join URL"):
        endpoints(url)


def test_credentials_never_show() -> None:
    assert without_secret("nats://tok@10.0.0.1:4222") == "nats://10.0.0.1:4222"
    assert without_secret("http://root:pw@h:2379/v3") == "http://h:2379/v3"
    assert without_secret("http://h:2379") == "http://h:2379"
    assert etcd_credentials("http://h:2379") is None


def test_listen_spawns_its_own_servers_and_refuses_named_ones() -> None:
    cfg = DynamoConfig()
    assert _spawned(cfg.infra.etcd, "etcd", None) == "auto"  # loopback: as before
    assert _spawned("auto", "etcd", "secret") == "spawn"  # never a server without our credentials
    with pytest.raises(UsageError, match=r"infra\.etcd names one to use"):
        _spawned("http://other:2379", "etcd", "secret")
