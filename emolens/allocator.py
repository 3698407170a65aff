"""Keeping freed memory in the process on glibc, so a forward pass does not page-fault its activations in again.

PyTorch's CPU allocator hands every tensor back to ``malloc`` when it dies. glibc returns
blocks above its mmap threshold (and a heap top above its trim threshold) to the kernel,
so the next batch's activations of the same size are faulted in page by page: on a
2-core VM a SmolLM2 batch of 23 stories took about 870,000 minor faults (3.5 GB of pages
touched) and spent a tenth of its time on them. :func:`retain_freed_memory` raises both
thresholds for the current process; ``emolens`` commands call it at start-up, the library
never does on import. The process keeps its freed memory (up to its high-water mark) until
it exits. See docs/results.md for the figures.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit: larger blocks are always mmapped
TRIM_THRESHOLD = 2**31 - 1  # an int: keep up to 2 GiB of free heap top before giving it back


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 32 MiB for reuse; ``False`` where that is not glibc (no change)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
