"""Keep freed memory in the process, so a training step does not page-fault its tensors in anew.

PyTorch's CPU tensors come straight from malloc, and glibc's malloc hands every block above its
mmap threshold (at most 32 MiB) to a fresh ``mmap`` and returns it to the system on free; it also
trims the top of the heap back to the system. A language-model training step allocates and frees
the same large tensors every step (a 2 × 256 token batch of SmolLM2 logits alone is 100 MB, and
distillation keeps a dozen of that size), so every step touches all of that memory for the first
time again: ~180,000 minor page faults and up to 4 s of system time per 512-token forward+backward
of SmolLM2-135M on a 2-core EPYC, 20-40% of the step (``benchmarks/kngpt2_speed.py``). The more
and the smaller the intermediate tensors, the worse: the Kronecker students paid more than the
dense ones.

``keep_freed_memory()`` sets glibc's ``M_MMAP_MAX`` to 0 (every block comes from the heap, where a
freed block is reused by the next allocation of its size) and ``M_TRIM_THRESHOLD`` to its largest value, 2 GiB, with 1 GiB of
padding (the heap is trimmed only when more than 2 GiB at its top are free, and then keeps 1 GiB). The price: the process keeps its peak memory until it
exits, which a training run does anyway. Only glibc has ``mallopt``; elsewhere (macOS, musl,
Windows) this does nothing. ``KRONBIT_MALLOC=system`` leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger("kronbit")

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4  # glibc malloc.h
INT_MAX = 2**31 - 1  # mallopt takes an int: the largest trim threshold and heap padding it can set


@functools.lru_cache(maxsize=None)
def _libc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        return lib if hasattr(lib, "mallopt") and hasattr(lib, "gnu_get_libc_version") else None
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed memory instead of returning it; True when it took effect."""
    if os.environ.get("KRONBIT_MALLOC", "").lower() == "system":
        return False
    lib = _libc()
    if lib is None:
        return False
    lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(lib.mallopt(opt, value) == 1
             for opt, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, INT_MAX), (M_TOP_PAD, 1 << 30)))
    if not ok:  # pragma: no cover - glibc accepts both
        log.debug("mallopt refused the allocator settings; the system defaults stay")
    return ok
