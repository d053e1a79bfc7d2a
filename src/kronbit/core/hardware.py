"""What this machine's processor does fast, so a setting like ``bf16: auto`` means the same thing
on every machine: bf16 autocast where there are bf16 units to run it, fp32 elsewhere.

On a CPU without native bf16 (no AVX512_BF16 / AMX, e.g. an AVX2-only x86 or an older ARM) torch
emulates bf16 matmuls, and bf16 autocast is several times *slower* than fp32 (measured on an AVX2
EPYC: MiniLM fwd+bwd at 32 × 128, 80 s in bf16 against 10 s in fp32)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Literal

import torch

log = logging.getLogger("kronbit")

BF16Setting = bool | Literal["auto"]
# CPU flags (Linux /proc/cpuinfo names) that give native bf16 matrix arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512 BF16, x86 AMX, ARMv8.6 BF16


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16() -> bool:
    """Does bf16 autocast run on real bf16 units here (a CUDA GPU that has them, or the CPU)?"""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return any(f in cpu_flags() for f in BF16_CPU_FLAGS)


@functools.lru_cache(maxsize=None)
def _warn_slow_bf16() -> None:
    log.warning("bf16 autocast requested, but this CPU has no bf16 units (flags: none of %s): torch emulates "
                "it, several times slower than fp32; set bf16: auto (or false) to train in fp32",
                ", ".join(BF16_CPU_FLAGS))


def resolve_bf16(setting: BF16Setting) -> bool:
    """``auto`` → bf16 exactly where it is native; ``true``/``false`` as given (``true`` on a CPU
    that emulates bf16 warns once)."""
    if setting == "auto":
        return native_bf16()
    if setting and not native_bf16():
        _warn_slow_bf16()
    return bool(setting)
