"""Host allocator setting for training processes: glibc malloc keeps freed memory instead of returning it.

A CPU training step allocates and frees the same set of multi-megabyte activations every step. glibc serves
blocks above its mmap threshold (128 KiB at start) with fresh mmaps and trims free memory at the top of the heap,
so every step gets fresh pages from the kernel and page-faults on each 4 KiB of them when it first writes. With
the mmap threshold at its maximum (32 MiB) and no trimming below 1 GiB, freed activations stay in the heap and
the next step reuses them. Measured on a 2-core CPU (benchmarks/README.md): the small Perceiver's training step
88 -> 82 ms, the quickstart model's 26.4 -> 24.4 ms. The cost: the process keeps its peak heap instead of
shrinking after it (what PyTorch's CUDA caching allocator does on the device anyway). The same advice, as
jemalloc / tcmalloc, is in PyTorch's CPU performance guide; this needs no extra library.

`perceiver-lit` applies it at start (`tune_host_allocator()`), as do the benchmarks, to every model alike.
PERCEIVER_LIT_MALLOC=system leaves the allocator alone. Only glibc on Linux; elsewhere nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 2**30  # return free heap to the kernel only above 1 GiB
TOP_PAD = 64 * 2**20  # grow the heap in 64 MiB steps (address space; pages come when written)

_applied: bool | None = None


def tune_host_allocator() -> bool:
    """Set glibc malloc to keep freed memory (see the module docstring). Returns whether the setting is in effect;
    idempotent; False off glibc or with PERCEIVER_LIT_MALLOC=system."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("PERCEIVER_LIT_MALLOC", "").lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_TOP_PAD, TOP_PAD),
        )
    )
    return _applied
