"""The live set of instances of a component, kept current by discovery events."""

from __future__ import annotations

import time

from dynamo_cli.transport.discovery import DiscoveryEvent, Instance


class InstanceSet:
    """Instances of one component by id; optionally filtered to one model."""

    def __init__(self) -> None:
        self._by_id: dict[int, Instance] = {}
        self._suspect: dict[int, float] = {}  # instance id -> until (monotonic)

    def reset(self, instances: list[Instance]) -> None:
        self._by_id = {i.instance_id: i for i in instances}

    def on_event(self, event: DiscoveryEvent) -> None:
        inst = event.instance
        if event.kind == "delete":
            self._by_id.pop(inst.instance_id, None)
            self._suspect.pop(inst.instance_id, None)
        else:
            self._by_id[inst.instance_id] = inst

    def get(self, instance_id: int) -> Instance | None:
        return self._by_id.get(instance_id)

    def ids(self, model: str | None = None) -> list[int]:
        suspected = self.suspected()
        return [
            i
            for i, inst in self._by_id.items()
            if (model is None or inst.data.get("model") == model) and i not in suspected
        ]

    def suspected(self) -> list[int]:
        """Instances currently skipped (expired suspicions are forgotten here)."""
        if self._suspect:
            now = time.monotonic()
            self._suspect = {k: until for k, until in self._suspect.items() if until > now}
        return list(self._suspect)

    def suspect(self, instance_id: int, for_s: float) -> None:
        """Skip an instance that failed to answer until discovery confirms it (or ``for_s`` passes)."""
        self._suspect[instance_id] = time.monotonic() + for_s

    def models(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for inst in self._by_id.values():
            name = inst.data.get("model")
            if name:
                out[name] = out.get(name, 0) + 1
        return out

    def __len__(self) -> int:
        return len(self._by_id)
