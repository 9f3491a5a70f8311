"""etcd and NATS: reachable (version, JetStream) or spawnable (binary found), as `dynamo run` will
decide; and the ports the profile needs are free."""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from dynamo_cli.deployment.servers import Choice, choose_etcd, choose_nats
from dynamo_cli.doctor.checks import Context, Result
from dynamo_cli.transport.ports import DEFAULT_ETCD, DEFAULT_NATS, without_secret

PROBE_S = 0.5  # per connection: a loopback server answers in microseconds
_ETCD_BUGGY = ("3.5.0", "3.5.1", "3.5.2")  # a known data-inconsistency bug


def binary_version(binary: Path) -> str:
    """'3.5.1' from `etcd --version`, '2.15.1' from `nats-server --version` ('?' if it does not say)."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=1.0, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(r"v?(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else "?"


def _report(choice: Choice, setting_key: str) -> Result:
    """`dynamo run`'s decision for one server (deployment.servers), as a check."""
    name = choice.name
    label = "etcd" if name == "etcd" else "NATS"
    url = without_secret(choice.url or "")
    if choice.failure is not None:
        return Result(name, "FAIL", choice.failure, choice.hint)
    if choice.binary is not None:
        spawned = "etcd" if name == "etcd" else "nats-server"
        detail = (
            f"{choice.why_spawn}spawns a private {spawned} {binary_version(choice.binary)} ({choice.binary})"
        )
        return Result(name, "PASS", detail)
    if name == "etcd" and choice.version in _ETCD_BUGGY:
        return Result(
            name,
            "WARN",
            f"etcd {choice.version} at {url} has a known data-inconsistency bug (3.5.0-3.5.2)",
            "upgrade it to 3.5.3 or later",
        )
    if choice.url in (DEFAULT_ETCD, DEFAULT_NATS):
        return Result(name, "PASS", f"{label} {choice.version} answers at {url}; `dynamo run` uses it")
    jetstream = ", JetStream on" if name == "nats" else ""
    login = ", credentials taken" if url != choice.url else ""
    return Result(name, "PASS", f"{label} {choice.version} at {url} ({setting_key}){jetstream}{login}")


def check_etcd(ctx: Context) -> Iterator[Result]:
    yield _report(choose_etcd(ctx.cfg.infra.etcd, timeout=PROBE_S), "infra.etcd")


def check_nats(ctx: Context) -> Iterator[Result]:
    yield _report(choose_nats(ctx.cfg.infra.nats, timeout=PROBE_S), "infra.nats")


def bind_error(host: str, port: int) -> OSError | None:
    """Why the frontend could not listen on host:port (bound as the frontend binds), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e
    return None


def port_owner(port: int, proc: Path = Path("/proc")) -> str | None:
    """'pid 1234 (python3)' for the process listening on ``port``, when this user may see it."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{f[9]}]")
    if not inodes:
        return None
    for pid_dir in proc.glob("[0-9]*"):
        try:
            for fd in (pid_dir / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    comm = (pid_dir / "comm").read_text().strip()
                    return f"pid {pid_dir.name} ({comm})"
        except OSError:
            continue
    return None


def check_ports(ctx: Context) -> Iterator[Result]:
    host, port = ctx.cfg.frontend.host, ctx.cfg.frontend.port
    if port == 0:
        yield Result("ports", "PASS", "frontend.port is 0: a free port is picked at start")
        return
    err = bind_error(host, port)
    if err is None:
        yield Result("ports", "PASS", f"frontend {host}:{port} is free")
    elif err.errno == errno.EADDRINUSE:
        owner = port_owner(port)
        yield Result(
            "ports",
            "FAIL",
            f"frontend port {port} is in use" + (f" by {owner}" if owner else ""),
            f"pass --port N (or --set frontend.port=N), or stop the process using {port}",
        )
    elif err.errno == errno.EACCES:
        yield Result(
            "ports",
            "FAIL",
            f"port {port} needs privileges to listen on",
            "pick a port above 1023 with --port",
        )
    else:
        yield Result(
            "ports",
            "FAIL",
            f"cannot listen on {host}:{port} ({err.strerror or err})",
            "set frontend.host to an address of this machine (127.0.0.1, 0.0.0.0)",
        )
