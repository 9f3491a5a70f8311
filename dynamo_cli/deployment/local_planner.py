"""The planner inside `dynamo run`: the planner role with the local connector, and the replica counts on
screen (a status line kept at the bottom of a terminal, a printed line per change otherwise, and JSON
events with --json)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from rich.live import Live
from rich.text import Text

from dynamo_cli.config.models import DynamoConfig, Group
from dynamo_cli.console import Sink
from dynamo_cli.deployment.scaling import LocalConnector, WorkerGroup
from dynamo_cli.deployment.supervisor import Child, Supervisor
from dynamo_cli.planner.inputs import observation_json
from dynamo_cli.planner.policy import Decision, Observation, planned_groups
from dynamo_cli.roles.planner import PlannerRole

_SHORT: dict[Group, str] = {"workers": "workers", "prefill_workers": "prefill"}


class LocalPlanner:
    def __init__(
        self,
        cfg: DynamoConfig,
        sup: Supervisor,
        groups: list[WorkerGroup],
        children: dict[Group, list[Child]],
        *,
        config_path: Path,
        workdir: Path,
        out: Sink,
    ):
        self.cfg = cfg
        self.out = out
        self.bounds = planned_groups(cfg)
        self.connector = LocalConnector(
            sup,
            {g.key: g for g in groups},
            config_path,
            workdir,
            cfg.supervisor.ready_timeout_s,
            on_change=self._changed,
        )
        for key, kids in children.items():
            self.connector.adopt(key, kids)
        self.role = PlannerRole(
            cfg,
            self.connector,
            on_decision=self._decided,
            on_observation=self._observed,
            log_decisions=False,
            live_workers=self.connector.instance_ids,  # no etcd client in the launcher: it forks workers
        )
        self._live: Live | None = None
        self._shown = ""

    async def start(self) -> None:
        await self.role.start()
        p = self.cfg.planner
        self.out.say(
            f"planner: {p.policy} policy every {p.interval_s:g} s, bounds "
            + ", ".join(f"{_SHORT[g]} {b.min}..{b.max}" for g, b in self.bounds.items())
        )
        if self.out.live:
            self._live = Live(self.line(), console=self.out.console, refresh_per_second=4, transient=True)
            self._live.start()
        self._changed()

    async def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
        with contextlib.suppress(Exception):
            await self.role.drain()
        await self.connector.cancel()
        with contextlib.suppress(Exception):
            await self.role.close()

    def line(self) -> Text:
        c = self.connector
        parts = []
        for group, b in self.bounds.items():
            ready = c.ready_counts().get(group, 0)
            part = f"{_SHORT[group]} {ready} ({b.min}..{b.max})"
            if c.starting.get(group):
                part += f" +{c.starting[group]} starting"
            parts.append(part)
        if c.draining:
            parts.append(f"{len(c.draining)} draining")
        return Text("replicas: " + " · ".join(parts), style="bold")

    def _changed(self) -> None:
        text = self.line()
        if text.plain == self._shown:
            return
        self._shown = text.plain
        if self._live is not None:
            self._live.update(text)
        elif not self.out.json_output:
            self.out.say(text)
        if self.out.json_output:
            c = self.connector
            self.out.event(
                "replicas",
                {
                    "ready": c.ready_counts(),
                    "target": dict(c.target),
                    "starting": {g: n for g, n in c.starting.items() if n},
                    "draining": sorted(c.draining),
                    "processes": {k.spec.name: k.pid for kids in c.running.values() for k in kids.values()},
                },
            )

    def _observed(self, obs: Observation) -> None:
        # each interval's inputs, for whoever studies the planner (the benchmark)
        self.out.event("observation", observation_json(obs))

    def _decided(self, d: Decision) -> None:
        self.out.event(
            "scale",
            {"group": d.group, "from": d.current, "to": d.target, "reason": d.reason},
            f"[bold]planner[/]: {_SHORT[d.group]} {d.current} -> {d.target}: {d.reason}",
        )
