"""Keep a long-running server's resident memory bounded (glibc's allocator).

glibc serves large allocations with ``mmap`` (returned to the system on free) only above a
threshold that it *raises* each time such a block is freed, up to 32 MiB. A server that
scores texts of varied lengths frees activation buffers of every size, so after a while its
big buffers come from the heap instead, where freed memory stays resident: in a 10-minute
soak of ``lore serve`` (``bench/serve_load.py --soak 600``) RSS crept from 660 to 808 MB.
Fixing the threshold keeps that memory going back (the same soak held ~520 MB between
bursts).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value


def bound_heap(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process (unless
    ``$MALLOC_MMAP_THRESHOLD_`` sets it). Returns whether it was set; a no-op elsewhere."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
