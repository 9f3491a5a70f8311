"""Joining a deployment from another machine.

`dynamo run --listen ADDR` spawns etcd and NATS on ADDR behind one generated secret, stores the
deployment's config in etcd, and prints a join URL:
``dynamo://SECRET@HOST:ETCD_PORT/NAMESPACE?nats=PORT``.
`dynamo role ROLE --join URL` on the other machine reads the config back from etcd and runs the role
with it. The URL is a credential: whoever has it can join (and read the config)."""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse

import yaml

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.errors import UsageError
from dynamo_cli.transport import etcd_gateway as gateway


def new_secret() -> str:
    return secrets.token_urlsafe(24)  # URL-safe: it goes into NATS and etcd URLs as it is


def config_key(namespace: str) -> str:
    return f"dyn/{namespace}/deployment/config"


def join_url(host: str, etcd_port: int, nats_port: int, secret: str, namespace: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"dynamo://{quote(secret, safe='')}@{shown}:{etcd_port}/{namespace}?nats={nats_port}"


def endpoints(url: str) -> tuple[str, str, str]:
    """(etcd endpoint, NATS URL, namespace), with the credentials, from a join URL."""
    u = urlparse(url)
    nats = parse_qs(u.query).get("nats", [""])[0]
    namespace = u.path.strip("/")
    if u.scheme != "dynamo" or not u.hostname or not u.port or not nats.isdigit() or not namespace:
        raise UsageError(
            f"'{url}' is not a join URL.",
            "Copy the whole dynamo://... URL that `dynamo run --listen` printed.",
        )
    secret = unquote(u.username or "")
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    etcd = f"http://root:{secret}@{host}:{u.port}" if secret else f"http://{host}:{u.port}"
    nats_url = f"nats://{secret}@{host}:{nats}" if secret else f"nats://{host}:{nats}"
    return etcd, nats_url, namespace


def publish_config(cfg: DynamoConfig) -> None:
    """Store ``cfg`` (its infra endpoints carry the credentials) where joining machines read it."""
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    gateway.put(cfg.infra.etcd, config_key(cfg.namespace), text.encode())


def fetch_config(url: str) -> str:
    """The YAML profile a deployment published, from its join URL."""
    etcd, _, namespace = endpoints(url)
    try:
        text = gateway.get(etcd, config_key(namespace))
    except OSError as e:
        raise UsageError(
            f"Cannot read the deployment's config from etcd at {etcd.rsplit('@', 1)[-1]} ({e}).",
            "Check that this machine reaches the head's --listen address and that the URL is complete.",
        ) from e
    if text is None:
        raise UsageError(
            f"No deployment '{namespace}' is published at that etcd.",
            "Is `dynamo run --listen` still running?",
        )
    return text.decode()


def load_joined(url: str, sets: list[str] | None, flags: dict[str, Any]) -> DynamoConfig:
    """The config of the deployment behind a join URL, with ``sets`` and ``flags`` on top."""
    from dynamo_cli.config.loader import load_config

    text = fetch_config(url)
    with tempfile.TemporaryDirectory(prefix="dynamo-join-") as tmp:
        path = Path(tmp) / "deployment.yaml"
        path.touch(mode=0o600)  # it holds the credentials
        path.write_text(text)
        return load_config(str(path), sets=sets, flags=flags)
