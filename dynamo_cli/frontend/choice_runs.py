"""The choices of one request as they run: `ChoiceRun` (one generation and the shaper of its output), and
running every choice at once or reading their text deltas as they come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from dynamo_cli.frontend.outputs import ChoiceShaper
from dynamo_cli.frontend.pipeline import Generation


@dataclass
class ChoiceRun:
    """One choice of a request (n > 1: one generation each, sharing the prompt's cached KV)."""

    gen: Generation
    shaper: ChoiceShaper
    deltas: AsyncIterator[str]
    first: str | None = None
    started: bool = False

    async def start(self) -> None:
        try:
            self.first = await self.deltas.__anext__()
        except StopAsyncIteration:
            self.first = None
        self.started = True

    async def texts(self) -> AsyncIterator[str]:
        if self.first:
            yield self.first
        async for text in self.deltas:
            yield text

    async def collect(self) -> None:
        async for text in self.texts():
            self.shaper.feed(text)
        self.shaper.finish()

    async def close(self) -> None:
        await self.deltas.aclose()  # type: ignore[attr-defined]


async def run_all(runs: list[ChoiceRun], work: Callable[[ChoiceRun], Awaitable[None]]) -> None:
    """``work`` on every choice at once; the first failure cancels the others and is raised."""
    if len(runs) == 1:
        await work(runs[0])
        return
    tasks = [asyncio.ensure_future(work(r)) for r in runs]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


async def interleaved(runs: list[ChoiceRun]) -> AsyncIterator[tuple[ChoiceRun, str | None]]:
    """Every choice's text deltas as they come, (run, None) when a choice ends."""
    if len(runs) == 1:
        run = runs[0]
        async for text in run.texts():
            yield run, text
        yield run, None
        return
    queue: asyncio.Queue[tuple[ChoiceRun, str | None, BaseException | None]] = asyncio.Queue()

    async def pump(run: ChoiceRun) -> None:
        try:
            async for text in run.texts():
                await queue.put((run, text, None))
            await queue.put((run, None, None))
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            await queue.put((run, None, e))

    tasks = [asyncio.ensure_future(pump(r)) for r in runs]
    try:
        left = len(runs)
        while left:
            run, delta, error = await queue.get()
            if error is not None:
                raise error
            if delta is None:
                left -= 1
            yield run, delta
    finally:
        for t in tasks:
            t.cancel()
