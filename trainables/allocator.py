"""Keep freed tensor memory in the process rather than give it back to the OS (glibc only).

PyTorch's CPU allocator passes every tensor to ``malloc``. glibc serves a block above
``M_MMAP_THRESHOLD`` with fresh ``mmap`` pages and unmaps it on ``free``, and hands the top of
the heap back to the OS once more than ``M_TRIM_THRESHOLD`` is free there. A training step
allocates and frees the same activations every step, so each step page-faults them in again:
on the benchmark CNN (batch 128 of 3×32×32) a plain SGD step took 4,500–11,000 minor page faults
and 73–81 ms, and with the two thresholds raised 0–300 faults and 64–70 ms (benchmarks/README.md).
Ray gives each trial its own worker process, so raising them there affects that trial only.

The cost is resident memory: a process keeps its peak heap until it exits.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt(3) parameters (malloc.h) and the largest mmap threshold glibc accepts on 64-bit
# (HEAP_MAX_SIZE / 2); larger blocks are still mapped and unmapped per allocation.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


def glibc() -> ctypes.CDLL | None:
    """The process's C library where it is glibc (which has ``mallopt``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)  # the symbols already loaded into this process, its libc's among them
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where libc is not glibc."""
    libc = glibc()
    if libc is None:
        return False
    mapped = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    trimmed = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return mapped and trimmed
