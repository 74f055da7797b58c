"""Keep freed CPU memory for reuse (glibc's malloc): set by the trainer on CPU and by ``scaledet
predict`` / ``scaledet eval`` for their own process.

A training step allocates and frees the same large activation and gradient buffers every step
(EfficientDet-D0 at 256 px, batch 8: 50 MB each in the first stages). glibc's malloc serves any
block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and unmaps it on ``free``, so
every step page-faults and zero-fills those buffers again: in a D0 step at 256 px this was ~25% of
the time (a 50 MB ``fill_`` taking 17 ms where the memory bandwidth allows ~3; SiLU and BatchNorm
backward 4-8x slower per element on fresh pages than on reused ones). Serving every block from the
heap and keeping freed memory makes later steps reuse the same pages; the process keeps its peak
memory instead of returning it (measured: ~10% higher peak RSS).

This is what jemalloc / tcmalloc give when preloaded (the CPU sections of PyTorch's and Intel's
performance tuning guides recommend them); the two ``mallopt`` calls give it with glibc, the
allocator every Linux Python uses by default, without an environment variable or a preload.
Nothing is changed on other platforms / allocators.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc's malloc.h parameter numbers
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER = -1  # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely"


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve every block from its heap (no per-block ``mmap``) and keep freed
    memory for reuse; process-wide, for the rest of the process. Returns True when applied (Linux
    with glibc), False where there is nothing to do (another C library or allocator)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER))
