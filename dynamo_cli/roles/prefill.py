"""The prefill role: the process shell of a prefill worker. It builds the engine, the transfer agent
(mocker) and the prefill queue's puller, serves them with ``disagg.prefill_side.PrefillServer`` (which
pulls the work, prefills it and hands the KV over), announces itself in discovery, drains and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.disagg.prefill_side import PrefillServer
from dynamo_cli.disagg.remote import PREFILL, encode_peer, open_transfer
from dynamo_cli.engines import create_engine
from dynamo_cli.engines.base import Engine
from dynamo_cli.models.resolve import ResolvedModel, read_model_info
from dynamo_cli.roles.base import Role
from dynamo_cli.transport import prefill_queue as pq

logger = logging.getLogger(__name__)


class PrefillRole(Role):
    def __init__(self, cfg: DynamoConfig, model: ResolvedModel, index: int = 0):
        super().__init__(cfg)
        self.name = f"prefill-{index}{self.at_host}"
        self.model = model
        self.index = index
        self.engine: Engine | None = None
        self.transfer: Any = None
        self.server: PrefillServer | None = None
        self._puller: pq.Puller | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> dict[str, Any]:
        info = read_model_info(self.model.path)
        self.engine = create_engine(self.cfg, info, self.model.path, instance_seed=1000 + self.index)
        await self.engine.start()
        await self.connect()
        assert self.plane is not None and self.discovery is not None
        iid = self.discovery.instance_id
        if not self.cfg.disagg.remote_prefill:
            logger.warning(
                "disagg.remote_prefill is off: decode workers prefill everything themselves and this "
                "prefill worker will get no work (set disagg.remote_prefill: true)"
            )
        queue = await pq.PrefillQueue.open(
            self.plane.nc, self.cfg.namespace, redelivery_s=self.cfg.disagg.redelivery_s
        )
        self._puller = await queue.puller()
        record: dict[str, Any] = {
            "model": self.model.name,
            "engine": self.cfg.engine,
            "block_size": self.engine.block_size,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        self.transfer = await open_transfer(self.cfg, f"{self.name.partition('@')[0]}-{iid:x}")
        if self.transfer is not None:
            record["transfer"] = encode_peer(self.transfer.metadata())
            record["transfer_backend"] = self.transfer.backend
        self.server = PrefillServer(
            self.cfg,
            self.plane,
            self.discovery,
            self.engine,
            self.transfer,
            self._puller,
            kv_bytes_per_token=info.kv_bytes_per_token,
        )
        record.update(await self.server.listen())
        # Announce first: a decode worker looks this worker's transfer metadata up as soon as it
        # hears of a prefill done here.
        await self.discovery.register(PREFILL, record)
        await self.server.start()
        self._tasks = [asyncio.create_task(self.fail_when_dead(self.engine), name="engine-health")]
        return {"instance": f"{iid:x}", "transfer": record.get("transfer_backend")}

    # ---- stopping -----------------------------------------------------------------------------------
    async def drain(self) -> None:
        if self.server is not None:
            self.server.stop_accepting()
        if self.discovery is not None:
            await self.discovery.deregister(PREFILL)
        if self.server is not None:
            await self.server.drain()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.close()
        if self._puller is not None:
            await self._puller.close()
        if self.transfer is not None:
            with contextlib.suppress(Exception):
                await self.transfer.close()
        if self.engine is not None:
            with contextlib.suppress(Exception):
                await self.engine.close()
        await super().close()
