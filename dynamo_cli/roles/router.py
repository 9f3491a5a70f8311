"""The router role: frontends ask it which worker takes a request.

The decisions are a library (dynamo_cli.routing); the live view is `RoutingService`; this role only
serves it on the request plane and exposes its metrics.
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
from dynamo_cli.routing.policies import NoWorkersError
from dynamo_cli.routing.service import RoutingService
from dynamo_cli.transport import protocol
from dynamo_cli.transport.messaging import Endpoint, RequestContext

logger = logging.getLogger(__name__)


class RouterRole(Role):
    reregister = True

    def __init__(self, cfg: DynamoConfig, index: int = 0):
        super().__init__(cfg)
        self.name = f"router-{index}{self.at_host}"
        self.service: RoutingService | None = None
        self.endpoint: Endpoint | None = None
        self._metrics_server: Any = None

    async def start(self) -> dict[str, Any]:
        await self.connect()
        assert self.plane is not None and self.discovery is not None
        iid = self.discovery.instance_id
        self.service = RoutingService(self.cfg, self.plane, self.discovery, origin=iid)
        await self.service.start()
        subject = protocol.endpoint_subject(self.cfg.namespace, protocol.ROUTER, "route", iid)
        self.endpoint = await self.plane.serve(subject, self._route)
        metrics_url = self._serve_metrics()
        await self.discovery.register(
            protocol.ROUTER,
            {"subject": subject, "mode": self.cfg.router.mode, "pid": os.getpid(), "metrics": metrics_url},
        )
        logger.info(
            "routing with mode %s; %d worker(s) known; metrics at %s",
            self.cfg.router.mode, len(self.service.workers), metrics_url,
        )  # fmt: skip
        return {"instance": f"{iid:x}", "metrics": metrics_url}

    def _serve_metrics(self) -> str:
        from prometheus_client import start_http_server

        assert self.service is not None
        host = self.cfg.frontend.host
        server, _thread = start_http_server(0, addr=host, registry=self.service.metrics.registry)
        self._metrics_server = server
        port = server.server_address[1]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/metrics"

    async def _route(self, data: bytes, ctx: RequestContext) -> AsyncIterator[bytes]:
        assert self.service is not None
        req = protocol.decode_route(data)
        rid = req.get("rid") or ""
        span = None
        if self.tracer.enabled and req.get("tp"):
            span = self.tracer.start("router.route", rid, parent=req["tp"])
        try:
            worker, subject, overlap = self.service.route(
                req["model"], req["n"], req.get("h") or [], req.get("exclude") or [], rid
            )
        except NoWorkersError as e:
            if span is not None:
                span.set_attribute("error.type", "no_workers")
                span.end()
            raise RemoteError(str(e), "no_workers") from e
        if span is not None:
            span.set_attributes({"dynamo.worker_id": f"{worker:x}", "dynamo.overlap_blocks": overlap})
            span.end()
        yield msgpack.packb((worker, subject, overlap))

    async def drain(self) -> None:
        if self.discovery is not None:
            await self.discovery.deregister(protocol.ROUTER)
        if self.endpoint is not None:
            await self.endpoint.stop_accepting()
            await self.endpoint.drain(2.0)

    async def close(self) -> None:
        if self.service is not None:
            await self.service.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        await super().close()
