"""Large request bodies are parsed in other processes: the answers match in-place parsing, errors cross
the process boundary intact, and a parsing process that dies is replaced."""

from __future__ import annotations

import os
import signal

import orjson
import pytest

from dynamo_cli.config.models import FrontendConfig
from dynamo_cli.frontend.limits import RequestLimits
from dynamo_cli.frontend.parsing import INLINE_BYTES, BodyParser
from dynamo_cli.frontend.schemas import OpenAIError

pytestmark = pytest.mark.integration

LIMITS = RequestLimits.build(FrontendConfig(), context=8192, longest_token=81)


def _chat(content: str) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": content}]})


async def test_large_bodies_are_parsed_in_other_processes() -> None:
    parser = BodyParser(LIMITS)
    try:
        await parser.warm_up()
        pids = {p.pid for p in parser._pool._processes.values()}  # type: ignore[union-attr]
        assert len(pids) == 2 and os.getpid() not in pids
        body = _chat("x" * (INLINE_BYTES * 4))
        assert await parser.parse(body, chat=True) == orjson.loads(body)
        with pytest.raises(OpenAIError) as e:  # a cap, raised in the child, arrives whole
            await parser.parse(_chat("a" * (8192 * 81)), chat=True)
        assert (e.value.status, e.value.param, e.value.code) == (400, "messages", "context_length_exceeded")
        with pytest.raises(OpenAIError) as e:
            await parser.parse(b"[" * (INLINE_BYTES * 2), chat=True)
        assert e.value.code == "invalid_json"

        for pid in pids:  # parsing processes die: the request fails clearly, the next one works
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(OpenAIError) as e:
            await parser.parse(body, chat=True)
        assert e.value.status == 503
        assert await parser.parse(body, chat=True) == orjson.loads(body)
    finally:
        parser.close()
