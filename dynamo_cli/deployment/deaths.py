"""Death notices: the launcher, parent of every role it started, says at once when one dies, so the
frontends move that worker's streams to others instead of waiting for the idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from dynamo_cli.deployment.supervisor import Child
from dynamo_cli.transport import protocol
from dynamo_cli.transport.messaging import NatsRequestPlane

logger = logging.getLogger(__name__)


class DeathNotices:
    """Publishes ``protocol.deaths_subject`` for each role that died; set as ``Supervisor.on_death``."""

    def __init__(self, namespace: str):
        self._subject = protocol.deaths_subject(namespace)
        self._host = socket.gethostname()  # what roles advertise as their host
        self._plane: NatsRequestPlane | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def connect(self, nats_url: str) -> None:
        self._plane = await NatsRequestPlane.connect(nats_url, name="dynamo-launcher")

    def __call__(self, child: Child, why: str) -> None:
        if self._plane is None or child.pid is None:
            return
        notice = protocol.encode_death(self._host, child.pid, child.spec.name, why)
        task = asyncio.create_task(self._publish(notice), name=f"death:{child.spec.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, notice: bytes) -> None:
        assert self._plane is not None
        try:
            await self._plane.publish(self._subject, notice)
            await self._plane.nc.flush()
        except Exception as e:  # the idle timeout still catches the streams; nothing else depends on it
            logger.warning("could not announce a death on NATS: %s", e)

    async def close(self) -> None:
        if self._plane is not None:
            with contextlib.suppress(Exception):
                await self._plane.close()
            self._plane = None
