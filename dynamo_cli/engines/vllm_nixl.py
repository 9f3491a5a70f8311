"""vLLM's NixlConnector for disaggregated serving: the connector's config, the params a prefill hands
to a decode engine, and the checks that keep a decode engine from waiting forever or reading the wrong
KV (vLLM 0.32 would do both). Imported by the vLLM engine only; needs vLLM only where it says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import logging
import os
import time
import uuid
from array import array
from typing import TYPE_CHECKING, Any

from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.errors import StartupError
from dynamo_cli.kv.fallbacks import FALLBACKS, KV_LEASE, SIDE_CHANNEL, TRANSFER
from dynamo_cli.transport.ports import advertised_host, listen_port
from dynamo_cli.transport.wire import EngineRequest

logger = logging.getLogger(__name__)

# Ours, in a prefill's params (vLLM ignores them): the unix time the prefill engine's KV lease ends and
# the lease (disagg.kv_lease_s), and a fingerprint of the prompt (vLLM would take KV computed for other
# tokens without a word; a decode engine strips it).
EXPIRES_KEY = "dynamo_expires_at"
LEASE_KEY = "dynamo_lease_s"
PROMPT_KEY = "dynamo_prompt"
# Set only by tests: the decode engine's scheduler sleeps this long where a pull starts, as a stalled
# decode engine would (the lease check must then refuse the pull).
STALL_ENV = "DYNAMO_TEST_STALL_PULL_S"
_SLEEPING_KEY = "dynamo_sleeping_progress_thread"  # in vLLM's kv_connector_extra_config: on CPU
_REMOTE_KEYS = ("remote_engine_id", "remote_request_id", "remote_host", "remote_port", "remote_block_ids")
_PROBE_TIMEOUT_S = 1.0
_PROBE_TTL_S = 2.0  # a side channel that answered is not probed again for this long
_MAX_CONSUMED = 8192  # remembered (engine, request) pairs whose KV this engine already pulled
_NIXL_RESERVED_CPUS = 2  # cores vLLM on CPU keeps off its OpenMP threads when a KV connector runs
_hosts_we_set: dict[str, str] = {}


def side_channel_host(cfg: DynamoConfig) -> str:
    """The address a prefill engine's NIXL side channel binds and advertises to decode engines: the
    deployment's advertised host, or VLLM_NIXL_SIDE_CHANNEL_HOST when the user (not an engine of this
    process) set it."""
    explicit = os.environ.get("VLLM_NIXL_SIDE_CHANNEL_HOST")
    if explicit and explicit != _hosts_we_set.get("host"):
        return explicit
    return advertised_host(cfg.infra.nats, cfg.frontend.host)


if not TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any name on this module

    def __getattr__(name: str) -> Any:
        """vLLM's KV connector factory finds its NixlConnector here (kv_connector_module_path), in
        the engine's own processes: vLLM's class with two changes measured on 2 cores, and the lease
        check where a pull starts (get_num_new_matched_tokens).

        - On CPU its NIXL agent gets a progress thread that sleeps between UCX events. NIXL's default
          thread polls with no pause and burns a core per engine, idle or not; without any thread an
          idle prefill engine never answers the decode engine's UCX reads, and the pull hangs.
        - The engine's main thread keeps its cores. vLLM's NIXL worker moves the thread that builds it
          (the model runner's, also OpenMP's main thread) onto the last core of each NUMA node, "for KV
          transfers": two engines on one machine then compute on the same core, and a prefill engine
          stepping while it holds KV for a decode engine starved that decode engine's thread for the
          whole KV lease (18 s to a first token instead of 2.5).
        """
        if name != "NixlConnector":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return _connector_class()


def _connector_class() -> Any:
    import sys

    from vllm.distributed.kv_transfer.kv_connector.v1.nixl import base_worker
    from vllm.distributed.kv_transfer.kv_connector.v1.nixl.connector import NixlConnector

    from dynamo_cli.kv.nixl_backend import progress_thread_delay

    class DynamoNixlConnector(NixlConnector):  # type: ignore[misc,valid-type]
        def __init__(self, vllm_config: Any, *args: Any, **kwargs: Any):
            cores = os.sched_getaffinity(0)
            agent_cls = base_worker.NixlWrapper
            sleeping = vllm_config.kv_transfer_config.get_from_extra_config(_SLEEPING_KEY, False)
            try:
                if sleeping and agent_cls is not None:
                    with progress_thread_delay(sys.modules[agent_cls.__module__]):
                        super().__init__(vllm_config, *args, **kwargs)
                else:
                    super().__init__(vllm_config, *args, **kwargs)
            finally:
                if os.sched_getaffinity(0) != cores:
                    os.sched_setaffinity(0, cores)

        def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> Any:
            """The decode engine's scheduler, right before it starts a pull: refuse KV whose lease is
            over or too nearly (the prefill engine may reuse its blocks), and prefill locally."""
            params = request.kv_transfer_params
            if params and params.get("do_remote_prefill"):
                stall = os.environ.get(STALL_ENV)
                if stall:
                    time.sleep(float(stall))
                late = lease_running_out(params)
                if late is not None:
                    FALLBACKS.note(
                        KV_LEASE,
                        f"request {request.request_id}: {late:.1f} s left of the prefill engine's KV "
                        "lease where the pull would start",
                    )
                    for key in (*_REMOTE_KEYS, EXPIRES_KEY):
                        params.pop(key, None)
                    params["do_remote_prefill"] = False
                    return 0, False
            return super().get_num_new_matched_tokens(request, num_computed_tokens)

    return DynamoNixlConnector


def lease_running_out(params: dict[str, Any]) -> float | None:
    """Seconds left of the KV lease the params' KV is held under, when too few are left to start a
    pull (the pull and the prefill engine's clock against ours must fit in a third of the lease, at
    most 5 s); None when enough are left, or the params carry no lease stamp."""
    expires, lease = params.get(EXPIRES_KEY), float(params.get(LEASE_KEY) or 0)
    if not isinstance(expires, (int, float)):
        return None
    left = float(expires) - time.time()
    return left if left < (min(5.0, lease / 3) if lease > 0 else 5.0) else None


def _plain(value: Any) -> Any:
    """vLLM's params (tuples of block-id lists) as plain msgpack-able lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def prompt_fingerprint(token_ids: list[int]) -> str:
    return hashlib.blake2b(array("q", token_ids).tobytes(), digest_size=8).hexdigest()


def num_remote_blocks(params: dict[str, Any]) -> int:
    """KV blocks a prefill's params point at (vLLM nests them per KV cache group)."""
    blocks = params.get("remote_block_ids") or []
    if blocks and isinstance(blocks[0], int):
        return len(blocks)
    return sum(len(group) for group in blocks)


def kv_transfer_config(cfg: DynamoConfig, on_gpu: bool) -> tuple[Any, tuple[str, int]]:
    """vLLM's KV transfer config: NixlConnector, both roles (a decode worker also prefills locally),
    a fresh engine id, and the (host, port) of this engine's side channel. The side channel and the
    CPU reservation are read from the environment by vLLM's engine core when it starts."""
    if importlib.util.find_spec("nixl") is None:
        raise StartupError(
            "disaggregated serving with vLLM needs NIXL, which is not installed",
            hint="run scripts/install.sh (it installs nixl), or set disagg.remote_prefill: false",
        )
    from vllm.config import KVTransferConfig

    host = side_channel_host(cfg)
    port = listen_port(host)
    os.environ["VLLM_NIXL_SIDE_CHANNEL_HOST"] = _hosts_we_set["host"] = host
    os.environ["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(port)
    if not on_gpu and len(os.sched_getaffinity(0)) <= _NIXL_RESERVED_CPUS:
        # With a KV connector vLLM keeps 2 cores off its OpenMP threads (scheduler + NIXL); with no
        # more than that it keeps none, and its spinning scheduler then starves the OpenMP barrier:
        # ~190 ms per decode step instead of ~3 on 2 cores. One reserved core restores the speed.
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")
    # vLLM's connector class from here on any device (the lease check where a pull starts, see
    # __getattr__); host memory on CPU.
    extra: dict[str, Any] = {"kv_connector_module_path": __name__}
    if not on_gpu:
        extra["kv_buffer_device"] = "cpu"
    config = KVTransferConfig(
        kv_connector="NixlConnector",
        engine_id=str(uuid.uuid4()),
        kv_role="kv_both",
        # A load that fails (peer gone, handshake refused, transfer error) recomputes locally
        # instead of failing the request (vLLM's default is "fail").
        kv_load_failure_policy="recompute",
        kv_connector_extra_config={
            "kv_lease_duration": cfg.disagg.kv_lease_s,
            # No eviction of idle prefill engines (vLLM: after an hour): the next request would pay
            # for a new handshake. Decode workers drop an engine when discovery says it left.
            "engine_ttl": 0,
            _SLEEPING_KEY: not on_gpu,
        },
        **extra,
    )
    return config, (host, port)


def prefill_result(request: EngineRequest, params: dict[str, Any], lease_s: int) -> dict[str, Any]:
    out: dict[str, Any] = _plain(params)
    if out.get("remote_block_ids"):
        out[EXPIRES_KEY] = time.time() + lease_s
        out[LEASE_KEY] = lease_s
        out[PROMPT_KEY] = prompt_fingerprint(request.prompt_token_ids)
    return out


class PullPlanner:
    """A decode engine's side: which params to give vLLM, or why to prefill locally instead."""

    def __init__(self, cfg: DynamoConfig):
        self.cfg = cfg
        self._consumed: dict[tuple[str, str], None] = {}
        self._side_channel_ok: dict[tuple[str, int], float] = {}

    def transfer_plan(self, request: EngineRequest) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
        """(kv_transfer_params for vLLM, None), or (None, (cause, why this request prefills locally)).

        A prefill request's params go through as they are. A decode request's (a prefill's output, as
        is) get what vLLM's NixlConnector wants: do_remote_prefill on, block ids as a tuple per KV cache
        group, the prompt's fingerprint gone (the lease stamp stays, for the check where the pull
        starts). Params vLLM would wait on forever (incomplete), or read the wrong KV with (past their
        lease, already pulled once, another prompt's) are refused.
        """
        params = request.kv_transfer_params
        if not params:
            return None, None
        if not self.cfg.disagg.remote_prefill:
            return None, (TRANSFER, "disaggregation is off on this engine (disagg.remote_prefill)")
        if params.get("do_remote_decode"):
            return dict(params), None
        missing = [k for k in _REMOTE_KEYS if params.get(k) in (None, "", [])]
        if missing:
            return None, (TRANSFER, f"the prefill's params lack {', '.join(missing)}")
        if num_remote_blocks(params) == 0:
            return None, (TRANSFER, "the prefill's params point at no KV blocks")
        fingerprint = params.get(PROMPT_KEY)
        if fingerprint is not None and fingerprint != prompt_fingerprint(request.prompt_token_ids):
            return None, (TRANSFER, "the prefill computed another prompt")
        if lease_running_out(params) is not None:
            return None, (KV_LEASE, "the prefill's KV lease is over or nearly (its blocks may be reused)")
        key = (str(params["remote_engine_id"]), str(params["remote_request_id"]))
        if key in self._consumed:
            return None, (TRANSFER, "these params were used already (their blocks are freed)")
        kv = {k: v for k, v in params.items() if k != PROMPT_KEY}
        blocks = kv["remote_block_ids"]
        kv["remote_block_ids"] = tuple(list(g) for g in ([blocks] if isinstance(blocks[0], int) else blocks))
        kv["do_remote_prefill"], kv["do_remote_decode"] = True, False
        return kv, None

    async def side_channel_answers(self, host: str, port: int) -> bool:
        """A dead prefill engine costs vLLM a 5 s handshake timeout; a refused connect costs nothing."""
        now = time.monotonic()
        if self._side_channel_ok.get((host, port), 0.0) > now:
            return True
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), _PROBE_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        self._side_channel_ok[(host, port)] = now + _PROBE_TTL_S
        return True

    async def plan(
        self, request: EngineRequest, kv_bytes_per_block: int
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(kv_transfer_params for vLLM, what a decode reports on its first output as ``disagg``)."""
        kv, why = self.transfer_plan(request)
        if kv is not None and not kv.get("do_remote_decode"):
            if not await self.side_channel_answers(kv["remote_host"], int(kv["remote_port"])):
                kv, why = (
                    None,
                    (SIDE_CHANNEL, "the prefill engine's side channel does not answer (engine gone?)"),
                )
            else:
                self._consumed[(str(kv["remote_engine_id"]), str(kv["remote_request_id"]))] = None
                while len(self._consumed) > _MAX_CONSUMED:
                    del self._consumed[next(iter(self._consumed))]
                n = num_remote_blocks(kv)
                return kv, {"kv_transfer": "nixl", "kv_blocks": n, "kv_bytes": n * kv_bytes_per_block}
        if why is None:
            return kv, None
        cause, text = why
        FALLBACKS.note(cause, f"request {request.request_id}: {text}")
        return None, {"kv_transfer": "local", "cause": cause, "reason": text}
