"""Worker groups of a local deployment, and the planner's local connector that grows and shrinks them.

A group has slots: its workers' places (GPUs, or CPU cores for vLLM on CPU), as many as it may ever
have (the planner's max, else its size). Scale-up starts a worker in the lowest free slot and waits
until it is ready; scale-down takes the highest one out and stops it with SIGTERM, which makes the
worker leave discovery, refuse new requests (the frontend retries them elsewhere) and finish its
in-flight ones before it exits, so no request is lost.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dynamo_cli.config.models import DynamoConfig, Group
from dynamo_cli.deployment.placement import worker_envs
from dynamo_cli.deployment.supervisor import Child, ProcessSpec, Supervisor
from dynamo_cli.errors import DynamoError, UsageError
from dynamo_cli.models.embedded import cache_root

logger = logging.getLogger(__name__)


def role_argv(role: str, config_path: Path, index: int = 0) -> list[str]:
    return [sys.executable, "-m", "dynamo_cli", "role", role, str(config_path), "--index", str(index)]


@dataclass
class WorkerGroup:
    key: Group  # as in the profile: workers, prefill_workers
    role: str  # the role its processes run: worker, decode, prefill
    slots: list[dict[str, str]]  # one environment per place a worker can take
    initial: int
    max_restarts: int

    def spec(self, index: int, config_path: Path, workdir: Path) -> ProcessSpec:
        tmp = workdir / f"tmp-{self.role}-{index}"  # engines leave sockets: keep them in the run's folder
        tmp.mkdir(exist_ok=True)
        env = {**self.slots[index], "TMPDIR": str(tmp), "VLLM_CACHE_ROOT": str(cache_root() / "vllm")}
        argv = role_argv(self.role, config_path, index)
        return ProcessSpec(f"{self.role}-{index}", argv, env=env, max_restarts=self.max_restarts)


def worker_groups(cfg: DynamoConfig) -> list[WorkerGroup]:
    """The deployment's worker groups, in start order."""
    planned = cfg.planner.enabled
    groups = [("decode" if cfg.disaggregated else "worker", "workers")]
    if cfg.prefill_workers.size or (planned and cfg.disaggregated):
        groups.append(("prefill", "prefill_workers"))
    sizes = {key: getattr(cfg.planner, key).max if planned else getattr(cfg, key).size for _, key in groups}
    engines = sum(sizes.values())
    out, first = [], 0
    for role, key in groups:
        group = getattr(cfg, key)
        n = sizes[key]
        if group.gpus and group.tensor_parallel_size:  # the GPU list fixes how many workers fit
            if n > group.size:
                raise UsageError(
                    f"planner.{key}.max is {n} but {key}.gpus has room for {group.size} worker(s) "
                    f"of tensor parallel {group.tensor_parallel_size}",
                    hint=f"lower planner.{key}.max or give {key}.gpus more GPUs",
                )
            slots = worker_envs(group, key, engine=cfg.engine)[:n]
        else:
            sized = group.model_copy(update={"count": n})
            slots = worker_envs(sized, key, engine=cfg.engine, cpu_first=first, cpu_engines=engines)
        first += n
        out.append(WorkerGroup(key, role, slots, min(group.size, n), group.max_restarts))  # type: ignore[arg-type]
    return out


@dataclass
class LocalConnector:
    """The planner's connector for `dynamo run`: worker processes of this launcher's supervisor."""

    sup: Supervisor
    groups: dict[Group, WorkerGroup]
    config_path: Path
    workdir: Path
    ready_timeout_s: float
    on_change: Callable[[], None] = lambda: None
    running: dict[Group, dict[int, Child]] = field(default_factory=dict)
    target: dict[Group, int] = field(default_factory=dict)
    starting: dict[Group, int] = field(default_factory=dict)
    draining: dict[str, Child] = field(default_factory=dict)
    _locks: dict[Group, asyncio.Lock] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def adopt(self, group: Group, children: list[Child]) -> None:
        """The workers the launcher started itself (slot i = index i)."""
        self.running[group] = dict(enumerate(children))
        self.target[group] = len(children)

    async def replicas(self) -> dict[Group, int]:
        return dict(self.target)

    def instance_ids(self, group: Group = "workers") -> list[int]:
        """Discovery ids of the group's serving workers (each reports its id when ready)."""
        ids = (k.ready_info.get("instance") for k in self.running.get(group, {}).values())
        return [int(i, 16) for i in ids if i]

    def ready_counts(self) -> dict[Group, int]:
        return {g: len(kids) for g, kids in self.running.items()}

    async def scale(self, group: Group, replicas: int, reason: str) -> None:
        if group not in self.groups:
            raise UsageError(f"this deployment has no {group}")
        slots = len(self.groups[group].slots)
        if not 0 <= replicas <= slots:
            raise UsageError(f"{group} can have 0..{slots} workers, not {replicas}")
        self.target[group] = replicas
        task = asyncio.create_task(self._converge(group), name=f"scale:{group}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _converge(self, group: Group) -> None:
        kids = self.running.setdefault(group, {})
        self._shrink(group)  # scale down at once: drains run side by side
        lock = self._locks.setdefault(group, asyncio.Lock())
        async with lock:  # scale up: every missing worker at once, into the lowest free slots
            while len(kids) < self.target[group]:
                free = [i for i in range(len(self.groups[group].slots)) if i not in kids]
                batch = free[: self.target[group] - len(kids)]
                self.starting[group] = self.starting.get(group, 0) + len(batch)
                self.on_change()
                started = await asyncio.gather(*(self._add(group, i) for i in batch))
                if not all(started):
                    self.target[group] = len(kids)
                    return
            self._shrink(group)  # asked down while we were starting some

    async def _add(self, group: Group, index: int) -> bool:
        """Start the worker of slot ``index``; False if it could not start."""
        spec = self.groups[group].spec(index, self.config_path, self.workdir)
        try:
            self.running[group][index] = await self.sup.add(spec, timeout=self.ready_timeout_s)
            return True
        except DynamoError as e:
            logger.error("could not add %s: %s", spec.name, e.message)
            return False
        finally:
            self.starting[group] -= 1
            self.on_change()

    def _shrink(self, group: Group) -> None:
        """Take the highest slots out down to the target, each draining in a task of its own."""
        kids = self.running[group]
        while len(kids) > self.target[group]:
            self._start_drain(kids.pop(max(kids)))

    def _start_drain(self, child: Child) -> None:
        self.draining[child.spec.name] = child
        self.on_change()

        async def drain() -> None:
            try:
                await self.sup.remove(child)
            finally:
                self.draining.pop(child.spec.name, None)
                self.on_change()

        task = asyncio.create_task(drain(), name=f"drain:{child.spec.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for every start and drain under way."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
