"""Every default that README.md and docs/*.md quote, checked against the config models.

House rule: help text and docs may state a default only when it is generated from the models or checked
by a test. This is that test. Each phrase below is rendered from the resolved config, so a default
changed in dynamo_cli/config/models.py or profiles/*.yaml fails here until the doc says the same.
Numbers the docs quote that are not config defaults (benchmark figures, module constants) are left out.
"""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from dynamo_cli.commands.doctor import doctor
from dynamo_cli.config.loader import load_config
from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.models.embedded import EMBEDDED_NAME

ROOT = Path(__file__).resolve().parents[2]
README = "README.md"
ARCH = "docs/architecture.md"
LIMITS = "docs/limits.md"
MOCKER = "docs/mocker.md"
SECURITY = "docs/security.md"

D = load_config(None, environ={})  # the model defaults alone
AGG = load_config("agg", environ={})

# How the docs name an engine in prose.
ENGINE_NAMES = {"vllm": "vLLM", "mocker": "the mocker"}


@functools.cache
def raw(name: str) -> str:
    return (ROOT / name).read_text()


@functools.cache
def text(name: str) -> str:
    """The file with every run of whitespace made one space, so a phrase may wrap across lines."""
    return re.sub(r"\s+", " ", raw(name))


def g(x: float) -> str:
    """A number as the docs write it: 16.0 -> '16', 0.01518 -> '0.01518', 4.21e-07 -> '4.21e-7'."""
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{x:g}").replace("e+", "e")


def per_window(seconds: float) -> str:
    """supervisor.restart_window_s as the README says it."""
    return "a minute" if seconds == 60 else f"in {g(seconds)} s"


def at(cfg: DynamoConfig, dotted: str) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        node = getattr(node, key)
    return node


def prefill_ms(tokens: int) -> float:
    a, b, c = D.mocker.prefill_ms
    return (a * tokens**2 + b * tokens + c) / D.mocker.speedup_ratio


def decode_ms(used: float) -> float:
    d2, d1, d0 = D.mocker.decode_ms
    return max(1.0, d2 * used**2 + d1 * used + d0) / D.mocker.speedup_ratio


fe, sup, window = D.frontend, D.supervisor, per_window(D.supervisor.restart_window_s)
url = f"http://{fe.host}:{fe.port}/v1"
doctor_profile = inspect.signature(doctor).parameters["profile"].default
first_ms, empty_ms, half_ms = prefill_ms(1000), decode_ms(0.0), decode_ms(0.5)
vocab = "the model's" if D.mocker.vocab_size is None else str(D.mocker.vocab_size)

# (file, the phrase as the file must read, rendered from the config). Each holds the value it checks.
PHRASES: list[tuple[str, str]] = [
    (README, f"its embedded default: {ENGINE_NAMES[AGG.engine]} serving {AGG.model or EMBEDDED_NAME}"),
    (README, f"`--engine {AGG.engine}` (the default in `profiles/agg.yaml`)"),
    (README, f"curl {url}/chat/completions"),
    (README, f'OpenAI(base_url="{url}"'),
    (README, f"dynamo bench multi-round-qa --base-url {url}"),
    (README, f"every process registers under a {D.infra.lease_ttl_s} s lease"),
    # One phrase covers both worker groups, and another the frontend, the router and etcd/NATS.
    (README, f"restarted: a worker {D.workers.max_restarts} times {window} at most"),
    (README, f"restarted: a worker {D.prefill_workers.max_restarts} times {window} at most"),
    (README, f"port, same data) {fe.max_restarts} times {window} (`supervisor.restart_window_s`)"),
    (README, f"port, same data) {D.router.max_restarts} times {window} (`supervisor.restart_window_s`)"),
    (README, f"port, same data) {sup.infra_max_restarts} times {window} (`supervisor.restart_window_s`)"),
    (README, f"bodies over {g(fe.max_body_mb)} MiB get a 413"),
    (README, f"Requests beyond `frontend.inflight_per_worker` ({fe.inflight_per_worker}) per worker"),
    (README, f"a queue of `frontend.max_queued` ({fe.max_queued})"),
    (README, f"under the default `max_local_prefill_length` {D.disagg.max_local_prefill_length}"),
    (README, f"dynamo doctor # the default profile ({doctor_profile})"),
    (README, f"`policy: {D.planner.policy}` (default)"),
    (README, f"`disagg.kv_lease_s` ({D.disagg.kv_lease_s} s)"),
    (README, f"the default is {D.disagg.max_prefill_queue_size} for one prefill worker"),
    (ARCH, f"(TTL `infra.lease_ttl_s`, default {D.infra.lease_ttl_s} s, refreshed every TTL/3)"),
    (LIMITS, f"**Body size, while it is read** (`frontend.max_body_mb`, {g(fe.max_body_mb)} MiB)"),
    (LIMITS, f"### Why {g(fe.max_body_mb)} MiB"),
    (LIMITS, f"under a lease (`infra.lease_ttl_s`, {D.infra.lease_ttl_s} s)"),
    (
        MOCKER,
        "Defaults: `prefill_ms: [{}]`, `decode_ms: [{}]`".format(
            ", ".join(map(g, D.mocker.prefill_ms)), ", ".join(map(g, D.mocker.decode_ms))
        ),
    ),
    (MOCKER, f"1000-token prompt on an idle engine thus gets its first token after about {first_ms:.0f} ms"),
    (MOCKER, f"a decode step takes {empty_ms:.1f} ms on an empty cache and {half_ms:.0f} ms at half usage"),
    (MOCKER, f"| `vocab_size` | sampled token range (default: {vocab}) |"),
]


@pytest.mark.parametrize(("doc", "phrase"), PHRASES, ids=[f"{d}: {p[:60]}" for d, p in PHRASES])
def test_a_quoted_default_matches_the_config(doc: str, phrase: str) -> None:
    assert phrase in text(doc), f"{doc} should read: {phrase!r}"


def table(doc: str, header: str) -> list[list[str]]:
    """The cells of the markdown table under `header` (a header row, exactly as written)."""
    lines = [line.strip() for line in raw(doc).splitlines()]
    start = lines.index(header)
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    assert rows, f"{doc}: the table under {header!r} is empty"
    return rows


def test_the_limits_table_matches_the_frontend_defaults() -> None:
    rows = table(LIMITS, "| key (`frontend.`) | default | what |")
    for key_cell, default_cell, _ in rows:
        key = key_cell.strip("`")
        assert key in type(fe).model_fields, f"{LIMITS}: frontend.{key} is not a config key"
        assert re.fullmatch(r"\d{1,3}(,\d{3})*(\.\d+)?", default_cell), f"{LIMITS}: {key}: {default_cell!r}"
        quoted = float(default_cell.replace(",", ""))
        assert quoted == getattr(fe, key), f"{LIMITS}: frontend.{key} is {getattr(fe, key)}, not {quoted}"


def test_the_overload_table_matches_the_frontend_defaults() -> None:
    rows = table(SECURITY, "| key (`frontend.`) | default | what |")
    assert len(rows) >= 6
    for key_cell, default_cell, _ in rows:
        key = key_cell.strip("`")
        assert key in type(fe).model_fields, f"{SECURITY}: frontend.{key} is not a config key"
        value = getattr(fe, key)
        if default_cell == "none":
            assert value is None, f"{SECURITY}: frontend.{key} is {value}, not none"
        else:
            assert float(default_cell.replace(",", "")) == value, f"{SECURITY}: frontend.{key} is {value}"


def test_the_restarts_table_matches_the_defaults() -> None:
    rows = table(LIMITS, "| role | restarts | key |")
    for role, restarts, keys in rows:
        number = re.match(r"\d+", restarts)
        assert number, f"{LIMITS}: the {role} row quotes no number of restarts"
        quoted = int(number.group())
        names = re.findall(r"`([\w.]+)`", keys)
        assert names, f"{LIMITS}: the {role} row names no key"
        for name in names:
            assert at(D, name) == quoted, f"{LIMITS}: {name} is {at(D, name)}, not {quoted} ({role})"
