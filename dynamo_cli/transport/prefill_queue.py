"""The remote-prefill queue: a NATS JetStream stream with work-queue retention.

Decode workers publish prefill work; prefill workers pull it through one durable consumer, so each
item goes to exactly one of them. An item leaves the stream when the prefill worker acks it, after
the prefill is done: work taken by a worker that dies first is redelivered to another one after
``redelivery_s``. The depth (items queued or being prefilled) is the stream's message count.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import msgpack
import nats
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

logger = logging.getLogger(__name__)

CONSUMER = "prefill"
MAX_DELIVER = 3  # a poisoned item (it kills every worker that takes it) is dropped after this


def stream_name(namespace: str) -> str:
    return f"DYN_{namespace.replace('-', '_')}_PREFILL"


def queue_subject(namespace: str) -> str:
    return f"dyn.{namespace}.prefill.queue"


def done_subject(namespace: str, decode_id: int) -> str:
    """Where a prefill worker tells a decode worker that its prefill is done."""
    return f"dyn.{namespace}.prefill.done.{decode_id:x}"


def handshake_subject(namespace: str, prefill_id: int) -> str:
    """Where a decode worker tells a prefill worker it has handshaken with its engine (payload: the
    decode worker's instance id, hex)."""
    return f"dyn.{namespace}.prefill.handshake.{prefill_id:x}"


def release_subject(namespace: str, prefill_id: int) -> str:
    """Where a decode worker tells a prefill worker it has the KV (the staged copy can go)."""
    return f"dyn.{namespace}.prefill.release.{prefill_id:x}"


@dataclass(slots=True)
class PrefillWork:
    """One remote prefill: the prompt, whom to tell, and when the decode worker stops waiting."""

    request_id: str
    token_ids: list[int]
    reply: str
    deadline: float  # time.time() after which the decode worker has prefilled locally
    temperature: float = 0.0
    seed: int | None = None
    # The decode worker caches the first ``skip_tokens`` prompt tokens itself: only the KV after them
    # needs to move.
    skip_tokens: int = 0

    def encode(self) -> bytes:
        return msgpack.packb(
            (
                self.request_id,
                self.token_ids,
                self.reply,
                self.deadline,
                self.temperature,
                self.seed,
                self.skip_tokens,
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> PrefillWork:
        return cls(*msgpack.unpackb(data))


def encode_done(request_id: str, result: dict[str, Any]) -> bytes:
    return msgpack.packb((request_id, result))


def decode_done(data: bytes) -> tuple[str, dict[str, Any]]:
    rid, result = msgpack.unpackb(data, strict_map_key=False)
    return rid, result


class PrefillQueue:
    def __init__(self, nc: nats.NATS, namespace: str):
        self.js = nc.jetstream()
        self.stream = stream_name(namespace)
        self.subject = queue_subject(namespace)

    @classmethod
    async def open(cls, nc: nats.NATS, namespace: str, *, redelivery_s: float) -> PrefillQueue:
        """Create the stream and its consumer if they do not exist (every worker may race to)."""
        q = cls(nc, namespace)
        config = StreamConfig(
            name=q.stream,
            subjects=[q.subject],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.MEMORY,  # a throwaway queue of in-flight work: no disk in the way
            max_age=3600.0,
        )
        try:
            await q.js.add_stream(config)
        except BadRequestError:  # it exists with other settings (e.g. from an older run)
            await q.js.update_stream(config)
        consumer = ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=redelivery_s,
            max_deliver=MAX_DELIVER,
        )
        try:
            await q.js.add_consumer(q.stream, consumer)
        except BadRequestError:
            info = await q.js.consumer_info(q.stream, CONSUMER)
            if info.config.ack_wait != redelivery_s:
                logger.warning(
                    "the prefill queue's consumer exists with a redelivery time of %s s, not %s s",
                    info.config.ack_wait, redelivery_s,
                )  # fmt: skip
        return q

    async def put(self, work: PrefillWork) -> None:
        await self.js.publish(self.subject, work.encode(), stream=self.stream)

    async def depth(self) -> int:
        """Prefills queued or in progress (not yet acked)."""
        info = await self.js.stream_info(self.stream)
        return int(info.state.messages)

    async def puller(self) -> Puller:
        sub = await self.js.pull_subscribe_bind(durable=CONSUMER, stream=self.stream)
        return Puller(sub)


class Puller:
    """A prefill worker's end of the queue."""

    def __init__(self, sub: Any):
        self._sub = sub

    async def next(self, wait_s: float = 1.0) -> Any | None:
        """The next work message (ack it when done), or None if none came within ``wait_s``."""
        try:
            msgs = await self._sub.fetch(1, timeout=wait_s)
        except (NatsTimeoutError, asyncio.TimeoutError):
            return None
        except NotFoundError:
            await asyncio.sleep(wait_s)  # the stream went away (e.g. NATS restarted); retry later
            return None
        return msgs[0] if msgs else None

    async def close(self) -> None:
        try:
            await self._sub.unsubscribe()
        except Exception:  # closing on the way out; the connection may already be gone
            logger.debug("unsubscribing the prefill puller failed", exc_info=True)
