"""What every role process shares: connect, start, report ready, serve until asked to stop, close."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import socket
import threading
from typing import Any

from dynamo_cli import tracing
from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.engines.base import Engine
from dynamo_cli.errors import RequestError, StartupError, UsageError
from dynamo_cli.lifecycle import LEASE_LOST_EXIT, die_with_parent, install_signal_handlers, report_ready
from dynamo_cli.transport.discovery import EtcdDiscovery
from dynamo_cli.transport.messaging import NatsRequestPlane
from dynamo_cli.transport.ports import DEFAULT_ETCD, DEFAULT_NATS, spans_machines

logger = logging.getLogger(__name__)


def infra_url(setting: str, default: str, what: str) -> str:
    """A role uses servers; it never spawns them (the launcher does)."""
    if setting == "auto":
        return default
    if setting == "spawn":
        raise UsageError(
            f"a role started by hand cannot spawn {what}",
            hint=f"pass --set infra.{what}=URL of the server the deployment uses",
        )
    return setting


class Role(abc.ABC):
    name: str
    # A stateless role (frontend, router) whose lease expired takes a new one and registers again; any
    # other role exits (it is restarted).
    reregister: bool = False

    def __init__(self, cfg: DynamoConfig):
        self.cfg = cfg
        # In a deployment that spans machines, names carry their host: two machines' logs never collide.
        self.at_host = "" if not spans_machines(cfg.infra.nats) else f"@{socket.gethostname()}"
        self.plane: NatsRequestPlane | None = None
        self.discovery: EtcdDiscovery | None = None
        # A role sets this when it can no longer work (e.g. its engine died): the process then exits 1.
        self.failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.tracer = tracing.DISABLED  # this role's own, from connect() on, when tracing is on

    @property
    def kind(self) -> str:
        """The role without its index and host (``worker`` for ``worker-1@host``): its service.name."""
        base = self.name.partition("@")[0]
        head, sep, index = base.rpartition("-")
        return head if sep and index.isdigit() else base

    async def connect(self, *, discovery: bool = True) -> None:
        """NATS, and etcd unless ``discovery`` is off (the etcd client runs gRPC threads, which a process
        that forks must not have: the launcher)."""
        self.tracer = tracing.tracer(self.kind)
        nats_url = infra_url(self.cfg.infra.nats, DEFAULT_NATS, "nats")
        try:
            self.plane = await NatsRequestPlane.connect(nats_url, name=self.name)
        except RequestError as e:
            raise StartupError(str(e), hint="is the NATS server running? (dynamo doctor checks)") from e
        if not discovery:
            return
        etcd_url = infra_url(self.cfg.infra.etcd, DEFAULT_ETCD, "etcd")
        self.discovery = await EtcdDiscovery.connect(
            etcd_url, self.cfg.namespace, ttl=self.cfg.infra.lease_ttl_s, reregister=self.reregister
        )

    async def fail_when_dead(self, engine: Engine) -> None:
        """Mark the role failed (the process exits 1 and is restarted) if its engine dies."""
        reason = await engine.wait_dead()
        logger.error("%s", reason)
        if not self.failed.done():
            self.failed.set_result(reason)

    @abc.abstractmethod
    async def start(self) -> dict[str, Any]:
        """Connect and start serving; return what the launcher should know (e.g. a URL)."""

    @abc.abstractmethod
    async def drain(self) -> None:
        """Stop taking new work and finish what is in flight."""

    async def close(self) -> None:
        if self.discovery is not None:
            await self.discovery.close()
        if self.plane is not None:
            await self.plane.close()


CLOSE_MARGIN_S = 3.0  # of a role's stop timeout, kept for closing after the drain


async def serve_role(role: Role, stop_timeout: float) -> int:
    """The role process's whole life. Returns its exit code."""
    die_with_parent()
    shutdown = install_signal_handlers()
    tracing.setup(role.cfg.tracing, role.kind)
    try:
        info = await role.start()
    except BaseException:
        await asyncio.wait_for(role.close(), stop_timeout)
        await _flush_traces(role.kind)
        raise
    report_ready(info)
    logger.info("%s ready %s", role.name, info or "")
    stop: asyncio.Future[Any] = asyncio.ensure_future(shutdown.requested.wait())
    lost: asyncio.Future[Any] | None = (
        asyncio.ensure_future(role.discovery.lease_lost.wait()) if role.discovery else None
    )
    waiters: list[asyncio.Future[Any]] = [stop, role.failed] + ([lost] if lost else [])
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if role.failed.done():
        logger.error("%s failed: %s", role.name, role.failed.result())
        code = 1
    elif lost is not None and lost.done():
        logger.error("%s lost its discovery lease; exiting so it can be restarted", role.name)
        code = LEASE_LOST_EXIT
    for w in (stop, lost):
        if w is not None:
            w.cancel()
    # The launcher kills a role stop_timeout after asking it to stop: the drain ends earlier, so that
    # closing can still hand what is left back (a worker's unfinished requests migrate).
    drain_s = stop_timeout - min(CLOSE_MARGIN_S, stop_timeout / 4)
    try:
        await asyncio.wait_for(role.drain(), drain_s)
    except asyncio.TimeoutError:
        logger.warning("%s: in-flight work did not finish in %g s", role.name, drain_s)
    try:
        await asyncio.wait_for(role.close(), 5)
    except asyncio.TimeoutError:
        logger.warning("%s: close timed out", role.name)
    await _flush_traces(role.kind)
    return code


async def _flush_traces(kind: str) -> None:
    """Send the spans still buffered (tracing on). In a daemon thread, as the exporter blocks (retrying
    an unreachable collector for seconds): the process does not wait for it past 5 s."""
    if not tracing.tracer(kind).enabled:
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finished() -> None:
        if not done.done():
            done.set_result(None)

    def flush() -> None:
        try:
            tracing.shutdown(kind)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(finished)

    threading.Thread(target=flush, name="trace-flush", daemon=True).start()
    try:
        await asyncio.wait_for(done, 5)
    except asyncio.TimeoutError:
        logger.warning("tracing: spans not sent in 5 s were dropped")
