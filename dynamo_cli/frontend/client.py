"""The frontend's path to workers: pick one (through a router role or embedded), send, stream back.

A request that could not start on a worker (it is gone, refused, or did not answer) is retried on
another one, as long as nothing has been sent to the HTTP client yet. A worker that dies mid-stream
ends that request with an error; later requests avoid it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import msgpack

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.engines import kv_block_size
from dynamo_cli.errors import NoRespondersError, RemoteError, RequestError, RequestTimeoutError
from dynamo_cli.kv.hashing import sequence_block_hashes
from dynamo_cli.routing.policies import NoWorkersError
from dynamo_cli.routing.service import RoutingService
from dynamo_cli.transport import protocol
from dynamo_cli.transport.messaging import RequestPlane
from dynamo_cli.transport.wire import EngineOutput, EngineRequest
from dynamo_cli.transport.workers import InstanceSet

logger = logging.getLogger(__name__)


class WorkerFailure(Exception):
    """A worker failed a request after it had started; the message says how."""


@dataclass
class Attempt:
    instance_id: int
    subject: str


class WorkerClient:
    def __init__(
        self,
        plane: RequestPlane,
        cfg: DynamoConfig,
        workers: InstanceSet,
        *,
        service: RoutingService | None = None,
        routers: InstanceSet | None = None,
    ):
        self.plane = plane
        self.cfg = cfg
        self.fcfg = cfg.frontend
        self._guessed_block_size = kv_block_size(cfg)  # until a worker advertises its own
        self.workers = workers
        self.service = service  # embedded router (router.replicas: 0)
        self.routers = routers
        self._router_rr = itertools.count()
        self._suspect_s = float(cfg.infra.lease_ttl_s)
        self._hashes = cfg.router.mode == "kv"
        self._tracks_load = cfg.router.mode in ("kv", "least-loaded")
        self._lifecycle = protocol.lifecycle_subject(cfg.namespace)
        self.on_retry: Callable[[], None] | None = None

    async def _route(
        self, model: str, request: EngineRequest, routing_id: str, hashes: list[int], exclude: list[int]
    ) -> Attempt:
        n = len(request.prompt_token_ids)
        avoid = exclude + self.workers.suspected()
        if self.service is not None:
            iid, subject, _ = self.service.route(model, n, hashes, avoid, routing_id)
            return Attempt(iid, subject)
        assert self.routers is not None
        router_ids = self.routers.ids()
        if not router_ids:
            raise NoWorkersError("no router is available (is the router role running?)")
        for k in range(len(router_ids)):
            rid = router_ids[(next(self._router_rr) + k) % len(router_ids)]
            router = self.routers.get(rid)
            if router is None:
                continue
            try:
                stream = await self.plane.request(
                    router.data["subject"],
                    protocol.encode_route(model, n, avoid, routing_id, hashes),
                    accept_timeout=self.fcfg.first_response_timeout_s,
                    idle_timeout=self.fcfg.first_response_timeout_s,
                )
                async for chunk in stream:
                    iid, subject, _overlap = msgpack.unpackb(chunk)
                    return Attempt(iid, subject)
            except RemoteError as e:
                if e.code == "no_workers":
                    raise NoWorkersError(str(e)) from e
                logger.warning("router %x failed (%s); trying another", rid, e)
            except RequestError as e:
                self.routers.suspect(rid, self._suspect_s)
                logger.warning("router %x unreachable (%s); trying another", rid, e)
        raise NoWorkersError("no router answered")

    def _block_size(self) -> int:
        """The workers' KV block size (they advertise it); the config's until one is known."""
        for iid in self.workers.ids():
            inst = self.workers.get(iid)
            if inst is not None and inst.data.get("block_size"):
                return int(inst.data["block_size"])
        return self._guessed_block_size

    async def _tell_routers(self, request_id: str, kind: int) -> None:
        if self._tracks_load:
            await self.plane.publish(self._lifecycle, msgpack.packb((request_id, kind)))

    async def generate(self, model: str, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        payload = protocol.encode_generate(request)
        decode = protocol.decode_output
        hashes = sequence_block_hashes(request.prompt_token_ids, self._block_size()) if self._hashes else []
        exclude: list[int] = []
        for attempt_no in range(self.fcfg.max_retries + 1):
            # Each attempt is its own routed request, so a retry never mixes up two workers' load.
            routing_id = request.request_id if attempt_no == 0 else f"{request.request_id}#{attempt_no}"
            attempt = await self._route(model, request, routing_id, hashes, exclude)
            produced = False
            finished = False
            stream = await self.plane.request(
                attempt.subject,
                payload,
                accept_timeout=self.fcfg.first_response_timeout_s,
                idle_timeout=self.fcfg.stream_idle_timeout_s,
            )
            try:
                async for chunk in stream:
                    out = decode(chunk)
                    if not produced and out.token_ids:
                        await self._tell_routers(routing_id, protocol.FIRST_TOKEN)
                    produced = produced or bool(out.token_ids)
                    if out.finish_reason is not None:
                        finished = True
                    yield out
                    if finished:
                        return
                finished = True
                return
            except (NoRespondersError, RequestTimeoutError, RemoteError) as e:
                finished = True  # the remote side is gone or refused; nothing to cancel
                retryable = isinstance(e, (NoRespondersError, RequestTimeoutError)) or (
                    isinstance(e, RemoteError) and e.code == "unavailable"
                )
                if isinstance(e, (NoRespondersError, RequestTimeoutError)):
                    self.workers.suspect(attempt.instance_id, self._suspect_s)
                if produced or not retryable:
                    raise WorkerFailure(f"worker {attempt.instance_id:x} failed mid-request: {e}") from e
                logger.warning(
                    "worker %x could not take request %s (%s); trying another (%d/%d)",
                    attempt.instance_id, request.request_id, e, attempt_no + 1, self.fcfg.max_retries,
                )  # fmt: skip
                exclude.append(attempt.instance_id)
                if self.on_retry is not None:
                    self.on_retry()
            finally:
                if not finished:
                    await stream.cancel()
                await self._tell_routers(routing_id, protocol.COMPLETE)
        raise NoWorkersError(f"no worker could take the request after {self.fcfg.max_retries + 1} attempts")
