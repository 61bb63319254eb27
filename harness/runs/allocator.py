"""Keep freed activation memory in the process instead of returning it to the OS every step.

With glibc's default settings a recurrent training step maps and unmaps its activations each
time (hundreds of thousands of page faults per step at long lengths). Here large blocks come
from the heap instead of fresh mappings (``M_MMAP_MAX=0``), the heap grows in 256 MiB steps
(``M_TOP_PAD``) and is never trimmed (``M_TRIM_THRESHOLD=-1``): after the first step a training
step touches no new pages. A finite trim threshold (1 GiB was tried) still let glibc return and
re-fault ~300 MiB every step at T = 1000, batch 128. The cost is memory: the process keeps its
peak and some fragmentation (measured in docs/performance.md). Set ``HARNESS_MALLOC=default``
to leave glibc alone. Call before torch allocates anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
_TUNED: bool | None = None


def tune_malloc() -> bool:
    """Apply the settings once (glibc only); return whether they are in effect."""
    global _TUNED
    if _TUNED is not None:
        return _TUNED
    _TUNED = False
    if os.environ.get("HARNESS_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return _TUNED
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return _TUNED
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_MAX, 0) == 1
    ok &= mallopt(M_TRIM_THRESHOLD, -1) == 1  # -1: never trim (mallopt(3))
    ok &= mallopt(M_TOP_PAD, 256 << 20) == 1
    _TUNED = bool(ok)
    return _TUNED


def malloc_tuned() -> bool:
    return bool(_TUNED)
