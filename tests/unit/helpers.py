"""Helpers the unit tests share."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest


async def until(cond: Callable[[], object], steps: int = 1000) -> None:
    """Yield to the loop until cond() holds; fail the test if it never does."""
    for _ in range(steps):
        if cond():
            return
        await asyncio.sleep(0)
    pytest.fail(f"still not true after {steps} turns of the loop")
