"""Ports: where etcd and NATS are looked for first, and free ports for servers we start."""

from __future__ import annotations

import contextlib
import random
import socket
from urllib.parse import urlsplit

ETCD_PORT = 2379  # etcd's and NATS's own defaults
NATS_PORT = 4222
DEFAULT_ETCD = f"http://127.0.0.1:{ETCD_PORT}"  # where `auto` looks first
DEFAULT_NATS = f"nats://127.0.0.1:{NATS_PORT}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def listen_port(host: str = "127.0.0.1") -> int:
    """A free port for a server that something else binds later (vLLM's NIXL side channel).

    From below the ephemeral range: a port bind(0) hands out is also what the kernel gives the next
    outgoing connection, and a connection to etcd or NATS took one before vLLM bound it (vLLM's
    engine then waited forever for its dead listener thread)."""
    low, _ = _ephemeral_range()
    if low > 20000:
        rng = random.Random()
        for _ in range(64):
            port = rng.randrange(10000, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            return port
    return free_port(host)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def without_secret(url: str) -> str:
    """``url`` without the user, password or token it may carry: for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    return f"{scheme}://{rest.split('@', 1)[1]}"


LOOPBACKS = ("127.0.0.1", "localhost", "::1")


def advertised_host(nats_url: str, frontend_host: str) -> str:
    """The address this machine's servers (KV side channels) bind and advertise to the deployment's
    other processes: loopback while nothing of the deployment faces another machine (frontend on
    loopback, NATS local); otherwise the address this machine reaches the NATS server from (or its
    hostname's address)."""
    remote_nats = spans_machines(nats_url)
    if frontend_host in LOOPBACKS and not remote_nats:
        return "127.0.0.1"
    target = urlsplit(nats_url).hostname if remote_nats else "10.255.255.255"
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((target, 9))  # UDP: picks the route, sends nothing
        return str(s.getsockname()[0])
    with contextlib.suppress(OSError):
        return socket.gethostbyname(socket.gethostname())
    return "127.0.0.1"


def spans_machines(nats_url: str) -> bool:
    """Whether a deployment reaches its NATS beyond loopback (``auto`` means the local default)."""
    host = urlsplit(nats_url).hostname if "://" in nats_url else None
    return host is not None and host not in LOOPBACKS
