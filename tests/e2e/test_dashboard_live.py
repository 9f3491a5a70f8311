"""The Grafana dashboard against a running deployment: every name its panels query is in the scrape of
the frontend's /metrics and the router's metrics URL, after real traffic."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from dynamo_cli.deploy.k8s import dashboard_json
from dynamo_cli.deployment.handle import Deployment, start
from tests.e2e.helpers import scrape, wait_for
from tests.unit.test_dashboard import exposed_names, missing_names

pytestmark = pytest.mark.e2e

# Long enough (at speedup 1) for a worker's load to change between two of its reports (every 0.1 s):
# a worker publishes its load only when it changes.
MAX_TOKENS = 30


def _traffic(dep: Deployment, n: int) -> None:
    client = openai.OpenAI(base_url=dep.base_url, api_key="x", max_retries=0, timeout=30)
    prompt = "Tell me about " + " ".join(f"topic{i}" for i in range(60))  # some full KV blocks
    for k in range(n):
        stream = client.chat.completions.create(
            model=dep.model,
            messages=[{"role": "user", "content": prompt}],  # the same prefix: cache hits
            max_tokens=MAX_TOKENS + k,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


@pytest.mark.parametrize("replicas", [0, 1], ids=["router-in-frontend", "router-process"])
def test_every_dashboard_name_is_in_the_live_scrape(tmp_path, replicas: int) -> None:
    dep = start(tmp_path, "agg", "--engine", "mocker", "--workers", "2", "--router-mode", "kv", "--speedup", "1",
                "--set", f"router.replicas={replicas}")  # fmt: skip
    try:
        _traffic(dep, 4)
        urls = [dep.url + "/metrics"]
        if replicas:
            urls.append(dep.ready["roles"]["router-0"]["metrics"])
        router_url = urls[-1]
        # The workers' load reports reach the router as their load changes.
        wait_for(
            lambda: any(k.startswith("dynamo_worker_kv_usage{") for k in scrape(router_url)),
            10,
            "a worker's load in the router's metrics",
        )
        text = "".join(httpx.get(u, timeout=10).text for u in urls)
        exposed = exposed_names(text)
        assert missing_names(json.loads(dashboard_json()), exposed) == {}

        values = scrape(urls[0]) | scrape(router_url)
        label = f'{{model="{dep.model}"}}'
        assert values["dynamo_frontend_input_sequence_tokens_count" + label] == 4
        assert values["dynamo_frontend_output_sequence_tokens_sum" + label] == sum(
            MAX_TOKENS + k for k in range(4)
        )
        assert values['dynamo_router_decisions_total{mode="kv"}'] == 4
        assert values["dynamo_router_overlap_blocks_total"] > 0  # the repeats found their prefix
        totals = [v for k, v in values.items() if k.startswith("dynamo_worker_total_blocks{")]
        assert totals and all(v > 0 for v in totals)
    finally:
        dep.stop()
