"""The planner role: every interval, observe the deployment, decide, scale through a connector.

Inside `dynamo run` it scales local worker processes (runtime.scaling.LocalConnector); as `dynamo role
planner` in a Kubernetes pod it scales the worker Deployments (planner.kubernetes.KubernetesConnector).
A failed interval (frontend unreachable, API error) is logged and skipped: the planner never takes the
deployment down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.errors import StartupError
from dynamo_cli.frontend.access import client_options, resolve_keys
from dynamo_cli.planner.connector import Connector
from dynamo_cli.planner.inputs import Inputs, describe, scrape
from dynamo_cli.planner.policy import Decision, Observation, make_policy
from dynamo_cli.roles.base import Role
from dynamo_cli.transport import protocol
from dynamo_cli.transport.workers import InstanceSet

logger = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 5.0


class PlannerRole(Role):
    def __init__(
        self,
        cfg: DynamoConfig,
        connector: Connector | None = None,
        *,
        on_decision: Callable[[Decision], None] | None = None,
        on_observation: Callable[[Observation], None] | None = None,
        log_decisions: bool = True,
        live_workers: Callable[[], list[int]] | None = None,
    ):
        super().__init__(cfg)
        self.name = f"planner{self.at_host}"
        self.connector = connector
        self.on_decision = on_decision  # the launcher shows decisions itself (then log_decisions is off)
        self.log_decisions = log_decisions
        self.on_observation = on_observation
        # Who is serving, from the caller (the launcher knows its workers) or else from discovery.
        self.live_workers = live_workers
        self.policy = make_policy(cfg)
        self.inputs = Inputs()
        self.workers = InstanceSet()
        self.frontends = InstanceSet()
        self._http: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._owns_connector = connector is None
        self._warned: str | None = None

    async def start(self) -> dict[str, Any]:
        if self.connector is None:
            self.connector = _cluster_connector(self.cfg)
        await self.connect(discovery=self.live_workers is None)
        assert self.plane is not None
        await self.plane.subscribe(protocol.load_subject(self.cfg.namespace), self._on_load)
        if self.discovery is not None:
            self.workers.reset(await self.discovery.watch(protocol.WORKER, self.workers.on_event))
            self.frontends.reset(await self.discovery.watch(protocol.FRONTEND, self.frontends.on_event))
        keys = resolve_keys(self.cfg.frontend.api_keys)  # for /metrics behind a key (frontend.metrics_auth)
        self._http = httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S, **client_options(self.cfg.frontend, keys))
        self._task = asyncio.create_task(self._loop(), name="planner")
        p = self.cfg.planner
        return {"policy": p.policy, "interval_s": p.interval_s}

    async def _on_load(self, data: bytes) -> None:
        worker_id, load = protocol.decode_load(data)
        self.inputs.loads.update(worker_id, load)

    def frontend_url(self) -> str | None:
        if self.cfg.planner.frontend_url:
            return self.cfg.planner.frontend_url
        for iid in self.frontends.ids():
            inst = self.frontends.get(iid)
            if inst is not None and inst.data.get("url"):
                return str(inst.data["url"])
        return None

    async def _loop(self) -> None:
        interval = self.cfg.planner.interval_s
        next_at = time.monotonic()
        while True:
            try:
                await self.step()
            except Exception as e:  # one bad interval must not stop the planner
                self._warn(f"planner interval skipped: {type(e).__name__}: {e}")
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def _warn(self, message: str) -> None:
        if message != self._warned:  # the same trouble every interval is said once
            logger.warning("%s", message)
        self._warned = message

    async def step(self) -> list[Decision]:
        """One interval: observe, decide, act. The first call only primes the counters."""
        assert self.connector is not None and self._http is not None and self.plane is not None
        url = self.frontend_url()
        if url is None:
            self._warn("no frontend registered yet; waiting")
            return []
        sample = await scrape(self._http, url)
        replicas = await self.connector.replicas()
        live = self.live_workers() if self.live_workers is not None else self.workers.ids()
        obs = self.inputs.observe(sample, time.monotonic(), replicas, live)
        self._warned = None
        decisions = self.policy.decide(obs)
        logger.debug("observed %s; replicas %s", describe(obs), replicas)
        if self.on_observation is not None:
            self.on_observation(obs)
        for d in decisions:
            if self.log_decisions:
                logger.info("scaling %s %d -> %d: %s", d.group, d.current, d.target, d.reason)
            if self.on_decision is not None:
                self.on_decision(d)
            await self.connector.scale(d.group, d.target, d.reason)
            note = protocol.encode_decision(d.group, d.current, d.target, d.reason)
            await self.plane.publish(protocol.planner_subject(self.cfg.namespace), note)
        return decisions

    async def drain(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._owns_connector and self.connector is not None and hasattr(self.connector, "aclose"):
            await self.connector.aclose()
        await super().close()


def _cluster_connector(cfg: DynamoConfig) -> Connector:
    """`dynamo role planner` on its own: it scales Kubernetes Deployments, so it must run in the cluster."""
    from dynamo_cli.planner.kubernetes import ClusterAccess, KubernetesConnector

    try:
        access = ClusterAccess.in_cluster()
    except StartupError as e:
        raise StartupError(
            f"{e.message}; a local deployment's planner runs inside `dynamo run`",
            hint="dynamo run PROFILE --planner (or --set planner.enabled=true)",
        ) from None
    return KubernetesConnector(cfg, access)
