"""`dynamo role planner` as a process."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_role_planner_outside_a_cluster_says_where_the_local_planner_is() -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "dynamo_cli", "role", "planner", "agg"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert r.returncode == 3, r.stderr
    assert "not running in a Kubernetes pod" in r.stderr and "dynamo run PROFILE --planner" in r.stderr
