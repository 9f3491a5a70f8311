"""Why a disaggregated request was prefilled locally after all, logged without flooding the log.

Each cause is logged the first time it happens in a process, then at most once a minute, with how many
happened since. The frontend's ``dynamo_disagg_prefill_decisions_total{outcome="fallback"}`` counts
every one of them, by the same cause.
"""

from __future__ import annotations

import logging
import threading
import time

# Causes a decode worker names when a remote prefill does not happen (metric reasons too).
HANDSHAKE = "handshake"  # a prefill engine not handshaken with (yet), or its handshake failed
KV_LEASE = "kv_lease"  # the prefill engine's KV lease was over, or too nearly, where the pull starts
SIDE_CHANNEL = "side_channel"  # the prefill engine's side channel does not answer (engine gone?)
TRANSFER = "transfer_failed"  # the pull itself failed, or its params could not be used
PREFILL_TIMEOUT = "prefill_timeout"  # no prefill result, or no KV, in time
EVERY_S = 60.0


class FallbackLog:
    def __init__(self, logger: logging.Logger, every_s: float = EVERY_S):
        self.logger = logger
        self.every_s = every_s
        self._seen: dict[str, list[float]] = {}  # cause -> [when last logged, how many since]
        self._lock = threading.Lock()  # vLLM's scheduler hook runs on the engine core's thread

    def note(self, cause: str, detail: str) -> None:
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(cause)
            if seen is None:
                self._seen[cause] = [now, 0]
                self.logger.warning(
                    "prefilling locally (%s): %s; from now on this cause is logged at most once a "
                    "minute, and counted in dynamo_disagg_prefill_decisions_total",
                    cause,
                    detail,
                )
                return
            seen[1] += 1
            if now - seen[0] < self.every_s:
                return
            count, elapsed = int(seen[1]), now - seen[0]
            seen[0], seen[1] = now, 0
        self.logger.warning(
            "prefilled locally %d more time(s) (%s) in the last %.0f s; the latest: %s",
            count,
            cause,
            elapsed,
            detail,
        )


FALLBACKS = FallbackLog(logging.getLogger("dynamo_cli.disagg"))
