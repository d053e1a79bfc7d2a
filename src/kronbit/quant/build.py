"""Building the C++ kernels in ``csrc/`` on first use (torch's extension builder caches the
result per machine). No ``-march=native``: vector code carries function-level target attributes
and is chosen at run time, so a library built here runs on any x86-64 CPU (and on other CPUs with
the portable code only)."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
# -ffp-contract=off: a multiply and an add are never fused, so every path rounds the same.
# -fopenmp: at::parallel_for is an OpenMP loop in torch's headers (without the flag it compiles to a
# serial loop); the symbols resolve to torch's own OpenMP runtime at load.
# (-fno-tree-reassoc / -fsched-pressure, tried for the unrolled accumulator loops: 10-15% slower
# for the AVX2 binary kernel with GCC 12 on Zen 3, no change for the 2-bit kernel.)
CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-fast-math"]

_LOCK = threading.Lock()
_LOADED: dict[str, object] = {}
_BUILD_FAILED = False


def load_extension(name: str, sources: tuple[str, ...]):
    """Build (once per machine) and import a C++ extension from ``csrc/``; None when
    ``KRONBIT_NO_EXTENSION=1`` or it cannot be built (no compiler): then one warning line is logged
    for the whole process (later extensions are not tried) and callers use their plain-torch path."""
    global _BUILD_FAILED
    if os.environ.get("KRONBIT_NO_EXTENSION") == "1":
        return None
    if name in _LOADED or _BUILD_FAILED:
        return _LOADED.get(name)
    with _LOCK:
        if name not in _LOADED and not _BUILD_FAILED:
            try:
                from torch.utils.cpp_extension import load

                _LOADED[name] = load(name=name, sources=[str(CSRC / s) for s in sources], extra_cflags=CFLAGS,
                                     verbose=False)
            except Exception as e:  # no compiler, no headers: the torch paths still work
                _BUILD_FAILED = True
                msg = str(e).strip().splitlines()
                log.warning("kronbit: low-bit kernels not built (%s); using the plain torch path",
                            msg[0] if msg else type(e).__name__)
    return _LOADED.get(name)
