"""What the KV-transfer agent and its backends share: the region header and the transfer error."""

from __future__ import annotations

import struct

HEADER = 64  # bytes reserved before each region's payload; also the alignment of regions
HEADER_STRUCT = struct.Struct("<QQQ")  # incarnation, generation, payload bytes (0, 0, 0 once released)


class TransferError(Exception):
    """A transfer that did not complete: peer gone, timeout, region released, bad metadata."""
