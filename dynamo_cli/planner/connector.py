"""Where the planner's decisions take effect: a local `dynamo run`, or Kubernetes."""

from __future__ import annotations

from typing import Protocol

from dynamo_cli.config.models import Group


class Connector(Protocol):
    async def replicas(self) -> dict[Group, int]:
        """The replica count each worker group has now (what was asked for, not what is ready)."""
        ...

    async def scale(self, group: Group, replicas: int, reason: str) -> None:
        """Ask for ``replicas`` workers in ``group``. Scale-down drains a worker before it stops."""
        ...
