"""A `dynamo run` deployment started as a subprocess (tests, benchmarks, `dynamo bench --profile`).

It is started exactly as a user would start it and stopped exactly as started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DYNAMO = [sys.executable, "-m", "dynamo_cli"]


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@dataclass
class Deployment:
    proc: subprocess.Popen[str]
    log: Path
    ready: dict[str, Any] = field(default_factory=dict)
    # Every JSON event the launcher printed (ready, and the planner's scale / replicas events), in order,
    # each stamped "_t" (time.monotonic() when read); appended by a reader thread that keeps stdout
    # drained for the deployment's whole life.
    events: list[dict[str, Any]] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.ready["url"]

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def model(self) -> str:
        return self.ready["model"]

    def pid(self, name: str) -> int:
        return int(self.ready["processes"][name])

    def current_pid(self, name: str) -> int | None:
        """The pid of process ``name`` now: the last one the launcher reported (restarts included)."""
        for event in reversed(list(self.events)):
            pid = event.get("processes", {}).get(name)
            if pid:
                return int(pid)
        pid = self.ready["processes"].get(name)
        return int(pid) if pid else None

    def all_pids(self) -> list[int]:
        """Every process the launcher reported, including workers the planner started later."""
        pids = {int(p) for p in self.ready["processes"].values()}
        for event in list(self.events):
            pids.update(int(p) for p in event.get("processes", {}).values() if p)
        return sorted(pids)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._join_reader()
        return code

    def kill(self) -> None:
        """Last resort: SIGKILL the launcher and every process it reported starting."""
        for pid in [self.proc.pid, *(self.all_pids() if self.ready else [])]:
            if pid and process_alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
        self.proc.wait(10)
        self._join_reader()

    def _join_reader(self) -> None:
        """The launcher is gone: its stdout ends, and the reader closes it."""
        if self.reader is not None:
            self.reader.join(10)


def start(tmp: Path, *args: str, timeout: float = 90, env: dict[str, str] | None = None) -> Deployment:
    """`dynamo run ... --json` with private etcd/NATS and a free port; returns once it is ready."""
    log = tmp / f"dynamo-run-{time.monotonic_ns()}.log"
    argv = [
        *DYNAMO,
        "run",
        *args,
        "--port",
        "0",
        "--json",
        "--set",
        "infra.etcd=spawn",
        "--set",
        "infra.nats=spawn",
    ]
    with log.open("w") as err:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    dep = Deployment(proc, log)
    got_ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                event["_t"] = time.monotonic()
                dep.events.append(event)
                if event.get("event") == "ready":
                    dep.ready = event
                    got_ready.set()
        got_ready.set()  # stdout closed: the launcher is gone

    dep.reader = threading.Thread(target=read, daemon=True)
    dep.reader.start()
    got_ready.wait(timeout)
    if not dep.ready:
        if proc.poll() is None:
            dep.kill()
        raise RuntimeError(
            f"dynamo run was not ready in {timeout} s (exit {proc.poll()}):\n{log.read_text()[-4000:]}"
        )
    return dep
