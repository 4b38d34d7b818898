"""The benchmarks' one safetensors header writer (they write the values tensor by tensor after it)."""

from __future__ import annotations

import json
import math


def bf16_header(tensors) -> bytes:
    """The 8-byte length and JSON header of a safetensors file holding `tensors` [(name, shape)] as BF16,
    in that order; the caller writes each tensor's values after it, never a whole model in memory."""
    header, offset = {}, 0
    for name, shape in tensors:
        nbytes = 2 * int(math.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw
