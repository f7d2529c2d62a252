"""Keep large freed memory blocks in the process for reuse (glibc's malloc).

The simulator allocates several ``[n, d]`` float32 tensors a step (gradients, momentum,
messages): 48 MB each for 10 workers and the 1.2 M parameters of ``torchnet``. glibc
serves blocks above its mmap threshold (at most 32 MiB) with fresh ``mmap`` pages and
unmaps them on free, so every step page-faults those tensors in again: one elementwise pass
over ``[10, 1.2M]`` measured 9.5 ms instead of 2.0 ms on the development machine
(benchmarks/RESULTS.md). :func:`keep_freed_memory` raises the mmap and trim thresholds so
freed blocks stay in the heap and are reused, as jemalloc or tcmalloc would do. It changes
only this process's allocator policy (peak memory is kept rather than returned to the OS);
on other C libraries it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 30
TRIM_THRESHOLD_BYTES = (1 << 31) - 1

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks up to 1 GiB for reuse; True if it agreed.

    Idempotent; returns False (and changes nothing) where the C library is not glibc.
    """
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):
                return False
            _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _applied
