"""The supervisor: spawns processes, shows their logs, watches them, stops exactly what it started."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from rich.text import Text

from dynamo_cli.config.models import SupervisorConfig
from dynamo_cli.console import Sink
from dynamo_cli.errors import RuntimeFailure, StartupError
from dynamo_cli.lifecycle import PARENT_PID_ENV, READY_FD_ENV

logger = logging.getLogger(__name__)

_COLORS = ["cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan", "bright_magenta"]

# Infra binaries cannot call prctl themselves: a tiny shim sets PDEATHSIG (kept across exec) first.
_SHIM = (
    "import ctypes,os,signal,sys;ctypes.CDLL('libc.so.6').prctl(1,signal.SIGTERM);"
    "p=os.environ.get('DYNAMO_PARENT_PID');"
    "(p and os.getppid()!=int(p)) and os._exit(1);"
    "os.execv(sys.argv[1],sys.argv[1:])"
)


@dataclass
class ProcessSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Readiness: roles report on a pipe; servers are probed (a cheap sync check run every 20 ms).
    probe: Callable[[], bool] | None = None
    max_restarts: int = 0  # > 0: restart on unexpected exit, up to this many times a restart window
    shim: bool = False  # exec through the PDEATHSIG shim (for binaries that are not ours)
    # Which log lines to show (all are kept for the post-mortem); None shows everything.
    show: Callable[[str], bool] | None = None


@dataclass
class Child:
    spec: ProcessSpec
    color: str
    proc: asyncio.subprocess.Process | None = None
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=30))
    restarts: int = 0
    restarted_at: deque[float] = field(default_factory=deque)  # monotonic times, within the window
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ready_info: dict[str, Any] = field(default_factory=dict)
    stopping: bool = False
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def last_lines(self, n: int = 10) -> str:
        return "\n".join(list(self.lines)[-n:])


class Supervisor:
    def __init__(self, out: Sink, cfg: SupervisorConfig):
        self.out = out
        self.stop_timeout = cfg.stop_timeout_s
        self.ready_timeout = cfg.ready_timeout_s  # also for a restarted child
        self.restart_window_s = cfg.restart_window_s
        self.children: list[Child] = []
        self.fatal: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._stopping = False
        self.on_restart: Callable[[Child], None] | None = None
        self.on_death: Callable[[Child, str], None] | None = None  # a ready child died: what, why

    # ---- spawning ---------------------------------------------------------------------------------
    async def start(self, spec: ProcessSpec, timeout: float) -> Child:
        child = Child(spec, _COLORS[len(self.children) % len(_COLORS)])
        self.children.append(child)
        await self._spawn(child)
        await self._wait_ready(child, timeout)
        return child

    async def add(self, spec: ProcessSpec, timeout: float) -> Child:
        """Start one more process while running (the planner's scale-up); a failed start leaves nothing."""
        try:
            return await self.start(spec, timeout)
        except BaseException:
            child = next(c for c in self.children if c.spec is spec)
            await self.remove(child)
            raise

    async def remove(self, child: Child) -> None:
        """Stop one process for good (SIGTERM: a worker drains first) and forget it."""
        await self._stop(child)
        await _cancel_tasks(child)
        if child in self.children:
            self.children.remove(child)

    async def _spawn(self, child: Child) -> None:
        spec = child.spec
        env = {**os.environ, **spec.env, PARENT_PID_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        pass_fds: tuple[int, ...] = ()
        read_fd = None
        if spec.probe is None:
            read_fd, write_fd = os.pipe()
            env[READY_FD_ENV] = str(write_fd)
            pass_fds = (write_fd,)
        argv = [sys.executable, "-S", "-c", _SHIM, *spec.argv] if spec.shim else spec.argv
        child.ready.clear()
        try:
            child.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                pass_fds=pass_fds,
                start_new_session=True,  # Ctrl-C reaches only us; we decide how children stop
            )
        except OSError as e:
            raise StartupError(f"cannot start {spec.name}: {e}") from e
        finally:
            for fd in pass_fds:
                os.close(fd)
        logger.debug("started %s pid %s", spec.name, child.proc.pid)
        child.tasks = [
            asyncio.create_task(self._pump_logs(child), name=f"logs:{spec.name}"),
            asyncio.create_task(self._watch_exit(child), name=f"exit:{spec.name}"),
        ]
        if read_fd is not None:
            child.tasks.append(
                asyncio.create_task(self._read_ready(child, read_fd), name=f"ready:{spec.name}")
            )

    async def _read_ready(self, child: Child, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb")
        )
        try:
            line = await reader.readline()
            if line:
                with contextlib.suppress(orjson.JSONDecodeError):
                    child.ready_info = orjson.loads(line)
                child.ready.set()
        finally:
            transport.close()

    async def _wait_ready(self, child: Child, timeout: float) -> None:
        spec = child.spec
        assert child.proc is not None
        deadline = time.monotonic() + timeout
        exit_task = child.tasks[1]
        while True:
            if spec.probe is not None:
                if await asyncio.to_thread(spec.probe):
                    child.ready.set()
                    return
                wait_for = 0.02
            else:
                wait_for = max(0.0, deadline - time.monotonic())
            ready_task = asyncio.ensure_future(child.ready.wait())
            done, _ = await asyncio.wait(
                {ready_task, exit_task}, timeout=wait_for, return_when=asyncio.FIRST_COMPLETED
            )
            ready_task.cancel()
            if child.ready.is_set():
                return
            if exit_task in done or child.proc.returncode is not None:
                await asyncio.sleep(0.05)  # let the log pump catch the last lines
                raise StartupError(
                    f"{spec.name} exited during start-up with status {child.proc.returncode}",
                    hint=f"its last lines:\n{child.last_lines()}" if child.lines else "it printed nothing",
                )
            if time.monotonic() > deadline:
                raise StartupError(
                    f"{spec.name} was not ready after {timeout:g} s",
                    hint=f"its last lines:\n{child.last_lines()}" if child.lines else "it printed nothing",
                )

    async def _pump_logs(self, child: Child) -> None:
        assert child.proc is not None and child.proc.stdout is not None
        prefix = Text(f"{child.spec.name:>10} | ", style=child.color)
        stream = child.proc.stdout
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the buffer: take what is there
                raw = await stream.read(65536)
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            child.lines.append(line)
            if child.spec.show is not None and not child.spec.show(line):
                continue
            self.out.say(prefix + Text(line), markup=False, highlight=False, soft_wrap=True)

    async def _watch_exit(self, child: Child) -> None:
        assert child.proc is not None
        code = await child.proc.wait()
        if child.stopping or self._stopping:
            return
        status = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        if child.ready.is_set() and self.on_death is not None:
            self.on_death(child, status)  # first: the frontend moves its streams before anything else
        await asyncio.sleep(0.05)  # let the pump print the last lines first
        name = child.spec.name
        if not child.ready.is_set():
            return  # start-up failures are reported by _wait_ready
        self.out.say(f"[bold red]{name} exited unexpectedly with {status}[/]. Last lines:", highlight=False)
        self.out.say(Text(child.last_lines()), highlight=False)
        now, recent = time.monotonic(), child.restarted_at
        while recent and now - recent[0] > self.restart_window_s:
            recent.popleft()
        if len(recent) < child.spec.max_restarts:
            child.restarts += 1
            recent.append(now)
            self.out.say(
                f"[yellow]restarting {name} ({len(recent)}/{child.spec.max_restarts} in "
                f"{self.restart_window_s:g} s)[/]",
                highlight=False,
            )
            try:
                await self._spawn(child)
                await self._wait_ready(child, timeout=self.ready_timeout)
                if self.on_restart is not None:
                    self.on_restart(child)
            except StartupError as e:
                if not self.fatal.done():
                    self.fatal.set_result(f"{name} could not be restarted: {e.message}")
            return
        if not self.fatal.done():
            more = f" after {len(recent)} restarts in {self.restart_window_s:g} s" if recent else ""
            self.fatal.set_result(f"{name} exited with {status}{more}")

    # ---- waiting and stopping ---------------------------------------------------------------------
    async def wait(self, stop: asyncio.Event) -> None:
        """Return when ``stop`` is set; raise RuntimeFailure when a role dies for good."""
        stop_task: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([stop_task, self.fatal], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_task.cancel()
        if self.fatal.done() and not stop.is_set():
            raise RuntimeFailure(self.fatal.result(), hint="see the role's last lines above")

    async def stop_all(self) -> None:
        """Stop every child in reverse start order: SIGTERM, wait, then SIGKILL."""
        self._stopping = True
        children = list(self.children)
        for child in reversed(children):
            await self._stop(child)
        for child in children:
            await _cancel_tasks(child)

    async def _stop(self, child: Child) -> None:
        proc = child.proc
        child.stopping = True
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.stop_timeout)
        except asyncio.TimeoutError:
            self.out.say(f"[yellow]{child.spec.name} did not stop in {self.stop_timeout:g} s; killing it[/]")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def kill_all(self) -> None:
        """Second Ctrl-C: SIGKILL every child we started, right now."""
        self._stopping = True
        for child in self.children:
            if child.proc is not None and child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()


async def _cancel_tasks(child: Child) -> None:
    """Stop watching a child that is gone (its log pump, exit watcher, readiness reader)."""
    for task in child.tasks:
        task.cancel()
    await asyncio.gather(*child.tasks, return_exceptions=True)
