"""GPU lists as profiles write them."""

from __future__ import annotations

import re

_GPU_LIST = re.compile(r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$")


def parse_gpu_list(spec: str) -> list[int]:
    """'0-3,6' -> [0, 1, 2, 3, 6]."""
    if not _GPU_LIST.match(spec):
        raise ValueError(f"'{spec}' is not a GPU list; use e.g. '0-3' or '0,2,5'")
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        a, b = int(lo), int(hi or lo)
        if b < a:
            raise ValueError(f"GPU range '{part.strip()}' goes backwards")
        out.extend(range(a, b + 1))
    if len(set(out)) != len(out):
        raise ValueError(f"GPU list '{spec}' names a GPU twice")
    return out
