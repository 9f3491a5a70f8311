"""RDMA: InfiniBand/RoCE devices and their ports (from sysfs), and the UCX transports NIXL can use."""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dynamo_cli.doctor.checks import Context, Result, Status
from dynamo_cli.doctor.system import nixl_needed

UCX_INFO_S = 1.5
_RDMA_TLS = ("rc", "ud", "dc")  # UCX transport names over verbs start with these: rc_mlx5, ud_verbs, ...


@dataclass(frozen=True)
class Port:
    device: str
    port: str
    state: str  # ACTIVE, DOWN, INIT, ...
    link_layer: str  # InfiniBand or Ethernet (RoCE)
    rate: str

    def __str__(self) -> str:
        kind = "RoCE" if self.link_layer == "Ethernet" else self.link_layer or "?"
        rate = f", {self.rate}" if self.rate else ""
        return f"{self.device}:{self.port} {self.state} ({kind}{rate})"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def rdma_ports(root: Path) -> list[Port]:
    """Every port of every device under /sys/class/infiniband (or a fake tree laid out the same)."""
    out: list[Port] = []
    if not root.is_dir():
        return out
    for dev in sorted(root.iterdir()):
        for port in sorted((dev / "ports").glob("*")):
            state = _read(port / "state")  # "4: ACTIVE"
            out.append(
                Port(
                    dev.name,
                    port.name,
                    state.split(":", 1)[-1].strip() or "?",
                    _read(port / "link_layer"),
                    _read(port / "rate"),
                )
            )
    return out


def ports(ctx: Context) -> list[Port]:
    found: list[Port] = ctx.once("rdma", lambda: rdma_ports(ctx.infiniband))
    return found


def check_rdma(ctx: Context) -> Iterator[Result]:
    found = ports(ctx)
    moves_kv = nixl_needed(ctx) != "no"
    if not found:
        yield Result(
            "rdma",
            "INFO",
            f"no InfiniBand/RoCE device under {ctx.infiniband}"
            + ("; on one machine KV moves through shared memory" if moves_kv else ""),
            "across machines, disaggregated KV transfer needs RDMA to be fast" if moves_kv else None,
        )
        return
    active = [p for p in found if p.state == "ACTIVE"]
    listing = ", ".join(map(str, found))
    if active:
        yield Result("rdma", "PASS", listing)
    else:
        yield Result(
            "rdma",
            "WARN" if moves_kv else "INFO",
            f"no RDMA port is ACTIVE: {listing}",
            "check the cables and the subnet manager (`ibstat`); RoCE needs the Ethernet link up",
        )


def ucx_info_transports(binary: str) -> tuple[str | None, list[str]] | None:
    """(UCX version, transports) from `ucx_info`, or None if it fails or is too slow."""
    try:
        out = subprocess.run(
            [binary, "-v", "-d"], capture_output=True, text=True, timeout=UCX_INFO_S, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    tls = list(dict.fromkeys(re.findall(r"^#\s*Transport:\s*(\S+)", out, re.M)))
    m = re.search(r"version[:=]?\s*([\d.]+)", out, re.I)
    return (m.group(1) if m else None), tls


def bundled_ucx_modules() -> list[str]:
    """The UCX transport families inside NIXL's wheel: cma, cuda, ib... (tcp and shared memory are built
    into UCX itself)."""
    mods: set[str] = set()
    for dist in ("nixl-cu12", "nixl-cu13", "nixl"):
        try:
            site = Path(str(md.distribution(dist).locate_file("")))
        except md.PackageNotFoundError:
            continue
        for lib in site.glob("nixl*.libs/ucx/libuct_*.so*"):
            mods.add(lib.name.removeprefix("libuct_").split(".so")[0].split("_")[0])  # ib_mlx5 -> ib
    return sorted(mods)


def check_ucx(ctx: Context) -> Iterator[Result]:
    rdma_up = any(p.state == "ACTIVE" for p in ports(ctx))
    tls_env = ctx.environ.get("UCX_TLS")
    env = f"; UCX_TLS={tls_env}" if tls_env else ""
    binary = ctx.which("ucx_info")
    probed = ucx_info_transports(binary) if binary else None
    if probed is not None:
        version, tls = probed
        detail = f"UCX {version or '?'} transports: {', '.join(tls) or 'none'}{env}"
        if rdma_up and not any(t.startswith(_RDMA_TLS) for t in tls):
            yield Result(
                "ucx",
                "WARN",
                f"RDMA ports are up but UCX has no RDMA transport ({detail})",
                "install rdma-core (libibverbs, libmlx5) so UCX can load its verbs transports",
            )
        else:
            yield Result("ucx", "PASS", detail)
        return
    mods = bundled_ucx_modules()
    if mods:
        detail = f"NIXL bundles UCX with tcp, shared memory, {', '.join(mods)} (not probed{env})"
        if rdma_up and not any(m.startswith("ib") for m in mods):
            yield Result(
                "ucx", "WARN", detail, "this NIXL build has no InfiniBand transport: RDMA goes unused"
            )
        else:
            yield Result("ucx", "INFO", detail)
        return
    status: Status = "WARN" if rdma_up and nixl_needed(ctx) != "no" else "INFO"
    yield Result(
        "ucx", status, f"no UCX found (no ucx_info on PATH, no NIXL){env}", "scripts/install.sh installs NIXL"
    )
