"""Profile keys as users may spell them."""

from __future__ import annotations

from typing import Any


def underscored(node: Any) -> Any:
    """A dotted key, or the keys of a tree (not its values), with hyphens as underscores: profiles may
    spell keys as the reference system's do (remote-prefill). The one place that rewrites them."""
    if isinstance(node, str):
        return node.replace("-", "_")
    if isinstance(node, dict):
        return {
            (underscored(k) if isinstance(k, str) else k): (underscored(v) if isinstance(v, dict) else v)
            for k, v in node.items()
        }
    return node
