"""Every field vLLM's own request models take is honoured, without effect or refused here (imports vLLM)."""

from __future__ import annotations

import pytest

from dynamo_cli.frontend import fields
from dynamo_cli.frontend.fields import (
    recognised,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("endpoint", "module", "cls"),
    [
        ("chat", "vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionRequest"),
        ("completions", "vllm.entrypoints.openai.completion.protocol", "CompletionRequest"),
        ("responses", "vllm.entrypoints.openai.responses.protocol", "ResponsesRequest"),
    ],
)
def test_every_vllm_request_field_is_recognised(endpoint: fields.Endpoint, module: str, cls: str) -> None:
    protocol = pytest.importorskip(module)
    vllm_fields = set(getattr(protocol, cls).model_fields)
    assert vllm_fields - recognised(endpoint) == set()
