"""glibc malloc settings for CPU work.

By default glibc serves blocks above a dynamic threshold (at most 32 MiB) with mmap and hands freed memory back to
the OS, so every large activation buffer of a CPU forward pass is a fresh mapping whose pages fault in again.
Keeping freed memory in the heap instead made ShapesWorld sampling about 15% faster on a 2-core machine
(256 samples x 10 steps at batch 64: 8.2-8.7 s -> 7.1-7.2 s). The price is that the process's resident size
stays at its peak.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Raise glibc's mmap threshold to its maximum (32 MiB) and stop trimming the heap. True if applied; False
    where the C library is not glibc (macOS, musl), which keeps its defaults."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
