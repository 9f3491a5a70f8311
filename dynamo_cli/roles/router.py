"""The router role: frontends ask it which worker takes a request.

The policy is a library (dynamo_cli.routing); this role only keeps the worker set current from
discovery and answers route requests on the request plane.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import msgpack

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.errors import RemoteError
from dynamo_cli.roles.base import Role
from dynamo_cli.routing.policies import NoWorkersError, make_policy
from dynamo_cli.runtime import protocol
from dynamo_cli.runtime.messaging import Endpoint, RequestContext
from dynamo_cli.runtime.workers import InstanceSet

logger = logging.getLogger(__name__)


class RouterRole(Role):
    def __init__(self, cfg: DynamoConfig, index: int = 0):
        super().__init__(cfg)
        self.name = f"router-{index}"
        self.workers = InstanceSet()
        self.policy = make_policy(cfg.router.mode, cfg.router.seed)
        self.endpoint: Endpoint | None = None

    async def start(self) -> dict[str, Any]:
        await self.connect()
        assert self.plane is not None and self.discovery is not None
        self.workers.reset(await self.discovery.watch(protocol.WORKER, self.workers.on_event))
        iid = self.discovery.instance_id
        subject = protocol.endpoint_subject(self.cfg.namespace, protocol.ROUTER, "route", iid)
        self.endpoint = await self.plane.serve(subject, self._route)
        await self.discovery.register(
            protocol.ROUTER, {"subject": subject, "mode": self.cfg.router.mode, "pid": os.getpid()}
        )
        logger.info("routing with policy %s; %d worker(s) known", self.cfg.router.mode, len(self.workers))
        return {"instance": f"{iid:x}"}

    async def _route(self, data: bytes, ctx: RequestContext) -> AsyncIterator[bytes]:
        req = protocol.decode_route(data)
        try:
            choice = self.policy.choose(self.workers.ids(req["model"]), req.get("exclude") or ())
        except NoWorkersError as e:
            raise RemoteError(str(e), "no_workers") from e
        inst = self.workers.get(choice)
        assert inst is not None
        yield msgpack.packb((choice, inst.data["subject"]))

    async def drain(self) -> None:
        if self.discovery is not None:
            await self.discovery.deregister(protocol.ROUTER)
        if self.endpoint is not None:
            await self.endpoint.stop_accepting()
            await self.endpoint.drain(2.0)
