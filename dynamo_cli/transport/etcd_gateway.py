"""etcd's JSON gateway (plain HTTP): a few calls for processes that hold no gRPC client, logged in when
the endpoint carries credentials (``http://user:password@host:port``)."""

from __future__ import annotations

import base64
import json
import urllib.request
from typing import Any
from urllib.parse import unquote, urlparse

from dynamo_cli.transport.ports import ETCD_PORT


def parse_etcd_endpoint(endpoint: str) -> tuple[str, int]:
    url = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    return url.hostname or "127.0.0.1", url.port or ETCD_PORT


def etcd_credentials(endpoint: str) -> tuple[str, str] | None:
    """The user and password an endpoint carries, if any."""
    url = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    if url.username is None:
        return None
    return unquote(url.username), unquote(url.password or "")


def http_base(endpoint: str) -> str:
    host, port = parse_etcd_endpoint(endpoint)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def call(endpoint: str, path: str, body: dict[str, Any], timeout: float, token: str | None = None) -> Any:
    """POST ``body`` to ``/v3/<path>``; the decoded answer. OSError when etcd refuses or is away."""
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = token
    req = urllib.request.Request(f"{http_base(endpoint)}/v3/{path}", json.dumps(body).encode(), headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via HTTP_PROXY
    with opener.open(req, timeout=timeout) as reply:
        return json.loads(reply.read())


def token(endpoint: str, timeout: float) -> str | None:
    """An auth token when the endpoint carries credentials, else None."""
    creds = etcd_credentials(endpoint)
    if creds is None:
        return None
    return str(
        call(endpoint, "auth/authenticate", {"name": creds[0], "password": creds[1]}, timeout)["token"]
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def put(endpoint: str, key: str, value: bytes, timeout: float = 5.0) -> None:
    call(
        endpoint,
        "kv/put",
        {"key": _b64(key.encode()), "value": _b64(value)},
        timeout,
        token(endpoint, timeout),
    )


def get(endpoint: str, key: str, timeout: float = 5.0) -> bytes | None:
    found = call(endpoint, "kv/range", {"key": _b64(key.encode())}, timeout, token(endpoint, timeout))
    kvs = found.get("kvs") or []
    return base64.b64decode(kvs[0].get("value", "")) if kvs else None
