"""Fuzzing the API: how many requests were tried, what they were answered, and how many answers were
server errors (the target: none). Two campaigns against one deployment:

- mutations of real request bodies (chat, completions, responses; the SEEDS below), one to three each:
  wrong types, huge numbers, NaN and Infinity literals, empty and enormous strings, lone surrogates,
  invalid UTF-8, deep nesting, unknown roles and content parts, missing, unknown and duplicated fields,
  broken JSON; drawn from one seeded generator, so the same seed gives the same cases;
- schemathesis over the served /openapi.json: bodies that fit the document and bodies that do not, each
  answer also checked against the document (status, content type, body schema).

    .venv/bin/python -m benchmarks.fuzz [--cases 3000] [--examples 60] [--seed 0] [--json]

Starts `dynamo run agg --engine mocker` (speedup 1000) on the embedded model's tokenizer with its context
cut to 512 tokens, so that an input the server accepts costs a short generation. A finding is a 5xx, a
non-2xx answer not in OpenAI's error shape, a server error inside a stream, an answer the document does
not describe, or no answer within the timeout; each is printed with what was sent (``--dump DIR`` writes
the bodies). Afterwards every process must be the one started, and /health must answer 200.
tests/e2e/test_fuzz.py runs the same against a deployment of its own and asserts there are no findings.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from dynamo_cli.deployment.handle import Deployment, process_alive, start
from dynamo_cli.models.embedded import prepare_tokenizer_folder

CHAT, COMPLETIONS, RESPONSES = "/v1/chat/completions", "/v1/completions", "/v1/responses"
CONTEXT = 512
MiB = 1 << 20


# ---- JSON with what JSON libraries will not write ----------------------------------------------------
class Raw(bytes):
    """JSON text put into the body as it is (NaN, a lone surrogate escape, invalid UTF-8, nesting)."""


@dataclass
class Dup:
    """A JSON object that may name a key twice."""

    pairs: list[tuple[str, Any]]


def encode(v: Any) -> bytes:
    if isinstance(v, Raw):
        return bytes(v)
    if isinstance(v, dict):
        v = Dup(list(v.items()))
    if isinstance(v, Dup):
        return b"{" + b",".join(orjson.dumps(k) + b":" + encode(x) for k, x in v.pairs) + b"}"
    if isinstance(v, list):
        return b"[" + b",".join(map(encode, v)) + b"]"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v).encode()  # any size
    return orjson.dumps(v)


# ---- the real bodies --------------------------------------------------------------------------------
_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
_HISTORY = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [_CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
]
_Q = [{"role": "user", "content": "What is the capital of France?"}]
SEEDS: list[tuple[str, dict[str, Any]]] = [
    (CHAT, {"messages": [{"role": "system", "content": "Answer in one word."}, *_Q], "max_tokens": 8,
            "temperature": 0}),
    (CHAT, {"messages": _Q, "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True},
            "n": 2, "logprobs": True, "top_logprobs": 2, "stop": ["\n"], "seed": 3}),
    (CHAT, {"messages": _HISTORY, "tools": [_TOOL], "tool_choice": "required", "max_tokens": 24}),
    (CHAT, {"messages": _Q, "tools": [_TOOL], "max_tokens": 24, "parallel_tool_calls": False,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    (CHAT, {"messages": _Q, "max_tokens": 12, "response_format": {"type": "json_schema", "json_schema": {
            "name": "city", "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}}}),
    (CHAT, {"messages": _Q, "max_tokens": 4, "guided_choice": ["Paris", "Lyon"], "top_p": 0.9, "top_k": 20}),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "Count to three."}]}],
            "max_tokens": 4, "min_tokens": 2, "logit_bias": {"42": 5}, "presence_penalty": 0.5,
            "frequency_penalty": 0.1, "repetition_penalty": 1.1, "min_p": 0.05, "user": "u1"}),
    (CHAT, {"messages": _Q, "max_completion_tokens": 5, "chat_template_kwargs": {"enable_thinking": False},
            "add_generation_prompt": True, "skip_special_tokens": False, "stream": True}),
    (COMPLETIONS, {"prompt": "The capital of France is", "max_tokens": 8, "echo": True, "logprobs": 2}),
    (COMPLETIONS, {"prompt": [1, 2, 3, 4], "max_tokens": 6, "stream": True, "stop_token_ids": [5],
                   "ignore_eos": True}),
    (COMPLETIONS, {"prompt": [[10, 20, 30]], "max_tokens": 3, "prompt_logprobs": 1, "temperature": 0.5}),
    (COMPLETIONS, {"prompt": ["Once upon a time"], "max_tokens": 5, "n": 1, "best_of": 1,
                   "structured_outputs": {"regex": "[a-z ]+"}}),
    (RESPONSES, {"input": "Say hello.", "instructions": "Be brief.", "max_output_tokens": 8}),
    (RESPONSES, {"input": [
        {"type": "message", "role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"}],
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        "tool_choice": "auto", "max_output_tokens": 16}),
    (RESPONSES, {"input": "Name a city.", "max_output_tokens": 12, "stream": True,
                 "text": {"format": {"type": "json_schema", "name": "c", "schema": {"type": "object"}}}}),
    (RESPONSES, {"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
                 "temperature": 0.2, "top_p": 0.5, "store": False, "metadata": {"k": "v"},
                 "max_output_tokens": 4}),
]  # fmt: skip


# ---- mutations ------------------------------------------------------------------------------------------
_WRONG = [0, -1, 1.5, True, False, None, "", "x", "1", "true", [], {}, [1], ["a"], {"a": 1}, [None]]
_HUGE = [10**20, -(10**20), 2**63, 2**64, -(2**63) - 1, 10**400, 1e308, -1e308, 5e-324,
         Raw(b"1e400"), Raw(b"-1e999"), Raw(b"9" * 500), Raw(b"0.0000000000000000000001e-400")]  # fmt: skip
_NAN = [Raw(b"NaN"), Raw(b"Infinity"), Raw(b"-Infinity"), Raw(b"nan"), Raw(b"inf")]
_SURROGATES = [Raw(b'"\\ud800"'), Raw(b'"a\\udc00b"'), Raw(b'"\\ud83d"'), Raw(b'"\\udfff\\ud800"'),
               Raw(b'"\xed\xa0\x80"'), Raw(b'"\\ud83d\\ude00 ok"')]  # fmt: skip
_BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80", b"\xfe\xfe"]
# The last two: bytes the embedded model's vocabulary has no token of its own for.
_ODD = ["\u0000", "\n\r\t", "\u202e\u200b", "{{ 7*7 }}", "{% for x in range(9) %}x{% endfor %}",
        "<|im_start|>system\nx<|im_end|>", "</s><s>", "%s%n", "\\", '"',
        "a\u0004b", "\U0006c22b"]  # fmt: skip
_ROLES = ["wizard", "", "USER", "function", "tool", "assistant", "developer", 5, None, ["user"], {"r": 1}]
_PARTS: list[Any] = [
    [{"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}],
    [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
    [{"type": "file", "file": {}}], [{"type": "text"}], [{"type": "text", "text": 5}],
    [{"type": "text", "text": None}], [{"text": "no type"}], [{"type": {"t": 1}, "text": "x"}],
    ["plain"], [None], [[]], [], [{"type": "refusal", "refusal": "no"}],
    [{"type": "input_text", "text": "x"}], [{"type": "output_text", "text": "x"}],
    [{"type": "reasoning", "text": "x"}],
]  # fmt: skip
_CALLS: list[Any] = [
    [{"function": {"name": 5, "arguments": {}}}], [{"id": 1, "type": "x", "function": None}], ["call"],
    [{"type": "function", "function": {"name": "f", "arguments": "{not json"}}], {}, [{}], "calls",
]  # fmt: skip


def _enormous(rng: random.Random) -> Raw:
    """A long JSON string, written as bytes (1 MiB of text costs nothing to make this way)."""
    size = rng.choices([64 << 10, MiB, 17 * MiB], [30, 10, 1])[0]  # 17 MiB: over the 16 MiB body limit
    unit = rng.choice(
        [b"a", b"hello ", "\U0001f389".encode(), b"\\\\", "\u00e9t\u00e9 ".encode(), b"\\u00e9"]
    )
    return Raw(b'"' + unit * (size // len(unit)) + b'"')


def _long_array(rng: random.Random) -> Raw:
    item = rng.choice([b"1", b'"a"', b"{}", b"null", b"[]"])
    return Raw(b"[" + (item + b",") * (rng.choice([100, 5000, 300_000]) - 1) + item + b"]")


def _deep(rng: random.Random) -> Raw:
    depth = rng.choice([64, 500, 1023, 1100, 10**5])
    if rng.random() < 0.5:
        return Raw(b"[" * depth + b"]" * depth)
    return Raw(b'{"a":' * depth + b"1" + b"}" * depth)


# Each: rng -> the value to put in place of the one chosen.
VALUES: dict[str, Callable[[random.Random], Any]] = {
    "wrong type": lambda r: r.choice(_WRONG),
    "huge number": lambda r: r.choice(_HUGE),
    "NaN literal": lambda r: r.choice(_NAN),
    "empty string": lambda r: "",
    "enormous string": _enormous,
    "lone surrogate": lambda r: r.choice(_SURROGATES),
    "invalid UTF-8": lambda r: Raw(b'"ok ' + r.choice(_BAD_UTF8) + b' ok"'),
    "odd text": lambda r: r.choice(_ODD),
    "deep nesting": _deep,
    "long array": _long_array,
}


def _slots(v: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in ``v``: a place a value can be replaced or removed."""
    out: list[tuple[Any, Any]] = []
    stack = [v]
    while stack:
        node = stack.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for k in keys:
            out.append((node, k))
            stack.append(node[k])
    return out


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    items = body.get("messages", body.get("input"))
    return [m for m in items if isinstance(m, dict)] if isinstance(items, list) else []


@dataclass
class Case:
    index: int
    path: str
    body: bytes
    what: str  # the seed and the mutations, for the report


class Mutator:
    """Cases from the real bodies, drawn from one seeded generator."""

    def __init__(self, model: str, seed: int = 0):
        self.model = model
        self.rng = random.Random(seed)
        self.n = 0

    def case(self) -> Case:
        rng = self.rng
        seed = rng.randrange(len(SEEDS))
        path, base = SEEDS[seed]
        body: dict[str, Any] = {"model": self.model, **copy.deepcopy(base)}
        done = [self._mutate(body) for _ in range(rng.choices([1, 2, 3], [7, 2, 1])[0])]
        top: Any = body
        if rng.random() < 0.06:
            top, what = self._duplicate(body)
            done.append(what)
        raw = encode(top)
        if rng.random() < 0.06:
            raw, what = self._break(raw)
            done.append(what)
        self.n += 1
        return Case(self.n - 1, path, raw, f"seed {seed}: " + ", ".join(done))

    def _mutate(self, body: dict[str, Any]) -> str:
        rng = self.rng
        kind = rng.choices(
            ["value", "delete", "unknown field", "role", "content part", "tool calls", "stream"],
            [14, 3, 1, 2, 2, 1, 1],
        )[0]
        messages = _messages(body)
        if kind == "role" and messages:
            rng.choice(messages)["role"] = rng.choice(_ROLES)
        elif kind == "content part" and messages:
            rng.choice(messages)["content"] = copy.deepcopy(rng.choice(_PARTS))
        elif kind == "tool calls" and messages:
            rng.choice(messages)["tool_calls"] = copy.deepcopy(rng.choice(_CALLS))
        elif kind == "stream":
            body["stream"] = not body.get("stream")
        elif kind == "unknown field":
            body[rng.choice(["x_fuzz", "", "__proto__", "k" * 5000, "\u00e9\u00e9", "model "])] = 1
        else:
            container, key = rng.choice(_slots(body))
            if kind == "delete":
                del container[key]
                return f"delete {key!r}"
            what = rng.choice(list(VALUES))
            container[key] = VALUES[what](rng)
            return f"{what} at {key!r}"
        return kind

    def _duplicate(self, body: dict[str, Any]) -> tuple[Any, str]:
        """``body`` with one of its objects naming a key twice (the body itself, or one inside it)."""
        rng = self.rng
        places = [(c, k) for c, k in _slots(body) if isinstance(c[k], dict) and c[k]]
        container, key = rng.choice(places) if places and rng.random() < 0.5 else (None, None)
        obj = body if container is None else container[key]
        pairs = list(obj.items())
        name = rng.choice(pairs)[0]
        pairs.insert(rng.randrange(len(pairs) + 1), (name, rng.choice(_WRONG)))
        if container is None:
            return Dup(pairs), f"duplicated {name!r}"
        container[key] = Dup(pairs)
        return body, f"duplicated {name!r} in {key!r}"

    def _break(self, raw: bytes) -> tuple[bytes, str]:
        rng = self.rng
        how = rng.choice(["truncated", "trailing garbage", "BOM", "not an object", "empty"])
        if how == "truncated":
            return raw[: rng.randrange(len(raw))], how
        if how == "trailing garbage":
            return raw + rng.choice([b"}", b" x", b"\x00", b",{}"]), how
        if how == "BOM":
            return b"\xef\xbb\xbf" + raw, how
        if how == "not an object":
            return rng.choice([b"[]", b"null", b"1", b'"s"', b"[" + raw + b"]"]), how
        return rng.choice([b"", b"   "]), how


# ---- sending them ---------------------------------------------------------------------------------------
_ERROR_FIELDS = {"message": (str,), "type": (str,), "param": (str, type(None)), "code": (str, type(None))}


def error_shape_problem(body: bytes) -> str | None:
    """Why ``body`` is not OpenAI's error object ({"error": {message, type, param, code}}), or None."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "not JSON"
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict) or set(data) != {"error"}:
        return "no error object"
    for name, types in _ERROR_FIELDS.items():
        if name not in err or not isinstance(err[name], types):
            return f"error.{name} missing or of the wrong type"
    return None


def stream_problem(body: bytes) -> str | None:
    """A server error written into a stream (after its 200), or None."""
    for line in body.split(b"\n"):
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        try:
            event = orjson.loads(line[6:])
        except orjson.JSONDecodeError:
            return "an event that is not JSON"
        err = event.get("error") if isinstance(event, dict) and "error" in event else event
        if isinstance(err, dict) and (
            err.get("code") in ("internal", "worker_failed", "worker_error")
            or err.get("type") == "server_error"
        ):
            return f"a server error in the stream: {str(err.get('message'))[:200]}"
    return None


@dataclass
class Finding:
    where: str  # "case 12 /v1/completions", or the operation schemathesis tried
    status: int  # 0: no answer
    problem: str
    body: bytes = b""
    answer: bytes = b""
    what: str = ""  # the mutations, or a curl command that repeats the request

    def line(self) -> str:
        head = f"{self.where} -> {self.status or 'no answer'}: {self.problem[:600]}\n    {self.what[:400]}"
        body = f"body ({len(self.body)} bytes): {self.body[:160]!r}"
        return f"{head}\n    {body}\n    answer: {self.answer[:300]!r}"


@dataclass
class Report:
    tried: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def add(self, status: int, finding: Finding | None) -> None:
        self.tried += 1
        self.statuses[status] += 1
        if finding is not None:
            self.findings.append(finding)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.tried,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "5xx": self.server_errors,
            "findings": len(self.findings),
            "seconds": round(self.seconds, 1),
        }


async def send(client: httpx.AsyncClient, case: Case, timeout: float) -> tuple[int, bytes]:
    """POST the case; (status, whole answer), streams read to their end, all within ``timeout`` s."""

    async def go() -> tuple[int, bytes]:
        headers = {"content-type": "application/json"}
        async with client.stream("POST", case.path, content=case.body, headers=headers) as r:
            return r.status_code, b"".join([chunk async for chunk in r.aiter_bytes()])

    return await asyncio.wait_for(go(), timeout)


def judge(status: int, answer: bytes) -> str | None:
    """What is wrong with this answer, or None."""
    if status == 0:
        return "no answer"
    if status >= 500:
        return "a server error"
    if status >= 300:
        return error_shape_problem(answer)
    if answer.startswith(b"data: ") or answer.startswith(b"event: "):
        return stream_problem(answer)
    return None


async def fuzz(
    base_url: str, model: str, cases: int, *, seed: int = 0, concurrency: int = 4, timeout: float = 30
) -> Report:
    """Send ``cases`` mutated bodies to ``base_url`` (the server, without /v1), ``concurrency`` at once."""
    mutator = Mutator(model, seed)
    report = Report()
    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=None) as client:

        async def worker() -> None:
            while mutator.n < cases:
                case = mutator.case()  # made as it is sent: some are many MiB
                try:
                    status, answer = await send(client, case, timeout)
                except (asyncio.TimeoutError, httpx.HTTPError) as e:
                    status, answer = 0, f"{type(e).__name__}: {e}".encode()
                problem = judge(status, answer)
                where = f"case {case.index} {case.path}"
                found = Finding(where, status, problem, case.body, answer, case.what) if problem else None
                report.add(status, found)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    report.seconds = time.perf_counter() - t0
    return report


class _SchemaRun:
    """Sends schemathesis' cases and judges the answers by the document and by OpenAI's error shape."""

    def __init__(self, base_url: str, model: str, timeout: float):
        import requests
        from schemathesis.checks import not_a_server_error
        from schemathesis.specs.openapi import checks as oas

        self.base_url, self.model, self.timeout = base_url, model, timeout
        self.checks = [not_a_server_error, oas.status_code_conformance, oas.content_type_conformance,
                       oas.response_schema_conformance]  # fmt: skip
        self.session = requests.Session()
        self.report = Report()

    def one(self, case: Any, where: str, positive: bool) -> None:
        import requests
        import schemathesis

        if positive and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = self.model
        try:
            response = case.call(base_url=self.base_url, session=self.session, timeout=self.timeout)
        except requests.RequestException as e:
            self.report.add(0, Finding(where, 0, f"no answer: {e}", what=case.as_curl_command()))
            return
        problem = judge(response.status_code, response.content)
        try:
            case.validate_response(response, checks=self.checks)
        except (schemathesis.errors.FailureGroup, AssertionError) as e:
            problem = str(e)
        found = None
        if problem is not None:
            sent = response.request.body
            body = sent if isinstance(sent, bytes) else str(sent or "").encode()
            found = Finding(
                where, response.status_code, problem, body, response.content, case.as_curl_command()
            )
        self.report.add(response.status_code, found)


def schema_fuzz(base_url: str, model: str, examples: int, *, seed: int = 0, timeout: float = 30) -> Report:
    """Schemathesis over the served /openapi.json: per operation, ``examples`` requests that fit the
    document (the model pinned to the served one, so that they go past the model check) and ``examples``
    that do not. Every answer is checked: no 5xx, its status, content type and body as documented, and
    an error in OpenAI's shape."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fix_seed

    fitting = schemathesis.GenerationMode.POSITIVE
    schema = schemathesis.openapi.from_dict(httpx.get(base_url + "/openapi.json", timeout=10).json())
    run = _SchemaRun(base_url, model, timeout)
    t0 = time.perf_counter()
    once = settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck))  # fmt: skip

    def test(op: Any, mode: schemathesis.GenerationMode) -> Callable[[], None]:
        where = f"schemathesis {op.label} ({mode.value})"

        @fix_seed(seed)
        @once
        @given(op.as_strategy(generation_mode=mode))
        def one(case: schemathesis.Case) -> None:
            run.one(case, where, mode.is_positive)

        return one

    for result in schema.get_all_operations():
        op = result.ok()
        # Only a body can be wrong: the GET routes take nothing to negate.
        modes = list(schemathesis.GenerationMode) if op.method.upper() == "POST" else [fitting]
        for mode in modes:
            test(op, mode)()
    run.session.close()
    run.report.seconds = time.perf_counter() - t0
    return run.report


# ---- the deployment ------------------------------------------------------------------------------------
def small_context_model(dest: Path, context: int = CONTEXT) -> Path:
    """The embedded model's tokenizer folder (no weights: the mocker needs none), its context cut."""
    src = prepare_tokenizer_folder()
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix == ".json":
            (dest / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((dest / "config.json").read_text())
    cfg["max_position_embeddings"] = context
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def start_target(tmp: Path) -> Deployment:
    """The deployment fuzzed: a mocker worker at speedup 1000 on the small-context model."""
    model = small_context_model(tmp / "fuzz-model")
    return start(tmp, "agg", "--engine", "mocker", "--model", str(model), "--workers", "1",
                 "--speedup", "1000", "--set", "log_level=warning")  # fmt: skip


def still_well(dep: Deployment) -> list[str]:
    """What is wrong with the deployment after the fuzzing: a process gone or restarted, /health not 200."""
    problems = [f"{name} (pid {pid}) is gone or was restarted"
                for name, pid in dep.ready["processes"].items()
                if dep.current_pid(name) != int(pid) or not process_alive(int(pid))]  # fmt: skip
    if dep.proc.poll() is not None:
        problems.append(f"the launcher exited ({dep.proc.returncode})")
    try:
        health = httpx.get(dep.url + "/health", timeout=10).status_code
    except httpx.HTTPError as e:
        health = f"no answer ({type(e).__name__})"  # type: ignore[assignment]
    if health != 200:
        problems.append(f"/health answered {health}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=3000, help="Mutated real bodies to send.")
    ap.add_argument("--examples", type=int, default=60, help="Schemathesis cases per operation and mode.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=30, help="Seconds a request may take in all.")
    ap.add_argument("--dump", type=Path, help="Write each finding's body into this folder.")
    ap.add_argument("--json", action="store_true", help="One JSON object on stdout.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dep = start_target(Path(tmp))
        try:
            mutated = asyncio.run(
                fuzz(dep.url, dep.model, args.cases, seed=args.seed, concurrency=args.concurrency,
                     timeout=args.timeout)
            )  # fmt: skip
            schema = schema_fuzz(dep.url, dep.model, args.examples, seed=args.seed, timeout=args.timeout)
            problems = still_well(dep)
        finally:
            dep.stop()
    parts = {"mutated bodies": mutated, "schemathesis": schema}
    findings = mutated.findings + schema.findings
    if args.dump is not None:
        args.dump.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(findings):
            (args.dump / f"finding-{i}.json").write_bytes(f.body)
    total = {
        "requests": mutated.tried + schema.tried,
        "5xx": mutated.server_errors + schema.server_errors,
        "findings": len(findings),
        "deployment_problems": problems,
    }
    if args.json:
        out = {**total, **{k: r.summary() for k, r in parts.items()}, "found": [f.line() for f in findings]}
        json.dump(out, sys.stdout, indent=1)
        print()
        return
    for name, r in parts.items():
        statuses = ", ".join(f"{k}: {v}" for k, v in r.summary()["statuses"].items())
        print(f"{name}: {r.tried} requests in {r.seconds:.1f} s; statuses {statuses}; 5xx {r.server_errors}")
    print(f"requests tried: {total['requests']} (seed {args.seed}); 5xx found: {total['5xx']}; "
          f"findings: {len(findings)}; deployment afterwards: {'; '.join(problems) or 'well'}")  # fmt: skip
    for f in findings:
        print(f.line())


if __name__ == "__main__":
    main()
