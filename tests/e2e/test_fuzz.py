"""The fuzz campaign (issue 18): no input is answered with a 5xx, with an error out of OpenAI's shape, or
not at all, and the deployment is whole afterwards (same processes, /health 200).

Two campaigns against one mocker deployment (benchmarks.fuzz.start_target: the embedded tokenizer with a
512-token context, so that an accepted input costs a short generation): schemathesis over the served
/openapi.json (bodies that fit the document and bodies that do not; answers checked against it too), and
benchmarks.fuzz's mutations of real request bodies. At least 3,000 requests, deterministic seeds, each
request bounded by TIMEOUT; `.venv/bin/python -m benchmarks.fuzz` runs the same and prints the figures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest

from benchmarks.fuzz import (
    error_shape_problem,
    fuzz,
    judge,
    schema_fuzz,
    start_target,
    still_well,
    stream_problem,
)
from dynamo_cli.deployment.handle import Deployment
from dynamo_cli.frontend.schemas import OpenAIError

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEED = 18
CASES = 2600  # mutated real bodies
EXAMPLES = 70  # schemathesis: per POST operation and mode (fitting, not fitting), at most per GET one
TIMEOUT = 30.0  # seconds a request may take, answer read to its end; longer is a hang


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = start_target(tmp_path_factory.mktemp("fuzz"))
    yield d
    d.stop()


def test_the_judge_sees_what_it_must() -> None:
    """The campaign's verdicts are not blind: FastAPI's own 422 shape, a 5xx, an error written into a
    stream and no answer are all findings; OpenAI's error object is not."""
    assert error_shape_problem(orjson.dumps(OpenAIError(400, "bad", param="n").body())) is None
    assert error_shape_problem(b'{"detail": [{"loc": ["body"], "msg": "field required"}]}') is not None
    assert error_shape_problem(b'{"error": {"message": "m", "type": "t", "param": null}}') is not None
    assert error_shape_problem(b"Internal Server Error") is not None
    internal = OpenAIError(500, "internal error: KeyError", code="internal").body()
    assert stream_problem(b'data: {"choices": []}\n\ndata: ' + orjson.dumps(internal) + b"\n\n") is not None
    assert stream_problem(b'data: {"choices": []}\n\ndata: [DONE]\n\n') is None
    assert judge(502, orjson.dumps(OpenAIError(502, "worker failed").body())) is not None
    assert judge(0, b"") == "no answer"
    assert judge(400, orjson.dumps(OpenAIError(400, "bad").body())) is None


@pytest.mark.timeout(300)
def test_no_input_gets_a_server_error_or_hangs_or_kills(dep: Deployment) -> None:
    schema = schema_fuzz(dep.url, dep.model, EXAMPLES, seed=SEED, timeout=TIMEOUT)
    mutated = asyncio.run(fuzz(dep.url, dep.model, CASES, seed=SEED, timeout=TIMEOUT))
    findings = schema.findings + mutated.findings
    assert not findings, f"{len(findings)} findings:\n" + "\n".join(f.line() for f in findings[:12])
    assert mutated.tried == CASES and schema.tried >= 6 * EXAMPLES
    assert schema.tried + mutated.tried >= 3000
    # Both campaigns reached the models and the engine, not only the JSON parser.
    for report in (schema, mutated):
        assert report.statuses[200] > 0.1 * report.tried and report.statuses[400] > 0.3 * report.tried
    assert mutated.statuses[413] > 0  # and the body limit
    assert not still_well(dep)
