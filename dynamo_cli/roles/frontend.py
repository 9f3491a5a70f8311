"""The frontend role: preprocessing and the OpenAI HTTP API in front of the workers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.errors import StartupError
from dynamo_cli.frontend.access import keys_for
from dynamo_cli.frontend.client import WorkerClient
from dynamo_cli.frontend.guard import Guard, admission_limit
from dynamo_cli.frontend.limits import MIB, RequestLimits
from dynamo_cli.frontend.metrics import FrontendMetrics
from dynamo_cli.frontend.parsing import BodyParser
from dynamo_cli.frontend.prepare import ChatSetup
from dynamo_cli.frontend.server import build_app
from dynamo_cli.frontend.state import FrontendState
from dynamo_cli.models.resolve import ResolvedModel
from dynamo_cli.models.tokenizer import ModelTokenizer
from dynamo_cli.roles.base import Role
from dynamo_cli.routing.service import RoutingService
from dynamo_cli.transport import protocol
from dynamo_cli.transport.ports import advertised_host
from dynamo_cli.transport.prefill_queue import PrefillQueue
from dynamo_cli.transport.workers import InstanceSet

logger = logging.getLogger(__name__)

QUEUE_POLL_S = 0.5
PREPROCESS_THREADS = 4  # more than the cores: a huge prompt's tokenisation must not queue the others


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: this process has one owner of signals (roles.base)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise StartupError(
            f"cannot listen on {host}:{port} ({e.strerror})",
            hint="another process uses that port: pick another with --port",
        ) from e
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def tls_options(cfg: DynamoConfig) -> dict[str, Any]:
    """uvicorn's TLS arguments, the files checked first: a missing one is a clear start-up error."""
    f = cfg.frontend
    if f.ssl_certfile is None:
        return {}
    for key in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs"):
        path = getattr(f, key)
        if path is not None and not os.path.isfile(path):
            raise StartupError(f"frontend.{key} {path} is not a file", hint="check the path")
    opts: dict[str, Any] = {"ssl_certfile": f.ssl_certfile, "ssl_keyfile": f.ssl_keyfile}
    if f.ssl_ca_certs is not None:  # mutual TLS: a client without a certificate from that CA is refused
        opts.update(ssl_ca_certs=f.ssl_ca_certs, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return opts


class FrontendRole(Role):
    reregister = True

    def __init__(self, cfg: DynamoConfig, model: ResolvedModel):
        super().__init__(cfg)
        self.name = f"frontend{self.at_host}"
        self.model = model
        self.server: _Server | None = None
        self.service: RoutingService | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._parser: BodyParser | None = None

    async def start(self) -> dict[str, Any]:
        fcfg = self.cfg.frontend
        keys = keys_for(fcfg)  # first, with the TLS files: a bad one fails before any work
        tls = tls_options(self.cfg)
        sock = bind_socket(fcfg.host, fcfg.port)  # first: a busy port fails fast, before any connection
        tokenizer = await asyncio.to_thread(ModelTokenizer, self.model.path, fast_encode=fcfg.fast_tokenizer)
        if self.cfg.engine == "vllm" and self.cfg.vllm.max_model_len:  # the engines take no longer
            tokenizer.context_length = min(tokenizer.context_length, self.cfg.vllm.max_model_len)
        await self.connect()
        assert self.plane is not None and self.discovery is not None
        self.service = None
        routers = None
        if self.cfg.router.replicas == 0:  # the router lives in this process
            self.service = RoutingService(
                self.cfg, self.plane, self.discovery, origin=self.discovery.instance_id
            )
            await self.service.start()
            workers = self.service.workers
        else:
            workers = InstanceSet()
            workers.reset(await self.discovery.watch(protocol.WORKER, workers.on_event))
            routers = InstanceSet()
            routers.reset(await self.discovery.watch(protocol.ROUTER, routers.on_event))
        metrics = FrontendMetrics(self.model.name)

        async def on_decision(data: bytes) -> None:
            metrics.count_decision(protocol.decode_decision(data))

        await self.plane.subscribe(protocol.planner_subject(self.cfg.namespace), on_decision)
        client = WorkerClient(self.plane, self.cfg, workers, service=self.service, routers=routers)
        client.on_retry = metrics.retries.inc
        client.on_migration = metrics.count_migration
        client.on_migrated = metrics.count_migrated

        async def on_death(data: bytes) -> None:
            notice = protocol.decode_death(data)
            for iid in workers.ids():
                inst = workers.get(iid)
                if inst is not None and (inst.data.get("host"), inst.data.get("pid")) == (
                    notice["host"],
                    notice["pid"],
                ):
                    client.worker_died(iid, f"{notice['name']} exited with {notice['why']}")

        await self.plane.subscribe(protocol.deaths_subject(self.cfg.namespace), on_death)
        limits = RequestLimits.build(fcfg, tokenizer.context_length, tokenizer.longest_token)
        self._pool = ThreadPoolExecutor(PREPROCESS_THREADS, thread_name_prefix="preprocess")
        self._parser = BodyParser(limits)
        await self._parser.warm_up()
        state = FrontendState(
            self.model.name,
            tokenizer,
            client,
            workers,
            metrics,
            self._parser,
            self._pool,
            max_body=int(fcfg.max_body_mb * MIB),
            routing=self.service,
            setup=ChatSetup.resolve(fcfg, tokenizer),
        )
        # What start-up built (tokenizer tables, the app) lives as long as the process: out
        # of the cyclic collector's way. A full collection walked it in ~40 ms, a stall of every stream
        # once every ~800 streamed requests; frozen, ~1 ms.
        gc.collect()
        gc.freeze()
        logger.info("frontend parsers: %s", state.setup.describe())
        limit = admission_limit(fcfg, workers.__len__)
        app = Guard(build_app(state), fcfg, keys, metrics, self.model.name, limit, listening=sock)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            http="httptools",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=int(self.cfg.supervisor.stop_timeout_s),
            **tls,
        )
        try:
            config.load()  # here, so that a certificate or key that does not load is a clear error
        except (ssl.SSLError, OSError) as e:
            raise StartupError(
                f"cannot serve TLS with frontend.ssl_certfile/ssl_keyfile ({e})",
                hint="check that the key matches the certificate and both are PEM",
            ) from None
        self.server = _Server(config)
        self._serve_task = asyncio.create_task(self.server.serve(sockets=[sock]), name="uvicorn")
        while not self.server.started:
            if self._serve_task.done():
                self._serve_task.result()
                raise StartupError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        host, port = sock.getsockname()[:2]
        wildcard = host in ("0.0.0.0", "::")
        scheme = fcfg.scheme
        url = f"{scheme}://{'127.0.0.1' if wildcard else host}:{port}"  # for this machine (the launcher)
        # For the deployment's other processes, wherever they run: an address they can reach.
        reachable = advertised_host(self.cfg.infra.nats, host) if wildcard else host
        await self.discovery.register(
            protocol.FRONTEND,
            {"url": f"{scheme}://{reachable}:{port}", "model": self.model.name, "host": socket.gethostname(),
             "pid": os.getpid()},
        )  # fmt: skip
        if self.cfg.disaggregated:
            self._tasks.append(asyncio.create_task(self._watch_queue(metrics), name="prefill-queue"))
        logger.info(
            "serving %s at %s/v1 (%d worker(s) known%s)", self.model.name, url, len(workers),
            f", {len(keys)} API key(s)" if keys else ", no API key: open",
        )  # fmt: skip
        return {"url": url, "model": self.model.name}

    async def _watch_queue(self, metrics: FrontendMetrics) -> None:
        """Keep the prefill queue depth gauge current (decode workers read the depth themselves)."""
        assert self.plane is not None
        queue = await PrefillQueue.open(
            self.plane.nc, self.cfg.namespace, redelivery_s=self.cfg.disagg.redelivery_s
        )
        while True:
            with contextlib.suppress(Exception):
                metrics.prefill_queue_depth.set(await queue.depth())
            await asyncio.sleep(QUEUE_POLL_S)

    async def drain(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.discovery is not None:
            await self.discovery.deregister(protocol.FRONTEND)
        if self.server is not None and self._serve_task is not None:
            self.server.should_exit = True  # stop accepting; finish in-flight responses
            with contextlib.suppress(Exception):
                await self._serve_task

    async def close(self) -> None:
        if self.service is not None:
            await self.service.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._parser is not None:
            self._parser.close()
        await super().close()
