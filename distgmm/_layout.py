"""How many rows a chunk holds: one rule for point stores and for in-memory data.

A chunk of points holds about :data:`DEFAULT_CHUNK_BYTES` bytes: large enough that a pass's
fixed cost per chunk (a task, a read, a decompression) is small against its arithmetic,
small enough that a worker holds a few at a time in its caches and memory.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_CHUNK_BYTES", "default_chunk_rows"]

#: Bytes of one chunk of points, before compression.
DEFAULT_CHUNK_BYTES = 16 * 2**20


def default_chunk_rows(n_features: int, dtype: str | np.dtype,
                       chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that one chunk of points holds about ``chunk_bytes`` bytes."""
    itemsize = np.dtype(dtype).itemsize
    return max(1, chunk_bytes // (itemsize * max(1, n_features)))
