"""What roles say to each other over the request plane: subjects and msgpack payloads."""

from __future__ import annotations

from typing import Any

import msgpack

from dynamo_cli.transport.wire import EngineOutput, EngineRequest, KvEvent, LoadMetrics, SamplingOptions

WORKER = "worker"
ROUTER = "router"
FRONTEND = "frontend"

_pack = msgpack.Packer(use_bin_type=True).pack


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def endpoint_subject(namespace: str, component: str, endpoint: str, instance_id: int) -> str:
    return f"dyn.{namespace}.{component}.{endpoint}.{instance_id:x}"


def kv_events_subject(namespace: str) -> str:
    return f"dyn.{namespace}.kv_events"


def load_subject(namespace: str) -> str:
    return f"dyn.{namespace}.load"


# ---- frontend -> worker: generate -----------------------------------------------------------------
# Sampling fields sent only when not at their default (most requests use none of them).
_OPTIONAL: dict[str, Any] = {
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "min_p": 0.0,
    "logprobs": None,
    "prompt_logprobs": None,
    "structured": None,
    "structured_replay": 0,
    "logprobs_json": False,
}


def encode_generate(req: EngineRequest, traceparent: str | None = None) -> bytes:
    """``traceparent`` (W3C, tracing on) makes the worker's span a child of the frontend's; a peer that
    does not trace ignores it."""
    s = req.sampling
    m: dict[str, Any] = {
        "id": req.request_id,
        "t": req.prompt_token_ids,
        "max": s.max_tokens,
        "temp": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "seed": s.seed,
        "ign": s.ignore_eos,
        "min": s.min_tokens,
        "stop": s.stop_token_ids,
        "kv": req.kv_transfer_params,
    }
    for name, default in _OPTIONAL.items():
        if getattr(s, name) != default:
            m[name] = getattr(s, name)
    if s.logit_bias:
        m["logit_bias"] = [[t, b] for t, b in s.logit_bias.items()]
    if traceparent is not None:
        m["tp"] = traceparent
    return _pack(m)


def decode_generate(data: bytes) -> EngineRequest:
    return decode_generate_traced(data)[0]


def decode_generate_traced(data: bytes) -> tuple[EngineRequest, str | None]:
    """The request and the traceparent it came with (None: not traced)."""
    m = unpack(data)
    return _request(m), m.get("tp")


def _request(m: dict[str, Any]) -> EngineRequest:
    return EngineRequest(
        request_id=m["id"],
        prompt_token_ids=m["t"],
        sampling=SamplingOptions(
            max_tokens=m["max"],
            temperature=m["temp"],
            top_p=m["top_p"],
            top_k=m["top_k"],
            seed=m["seed"],
            ignore_eos=m["ign"],
            min_tokens=m["min"],
            stop_token_ids=m["stop"],
            logit_bias={int(t): float(b) for t, b in m["logit_bias"]} if m.get("logit_bias") else None,
            **{name: m[name] for name in _OPTIONAL if name in m},
        ),
        kv_transfer_params=m.get("kv"),
    )


def encode_output(out: EngineOutput) -> bytes:
    if out.logprobs is not None or out.prompt_logprobs is not None or out.logprobs_json is not None:
        return _pack(
            (
                out.token_ids, out.finish_reason, out.cached_tokens, out.error, out.kv_transfer_params,
                out.disagg, out.logprobs, out.prompt_logprobs, out.logprobs_json,
            )
        )  # fmt: skip
    if out.kv_transfer_params is None and out.disagg is None:
        return _pack((out.token_ids, out.finish_reason, out.cached_tokens, out.error))
    return _pack(
        (out.token_ids, out.finish_reason, out.cached_tokens, out.error, out.kv_transfer_params, out.disagg)
    )


def decode_output(data: bytes) -> EngineOutput:
    return EngineOutput(*unpack(data))  # logprobs arrive as lists: (lp, ids, lps) is [lp, ids, lps]


# ---- worker -> router: KV events and load -----------------------------------------------------------
def encode_kv_events(worker_id: int, events: list[KvEvent]) -> bytes:
    return _pack(
        (worker_id, [(e.event_id, e.kind, e.block_hashes, e.parent_hash, e.token_ids) for e in events])
    )


def decode_kv_events(data: bytes) -> tuple[int, list[KvEvent]]:
    worker_id, raw = unpack(data)
    return worker_id, [KvEvent(eid, kind, hashes, parent, toks) for eid, kind, hashes, parent, toks in raw]


def encode_load(worker_id: int, load: LoadMetrics) -> bytes:
    return _pack((worker_id, load.running, load.waiting, load.active_blocks, load.total_blocks))


def decode_load(data: bytes) -> tuple[int, LoadMetrics]:
    worker_id, running, waiting, active, total = unpack(data)
    return worker_id, LoadMetrics(running, waiting, active, total)


# ---- frontend -> router: route, and what became of the request -------------------------------------
FIRST_TOKEN, COMPLETE = 1, 2


def encode_route(
    model: str,
    n_tokens: int,
    exclude: list[int],
    request_id: str = "",
    hashes: list[int] | None = None,
    traceparent: str | None = None,
) -> bytes:
    m = {"model": model, "n": n_tokens, "exclude": exclude, "rid": request_id, "h": hashes or []}
    if traceparent is not None:
        m["tp"] = traceparent  # the router's decision span joins the request's trace
    return _pack(m)


def lifecycle_subject(namespace: str) -> str:
    return f"dyn.{namespace}.router.lifecycle"


def decisions_subject(namespace: str) -> str:
    return f"dyn.{namespace}.router.decisions"


def decode_route(data: bytes) -> dict[str, Any]:
    return unpack(data)


# ---- planner -> frontend: scaling decisions (counted in the frontend's metrics) --------------------
def planner_subject(namespace: str) -> str:
    return f"dyn.{namespace}.planner.decisions"


def encode_decision(group: str, current: int, target: int, reason: str) -> bytes:
    return _pack({"group": group, "current": current, "target": target, "reason": reason})


def decode_decision(data: bytes) -> dict[str, Any]:
    return unpack(data)


def deaths_subject(namespace: str) -> str:
    """Where a launcher says that a process it started died (it is the parent: it knows at once)."""
    return f"dyn.{namespace}.process.died"


def encode_death(host: str, pid: int, name: str, why: str) -> bytes:
    return _pack({"host": host, "pid": pid, "name": name, "why": why})


def decode_death(data: bytes) -> dict[str, Any]:
    return unpack(data)
