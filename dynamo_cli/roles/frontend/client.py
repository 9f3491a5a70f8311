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

from dynamo_cli.config.models import FrontendConfig
from dynamo_cli.engines.base import EngineOutput, EngineRequest
from dynamo_cli.errors import NoRespondersError, RemoteError, RequestError, RequestTimeoutError
from dynamo_cli.routing.policies import NoWorkersError, Policy
from dynamo_cli.runtime import protocol
from dynamo_cli.runtime.messaging import RequestPlane
from dynamo_cli.runtime.workers import InstanceSet

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
        cfg: FrontendConfig,
        workers: InstanceSet,
        policy: Policy,
        routers: InstanceSet | None,
        suspect_s: float,
    ):
        self.plane = plane
        self.cfg = cfg
        self.workers = workers
        self.policy = policy
        self.routers = routers
        self._router_rr = itertools.count()
        self._suspect_s = suspect_s
        self.on_retry: Callable[[], None] | None = None

    async def _route(self, model: str, n_tokens: int, exclude: list[int]) -> Attempt:
        if self.routers is not None and (router_ids := self.routers.ids()):
            rid = router_ids[next(self._router_rr) % len(router_ids)]
            router = self.routers.get(rid)
            if router is not None:
                try:
                    stream = await self.plane.request(
                        router.data["subject"],
                        protocol.encode_route(model, n_tokens, exclude),
                        accept_timeout=self.cfg.first_response_timeout_s,
                        idle_timeout=self.cfg.first_response_timeout_s,
                    )
                    async for chunk in stream:
                        iid, subject = msgpack.unpackb(chunk)
                        return Attempt(iid, subject)
                except RemoteError as e:
                    if e.code == "no_workers":
                        raise NoWorkersError(str(e)) from e
                    logger.warning("router %x failed (%s); routing locally", rid, e)
                except RequestError as e:
                    self.routers.suspect(rid, self._suspect_s)
                    logger.warning("router %x unreachable (%s); routing locally", rid, e)
        iid = self.policy.choose(self.workers.ids(model), exclude)
        inst = self.workers.get(iid)
        assert inst is not None
        return Attempt(iid, inst.data["subject"])

    async def generate(self, model: str, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        payload = protocol.encode_generate(request)
        decode = protocol.decode_output
        exclude: list[int] = []
        for attempt_no in range(self.cfg.max_retries + 1):
            attempt = await self._route(model, len(request.prompt_token_ids), exclude)
            produced = False
            finished = False
            stream = await self.plane.request(
                attempt.subject,
                payload,
                accept_timeout=self.cfg.first_response_timeout_s,
                idle_timeout=self.cfg.stream_idle_timeout_s,
            )
            try:
                async for chunk in stream:
                    out = decode(chunk)
                    produced = True
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
                    attempt.instance_id, request.request_id, e, attempt_no + 1, self.cfg.max_retries,
                )  # fmt: skip
                exclude.append(attempt.instance_id)
                if self.on_retry is not None:
                    self.on_retry()
            finally:
                if not finished:
                    await stream.cancel()
        raise NoWorkersError(f"no worker could take the request after {self.cfg.max_retries + 1} attempts")
