"""Keeping freed memory in the process on glibc, so a forward pass does not page-fault its activations in again.

PyTorch's CPU allocator hands every tensor back to ``malloc`` when it dies. glibc serves
large blocks with ``mmap`` and unmaps them when freed (and trims a free heap top), so the
next batch's activations of the same size are faulted in again page by page: on a 2-core
VM the fit's extraction over 96 SmolLM2 stories took 2.7 million minor faults, at about
2 us each (``python -m experiments.benchmark allocator``). :func:`retain_freed_memory`
turns ``mmap`` off for ``malloc`` and raises the trim threshold, so freed blocks stay in
the heap for the next batch; ``emolens`` commands call it at start-up, the library never
does on import. The process keeps its freed memory (up to its high-water mark) until it
exits. See docs/results.md for the figures.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # an int: keep up to 2 GiB of free heap top before giving it back


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed blocks in the heap for reuse; ``False`` where that is not glibc (no change)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # no mmap: a block above glibc's mmap ceiling (32 MiB; gemma's MLP at 4096 tokens) would be unmapped on free
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
