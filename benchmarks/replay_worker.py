"""The replay worker of `benchmarks.frontend_replay`: a worker that answers from recordings, on a clock.

    .venv/bin/python -m benchmarks.replay_worker --etcd URL --nats URL --namespace NS \\
        [--tokens-per-frame 1] [--interval-ms 1] [--stats FILE]

To the frontend it is a mocker worker: it registers in discovery as roles/worker.py does (same record,
same generate subject, served by the same request plane), so the frontend cannot tell the difference.
The first time it sees a request (its prompt tokens and sampling options), it runs the mocker engine
in-process on it, on a clock that does not wait, and keeps what the engine drew: the token ids, their
logprobs turned into chat JSON as a worker writes them (models/logprob_json), the cached-token count
and the finish reason. It packs them into frames of K tokens, ready to send. Every later request with
the same prompt and options replays those bytes.

One ticker paces every stream: each T ms, every stream in flight sends its next frame, as an engine
step gives each running request its next token. Every variant of a benchmark then reaches the
frontend in the same bursts at the same times, and does the same work here (a decode, a dictionary
look-up, one publish a frame); only the bytes differ. ``--stats`` writes counters (streams recorded
and replayed, ticks, missed ticks) to a JSON file four times a second.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.engines.mocker import MockerEngine
from dynamo_cli.models.logprob_json import LogprobJson
from dynamo_cli.models.resolve import ResolvedModel, read_model_info
from dynamo_cli.models.tokenizer import ModelTokenizer
from dynamo_cli.roles.base import Role
from dynamo_cli.transport import protocol
from dynamo_cli.transport.messaging import Endpoint, RequestContext
from dynamo_cli.transport.wire import EngineOutput, EngineRequest, TokenLogprobs

STATS_INTERVAL_S = 0.25


class NoWaitClock:
    """A mocker clock on which steps take no time: a recording costs only the sampling."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class Ticker:
    """One shared cadence: ``wait()`` returns at the next tick. A thread keeps the time (the event loop's
    timers round to whole milliseconds: its ticks came ~10% late at 1 ms) and hands each tick to the
    loop; ticks fall at fixed times (start + n * interval) while anyone waits. A tick the thread made
    more than an interval late is counted in ``missed`` and skipped, not made up for with a burst."""

    def __init__(self, interval_s: float):
        self.interval = interval_s
        self.ticks = 0
        self.missed = 0
        self._waiting: list[asyncio.Future[None]] = []  # one future a waiter: one can be cancelled alone
        self._busy = threading.Event()  # someone waits: the thread ticks
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def wait(self) -> asyncio.Future[None]:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._run, name="replay-ticker", daemon=True)
            self._thread.start()
        future = self._loop.create_future()
        self._waiting.append(future)
        if not self._busy.is_set():
            self._busy.set()
        return future

    def _tick(self) -> None:  # in the loop
        waiting, self._waiting = self._waiting, []
        if not waiting:  # nobody waited for a whole tick: the thread idles until someone does
            self._busy.clear()
            return
        for future in waiting:
            if not future.done():
                future.set_result(None)
        self.ticks += 1

    def _run(self) -> None:
        assert self._loop is not None
        post = self._loop.call_soon_threadsafe
        while not self._stopped:
            self._busy.wait()
            due = time.monotonic() + self.interval
            while self._busy.is_set() and not self._stopped:
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                try:
                    post(self._tick)
                except RuntimeError:  # the loop closed
                    return
                due += self.interval
                late = time.monotonic() - due
                if late > 0:
                    skipped = int(late / self.interval) + 1
                    self.missed += skipped
                    due += skipped * self.interval

    async def close(self) -> None:
        self._stopped = True
        self._busy.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 1.0)


class Recorder:
    """A request's frames, recorded with the mocker the first time it is seen (see the module's doc)."""

    def __init__(self, cfg: DynamoConfig, model: ResolvedModel, tokens_per_frame: int):
        info = read_model_info(model.path)
        self.engine = MockerEngine(
            cfg.mocker,
            vocab_size=info.vocab_size,
            eos_token_ids=info.eos_token_ids,
            model_path=model.path,
            clock=NoWaitClock(),
        )
        self.model = model
        self.tokens_per_frame = tokens_per_frame
        self.writer: LogprobJson | None = None
        self.recorded = 0
        # (prompt token ids, repr of the sampling options) -> the frames, packed for the wire
        self.streams: dict[tuple[tuple[int, ...], str], list[bytes]] = {}
        self._ids = itertools.count()

    async def start(self) -> None:
        def build() -> LogprobJson:  # as a worker builds it (roles/worker.py)
            writer = LogprobJson(ModelTokenizer(self.model.path, fast_encode=False))
            writer.warm()
            return writer

        self.writer = await asyncio.to_thread(build)
        await self.engine.start()

    async def frames(self, request: EngineRequest) -> list[bytes]:
        key = (tuple(request.prompt_token_ids), repr(request.sampling))
        frames = self.streams.get(key)
        if frames is None:
            frames = self.streams[key] = await self._record(request)
            self.recorded += 1
        return frames

    async def _record(self, request: EngineRequest) -> list[bytes]:
        own = EngineRequest(f"record-{next(self._ids)}", request.prompt_token_ids, request.sampling)
        tokens: list[int] = []
        logprobs: list[TokenLogprobs] = []
        first: EngineOutput | None = None
        last = EngineOutput([])
        async for out in self.engine.generate(own):
            first = first or out
            tokens += out.token_ids
            logprobs += out.logprobs or []
            last = out
        if last.error is not None:
            return [protocol.encode_output(last)]
        assert first is not None
        k = self.tokens_per_frame
        as_json = request.sampling.logprobs_json and self.writer is not None
        frames = []
        for i in range(0, max(len(tokens), 1), k):
            ids = tokens[i : i + k]
            out = EngineOutput(ids, last.finish_reason if i + k >= len(tokens) else None)
            if i == 0:
                out.cached_tokens, out.prompt_logprobs = first.cached_tokens, first.prompt_logprobs
            if logprobs:
                part = logprobs[i : i + k]
                if as_json:
                    assert self.writer is not None
                    out.logprobs_json = self.writer.entries(ids, part)
                else:
                    out.logprobs = part
            frames.append(protocol.encode_output(out))
        return frames

    async def close(self) -> None:
        await self.engine.close()


class ReplayWorker(Role):
    """A worker role whose engine is a recording (see the module's doc)."""

    def __init__(
        self,
        cfg: DynamoConfig,
        model: ResolvedModel,
        *,
        tokens_per_frame: int = 1,
        interval_s: float = 0.001,
        stats: Path | None = None,
    ):
        super().__init__(cfg)
        self.name = "replay-worker"
        self.model = model
        self.recorder = Recorder(cfg, model, tokens_per_frame)
        self.ticker = Ticker(interval_s)
        self.served = 0
        self.frames_sent = 0
        self.endpoint: Endpoint | None = None
        self._stats_path = stats
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> dict[str, Any]:
        await self.recorder.start()
        await self.connect()
        assert self.plane is not None and self.discovery is not None
        iid = self.discovery.instance_id
        subject = protocol.endpoint_subject(self.cfg.namespace, protocol.WORKER, "generate", iid)
        self.endpoint = await self.plane.serve(subject, self._generate)
        if self._stats_path is not None:
            self._tasks.append(asyncio.create_task(self._write_stats(self._stats_path), name="stats"))
        await self.discovery.register(
            protocol.WORKER,
            {
                "subject": subject,
                "model": self.model.name,
                "engine": self.cfg.engine,
                "block_size": self.recorder.engine.block_size,
                "kv_events": False,  # it publishes none
                "host": socket.gethostname(),
                "pid": os.getpid(),
            },
        )
        return {"instance": f"{iid:x}", "subject": subject}

    async def _generate(self, data: bytes, ctx: RequestContext) -> AsyncIterator[bytes]:
        frames = await self.recorder.frames(protocol.decode_generate(data))
        tick = self.ticker.wait
        for frame in frames:
            await tick()
            yield frame
        self.frames_sent += len(frames)
        self.served += 1

    def stats(self) -> dict[str, int]:
        return {
            "recorded": self.recorder.recorded,
            "served": self.served,
            "frames": self.frames_sent,
            "ticks": self.ticker.ticks,
            "missed_ticks": self.ticker.missed,
        }

    async def _write_stats(self, path: Path) -> None:
        part = path.with_suffix(".part")
        while True:
            part.write_bytes(orjson.dumps(self.stats()))
            os.replace(part, path)
            await asyncio.sleep(STATS_INTERVAL_S)

    async def drain(self) -> None:
        if self.discovery is not None:
            await self.discovery.deregister(protocol.WORKER)
        if self.endpoint is not None:
            await self.endpoint.stop_accepting()
            await self.endpoint.drain(self.cfg.supervisor.stop_timeout_s)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ticker.close()
        await self.recorder.close()
        await super().close()


def replay_config(etcd: str, nats: str, namespace: str) -> DynamoConfig:
    """The `agg` profile with the mocker, as the frontend it serves is started."""
    from dynamo_cli.config.loader import load_config

    sets = [f"infra.etcd={etcd}", f"infra.nats={nats}", "log_level=warning"]
    return load_config("agg", sets=sets, flags={"engine": "mocker", "namespace": namespace})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--etcd", required=True)
    ap.add_argument("--nats", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--tokens-per-frame", type=int, default=1)
    ap.add_argument("--interval-ms", type=float, default=1.0)
    ap.add_argument("--stats", type=Path, default=None)
    args = ap.parse_args()

    from dynamo_cli.lifecycle import configure_logging, run_async
    from dynamo_cli.models.resolve import resolve_model
    from dynamo_cli.roles.base import serve_role

    cfg = replay_config(args.etcd, args.nats, args.namespace)
    configure_logging(cfg.log_level, prefix="replay-worker")
    model = resolve_model(cfg.model, cfg.served_model_name)

    async def serve() -> int:
        role = ReplayWorker(
            cfg,
            model,
            tokens_per_frame=args.tokens_per_frame,
            interval_s=args.interval_ms / 1000,
            stats=args.stats,
        )
        return await serve_role(role, cfg.supervisor.stop_timeout_s)

    raise SystemExit(run_async(serve()))


if __name__ == "__main__":
    main()
