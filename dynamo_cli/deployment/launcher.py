"""`dynamo run`: bring a whole deployment up on this machine, keep it up, take it down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import httpx
import yaml

from dynamo_cli.config.checks import disagg_findings
from dynamo_cli.config.frontend import literal_keys, redacted
from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.console import Sink
from dynamo_cli.deployment.deaths import DeathNotices
from dynamo_cli.deployment.join import join_url, new_secret, publish_config
from dynamo_cli.deployment.scaling import WorkerGroup, role_argv, worker_groups
from dynamo_cli.deployment.servers import (
    ServerPlan,
    enable_etcd_auth,
    etcd_version,
    nats_info,
    plan_etcd,
    plan_nats,
)
from dynamo_cli.deployment.supervisor import ProcessSpec, Supervisor
from dynamo_cli.errors import StartupError, UsageError
from dynamo_cli.frontend.access import ENV_DEFAULT, client_options, for_children, keys_for
from dynamo_cli.lifecycle import install_signal_handlers, run_async
from dynamo_cli.models.resolve import ResolvedModel, read_model_info, resolve_model
from dynamo_cli.transport.ports import LOOPBACKS

if TYPE_CHECKING:
    from dynamo_cli.deployment.local_planner import LocalPlanner


def _server_spec(plan: ServerPlan, max_restarts: int) -> ProcessSpec:
    """etcd and NATS are chatty at start: show only their warnings and errors. One that dies is started
    again with the same command line: same port, same data folder."""
    if plan.name == "etcd":
        probe = lambda: etcd_version(plan.url, timeout=0.2) is not None  # noqa: E731
        show = lambda line: '"level":"error"' in line or '"level":"fatal"' in line or "panic" in line  # noqa: E731
    else:
        probe = lambda: nats_info(plan.url, timeout=0.2) is not None  # noqa: E731
        show = lambda line: any(t in line for t in ("[ERR]", "[FTL]", "[WRN]"))  # noqa: E731
    return ProcessSpec(plan.name, plan.argv, probe=probe, shim=True, show=show, max_restarts=max_restarts)


def role_specs(
    cfg: DynamoConfig, config_path: Path, workdir: Path, groups: list[WorkerGroup] | None = None
) -> list[ProcessSpec]:
    """Every role process the deployment starts with, in start order (stopped in reverse)."""
    groups = worker_groups(cfg) if groups is None else groups
    specs = [g.spec(i, config_path, workdir) for g in groups for i in range(g.initial)]
    specs += [
        ProcessSpec(f"router-{i}", role_argv("router", config_path, i), max_restarts=cfg.router.max_restarts)
        for i in range(cfg.router.replicas)
    ]
    frontend = ProcessSpec(
        "frontend", role_argv("frontend", config_path), max_restarts=cfg.frontend.max_restarts
    )
    specs.append(frontend)
    return specs


def keep_port(spec: ProcessSpec, url: str) -> None:
    """A restarted frontend binds the port the first one got (the one given for --port 0), so clients and
    the planner's metrics URL see at most a short refusal."""
    port = urlparse(url).port
    spec.argv = [*spec.argv, "--set", f"frontend.port={port}"]


async def _wait_healthy(url: str, timeout: float, options: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0, **options) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                r = await client.get(f"{url}/health")
                if r.status_code == 200:
                    return r.json()
            if time.monotonic() > deadline:
                raise StartupError(
                    f"the frontend at {url} saw no worker within {timeout:g} s",
                    hint="check the workers' lines above; `dynamo doctor` checks etcd and NATS",
                )
            await asyncio.sleep(0.02)


def _spawned(setting: str, name: str, secret: str | None) -> str:
    """With credentials to set up (--listen), the server must be one this run spawns."""
    if secret is None or setting in ("auto", "spawn"):
        return "spawn" if secret is not None else setting
    raise UsageError(
        f"infra.listen applies to the {name} `dynamo run` spawns, and infra.{name} names one to use.",
        f"Leave infra.{name} at auto (it then spawns one on the listen address), or leave out --listen.",
    )


class Launcher:
    def __init__(self, cfg: DynamoConfig, out: Sink):
        self.cfg = cfg
        self.out = out
        self.sup = Supervisor(out, cfg.supervisor)
        self.workdir = Path(tempfile.mkdtemp(prefix="dynamo-run-"))
        self.url: str | None = None
        self.planner: LocalPlanner | None = None
        self.deaths = DeathNotices(cfg.namespace)
        self.keys = keys_for(cfg.frontend)  # first: a key that cannot be read stops the run
        if literal_keys(cfg.frontend.api_keys):
            out.warn(
                "an API key given as text shows in `ps`, shell history or the profile file",
                f"put the keys in {ENV_DEFAULT} or a file (--api-key-file; frontend.api_keys: [file:PATH])",
            )

    async def _start(self, t0: float) -> None:
        cfg, out = self.cfg, self.out
        weights = cfg.engine == "vllm"
        with out.status("Preparing the model (the first run converts the embedded one, ~20 s)..."):
            model: ResolvedModel = await asyncio.to_thread(
                resolve_model, cfg.model, cfg.served_model_name, weights=weights
            )
        context = read_model_info(model.path).context_length
        for finding in disagg_findings(cfg, context):
            out.warn(finding.message, finding.hint)
        listen = cfg.infra.listen
        secret = None if listen in LOOPBACKS else new_secret()
        plans = [
            plan_etcd(_spawned(cfg.infra.etcd, "etcd", secret), self.workdir, listen, secret),
            plan_nats(_spawned(cfg.infra.nats, "nats", secret), self.workdir, listen, secret),
        ]
        spawned = [p for p in plans if p.spawn]
        for p in plans:
            out.say(f"{p.name}: {'spawning a local server at' if p.spawn else 'using'} {p.url}")
        timeout = cfg.supervisor.ready_timeout_s
        restarts = cfg.supervisor.infra_max_restarts
        await asyncio.gather(
            *(self.sup.start(_server_spec(p, restarts), timeout=min(timeout, 30)) for p in spawned)
        )
        if secret is not None:
            await asyncio.to_thread(enable_etcd_auth, plans[0].url, secret)
        resolved = cfg.model_copy(deep=True)
        resolved.infra.etcd, resolved.infra.nats = plans[0].client_url, plans[1].client_url
        # The keys reach the frontend in its environment; the config file names only the variable.
        resolved.frontend.api_keys, key_env = for_children(self.keys)
        await self.deaths.connect(plans[1].client_url)
        self.sup.on_death = self.deaths
        if out.json_output:
            self.sup.on_restart = lambda c: out.event("restarted", {"processes": {c.spec.name: c.pid}})
        resolved.model, resolved.served_model_name = str(model.path), model.name
        config_path = self.workdir / "config.yaml"
        config_path.touch(mode=0o600)  # it holds the servers' credentials when there are any
        config_path.write_text(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False))
        join = None
        if secret is not None:  # what another machine needs: these endpoints, the model as the user named it
            shared = cfg.model_copy(deep=True)
            shared.infra = resolved.infra.model_copy()
            shared.frontend.api_keys = redacted(cfg.frontend.api_keys)
            shared.served_model_name = model.name
            await asyncio.to_thread(publish_config, shared)
            etcd_port, nats_port = urlparse(plans[0].url).port, urlparse(plans[1].url).port
            assert etcd_port is not None and nats_port is not None
            join = join_url(listen, etcd_port, nats_port, secret, cfg.namespace)
        groups = worker_groups(resolved)
        specs = role_specs(resolved, config_path, self.workdir, groups)
        specs[-1].env.update(key_env)
        with out.status(f"Starting {len(specs)} role process(es)..."):
            children = await asyncio.gather(*(self.sup.start(s, timeout=timeout) for s in specs))
            self.url = children[-1].ready_info.get("url")
            assert self.url is not None
            keep_port(children[-1].spec, self.url)
            health = await _wait_healthy(self.url, timeout, client_options(cfg.frontend, self.keys))
        elapsed = time.perf_counter() - t0
        workers = f"{health['workers']} worker(s)"
        if cfg.disaggregated:
            mode = "conditional" if cfg.disagg.conditional_disagg else "always"
            remote = f"remote prefill {mode}" if cfg.disagg.remote_prefill else "remote prefill OFF"
            workers = f"{health['workers']} decode + {cfg.prefill_workers.size} prefill worker(s), {remote}"
        out.say(
            f"[bold green]Ready[/] in {elapsed:.2f} s: {self.url}/v1 serving [bold]{model.name}[/] "
            f"with {workers}, engine {cfg.engine}, router {cfg.router.mode}; Ctrl-C stops."
        )
        if join is not None:
            roles = ["decode", "prefill"] if cfg.disaggregated else ["worker"]
            index = {
                "decode": cfg.workers.size,
                "worker": cfg.workers.size,
                "prefill": cfg.prefill_workers.size,
            }
            lines = "\n".join(f"  dynamo role {r} --join '{join}' --index {index[r]}" for r in roles)
            out.say(
                "Other machines join with (one --index each, counting up; the URL is a credential):\n"
                + lines,
                markup=False,
                soft_wrap=True,  # whole lines: commands to copy
            )
        if cfg.planner.enabled:
            from dynamo_cli.deployment.local_planner import LocalPlanner

            first, by_group = 0, {}
            for g in groups:
                by_group[g.key] = list(children[first : first + g.initial])
                first += g.initial
            planned = resolved.model_copy(
                update={"planner": resolved.planner.model_copy(update={"frontend_url": self.url})}
            )
            planned.frontend.api_keys = cfg.frontend.api_keys  # in this process: read as the launcher did
            self.planner = LocalPlanner(
                planned,
                self.sup,
                groups,
                by_group,
                config_path=config_path,
                workdir=self.workdir,
                out=out,
            )
        if out.json_output:
            out.event(
                "ready",
                {
                    "url": self.url,
                    "model": model.name,
                    "ready_s": round(elapsed, 3),
                    "etcd": plans[0].url,
                    "nats": plans[1].url,
                    "join": join,
                    "host": socket.gethostname(),  # beside each process's name (role-index)
                    "processes": {c.spec.name: c.pid for c in self.sup.children},
                    "roles": {c.spec.name: c.ready_info for c in self.sup.children if c.ready_info},
                },
            )
        if self.planner is not None:
            await self.planner.start()

    async def run(self) -> int:
        t0 = time.perf_counter()
        shutdown = install_signal_handlers(on_force=self._force)
        starting = asyncio.create_task(self._start(t0), name="launcher-start")
        stop = asyncio.create_task(shutdown.requested.wait(), name="launcher-stop")
        try:
            await asyncio.wait({starting, stop}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # start-up errors surface here
                await self.sup.wait(shutdown.requested)
            else:
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await starting
        finally:
            stop.cancel()
            if self.planner is not None:
                await self.planner.stop()
            if shutdown.requested.is_set():
                self.out.say("Stopping (Ctrl-C again to force)...")
            await self.sup.stop_all()
            await self.deaths.close()
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.out.say("Stopped.")
        return 130 if shutdown.signal == signal.SIGINT else 0

    def _force(self) -> None:
        self.sup.kill_all()
        shutil.rmtree(self.workdir, ignore_errors=True)
        os._exit(130)


def run_deployment(cfg: DynamoConfig, out: Sink) -> int:
    async def main() -> int:
        return await Launcher(cfg, out).run()

    return run_async(main())
