"""The Grafana dashboard (dynamo_cli/dashboards/grafana.json) and the metrics table (docs/metrics.md)
against what the registries export: every name a panel queries exists, every exported series is listed.
tests/e2e/test_dashboard_live.py checks the same names against a live deployment's scrape."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dynamo_cli.config.models import RouterConfig
from dynamo_cli.deploy.k8s import dashboard_json
from dynamo_cli.frontend.metrics import FrontendMetrics
from dynamo_cli.routing.kv_router import KvRouter
from dynamo_cli.routing.service import RouterMetrics
from dynamo_cli.transport.discovery import DiscoveryEvent, Instance
from dynamo_cli.transport.wire import LoadMetrics
from dynamo_cli.transport.workers import InstanceSet

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
TABLE_HEADER = "| name | type | labels | process | meaning | NVIDIA Dynamo |"

# ---- reading PromQL and the exposition format (the live test uses these too) -----------------------

_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLES = re.compile(r"\$\{?\w+\}?")
_NUMBERS = re.compile(r"(?<![\w:])\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?(?![\w:])")
_WORDS = re.compile(r"[A-Za-z_:][\w:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, keywords, labels
    (in matchers and in by/on clauses), durations, numbers or Grafana variables."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _VARIABLES.sub(" ", text)
    text = _NUMBERS.sub(" ", text)
    names = set()
    for m in _WORDS.finditer(text):
        if text[m.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group().lower() not in _KEYWORDS:
            names.add(m.group())
    return names


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets (rows' nested panels too) and the
    metric selectors of query variables (label_values(SELECTOR, label))."""
    found: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = _LABEL_VALUES.match(query)
        found.append(m.group(1) if m else query)
    return found


def exposed_names(text: str) -> dict[str, str]:
    """{name a query can use: its family's type} from Prometheus text. A family counts from its TYPE
    line, with no samples: a labelled series nobody has touched yet still shows it."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("_sum", "_count", ""),
    }
    names: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, ("",)):
            names[family.name + suffix] = family.type
    return names


def missing_names(dashboard: dict[str, Any], exposed: dict[str, str]) -> dict[str, set[str]]:
    """{expression: the names it reads that nothing exports}, for the expressions that have any."""
    out = {}
    for expr in expressions(dashboard):
        if unknown := metric_names(expr) - exposed.keys():
            out[expr] = unknown
    return out


# ---- what the registries export -------------------------------------------------------------------


def registries() -> tuple[FrontendMetrics, RouterMetrics]:
    """The frontend's and a router's metrics, every labelled series touched once (so each shows its
    labels), through the calls the code makes."""
    frontend = FrontendMetrics("m")
    frontend.count("chat", 200)
    frontend.rejected.labels("m", "overloaded").inc()
    frontend.unknown_fields.labels("m", "foo").inc()
    frontend.count_migration("worker_died")
    frontend.count_migrated("finished")
    frontend.count_decision({"group": "workers", "target": 2, "current": 1})
    report = {"outcome": "remote", "reason": "long_prompt", "kv_bytes": 10, "kv_backend": "tcp"}
    frontend.count_disagg({**report, "kv_s": 0.1, "remote_s": 0.2, "prefill_s": 0.1})
    workers, core = InstanceSet(), KvRouter(16, RouterConfig())
    router = RouterMetrics(core, workers)
    router.decisions.labels("kv").inc()
    workers.on_event(DiscoveryEvent("put", Instance("worker", 1, {"model": "m"})))
    router.loads[1] = LoadMetrics(1, 0, 1, 10)
    core.add_worker(1)
    core.index.store(1, [7])
    return frontend, router


def families() -> dict[str, tuple[str, list[str]]]:
    """{family name: (type, its label names)} of every series the frontend and router export."""
    out: dict[str, tuple[str, list[str]]] = {}
    for reg in (m.registry for m in registries()):
        for family in reg.collect():
            labels: list[str] = []
            for s in family.samples:
                labels += [k for k in s.labels if k != "le" and k not in labels]
            out[family.name] = (family.type, labels)
    return out


def exported() -> dict[str, str]:
    frontend, router = registries()
    return exposed_names((generate_latest(frontend.registry) + generate_latest(router.registry)).decode())


DASHBOARD = json.loads(dashboard_json())


# ---- the dashboard ----------------------------------------------------------------------------------


def test_every_dashboard_expression_names_an_exported_metric() -> None:
    exprs = expressions(DASHBOARD)
    assert len(exprs) > 30
    assert missing_names(DASHBOARD, exported()) == {}


def test_a_name_nothing_exports_is_caught() -> None:
    dashboard = copy.deepcopy(DASHBOARD)
    bad = 'sum(rate(dynamo_frontend_request_total{model="m"}[5m]))'  # requests_total misspelt
    dashboard["panels"][1]["targets"].append({"refId": "Z", "expr": bad})
    dashboard["templating"]["list"][1]["query"]["query"] = "label_values(dynamo_frontend_requests, model)"
    assert missing_names(dashboard, exported()) == {
        bad: {"dynamo_frontend_request_total"},
        "dynamo_frontend_requests": {"dynamo_frontend_requests"},  # a counter is read as _total
    }


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('rate(a_total{model=~"$model", x="by (y)"}[$__rate_interval])', {"a_total"}),
        ("histogram_quantile(0.99, sum by (le, backend) (rate(h_bucket[5m])))", {"h_bucket"}),
        ("sum(rate(x_sum[1m])) / sum(rate(x_count[1m])) > bool 0.5", {"x_sum", "x_count"}),
        ("a * on (worker) group_left (model) b offset 1h unless c", {"a", "b", "c"}),
        ("max without (instance) (g) + 1e3 - Inf", {"g"}),
        ("sum by(group,direction)(increase(p_total[${__interval}]))", {"p_total"}),
    ],
)
def test_the_reader_finds_metric_names_in_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_the_dashboard_covers_frontend_router_workers_disagg_and_planner() -> None:
    used = set().union(*map(metric_names, expressions(DASHBOARD)))
    assert {
        "dynamo_frontend_requests_total",
        "dynamo_frontend_time_to_first_token_seconds_bucket",
        "dynamo_frontend_inter_token_latency_seconds_bucket",
        "dynamo_frontend_inflight_requests",
        "dynamo_frontend_queued_requests",
        "dynamo_frontend_rejected_requests_total",
        "dynamo_frontend_migrations_total",
        "dynamo_router_decisions_total",
        "dynamo_router_overlap_blocks_total",
        "dynamo_router_prompt_blocks_total",
        "dynamo_worker_kv_usage",
        "dynamo_disagg_prefill_decisions_total",
        "dynamo_disagg_kv_transfer_bytes_total",
        "dynamo_disagg_kv_transfer_seconds_bucket",
        "dynamo_planner_target_replicas",
        "dynamo_planner_decisions_total",
    } <= used
    titles = [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"]
    assert titles == ["Frontend", "Router", "Workers", "Disaggregation", "Planner"]


def test_every_panel_queries_the_datasource_variable_and_fits_the_grid() -> None:
    (ds,) = [v for v in DASHBOARD["templating"]["list"] if v["type"] == "datasource"]
    assert ds["query"] == "prometheus"
    want = {"type": "prometheus", "uid": "${" + ds["name"] + "}"}
    ids = []
    for panel in DASHBOARD["panels"]:
        ids.append(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == want, panel["title"]
        assert panel["targets"] and all(t["datasource"] == want for t in panel["targets"]), panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]
    assert len(ids) == len(set(ids))


# ---- the worker series ------------------------------------------------------------------------------


def test_worker_series_show_the_latest_load_of_each_listed_worker() -> None:
    workers = InstanceSet()
    metrics = RouterMetrics(KvRouter(16, RouterConfig()), workers)
    workers.on_event(DiscoveryEvent("put", Instance("worker", 0xA1, {"model": "m"})))
    metrics.loads[0xA1] = LoadMetrics(running=3, waiting=1, active_blocks=25, total_blocks=100)
    metrics.loads[0xB2] = LoadMetrics(1, 0, 1, 100)  # reported, but discovery does not list it
    get = metrics.registry.get_sample_value
    assert get("dynamo_worker_kv_usage", {"worker": "a1"}) == 0.25
    assert get("dynamo_worker_active_blocks", {"worker": "a1"}) == 25
    assert get("dynamo_worker_total_blocks", {"worker": "a1"}) == 100
    assert get("dynamo_worker_running_requests", {"worker": "a1"}) == 3
    assert get("dynamo_worker_waiting_requests", {"worker": "a1"}) == 1
    assert get("dynamo_worker_kv_usage", {"worker": "b2"}) is None


# ---- the table in docs/metrics.md ---------------------------------------------------------------


def doc_table() -> dict[str, list[str]]:
    """{metric name as queried: its row's cells} of the table under TABLE_HEADER."""
    lines = [line.strip() for line in DOC.read_text().splitlines()]
    rows = {}
    for line in lines[lines.index(TABLE_HEADER) + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells
    return rows


def test_the_docs_table_lists_every_exported_series_with_its_type_and_labels() -> None:
    table = doc_table()
    names = exported()
    # As the table writes a name: counters with _total, histograms bare (they have _bucket/_sum/_count).
    expected = {}
    for family, (kind, labels) in families().items():
        expected[family + "_total" if kind == "counter" else family] = (kind, labels)
    assert set(table) == set(expected), set(table) ^ set(expected)
    for name, (kind, labels) in expected.items():
        cells = table[name]
        assert cells[1] == kind, name
        assert set(re.findall(r"`(\w+)`", cells[2])) == set(labels), name
        assert name in names or f"{name}_count" in names
