"""Measured speed of a Kronecker factor shape on this machine, for the shape chooser
(``KroneckerConfig.shape_speed: measured``).

The FLOP estimate ranks shapes by multiply-accumulates, but at SmolLM2's 576-wide layers under
bf16 a half-MAC Kronecker layer can be slower than the dense one (small GEMMs, transposes,
two kernel launches per call: docs/results/kngpt2_speed.md), and which of two near-equal shapes is
faster depends on the machine. So the chooser can time instead: each candidate's forward and
backward on ``TOKENS`` tokens against the dense layer it replaces, median of a few calls, as
``dense time / Kronecker time`` (a measured speed-up, > 1 = faster than dense).

Timings are cached in a JSON file (``$KRONBIT_CACHE_DIR/kron_timing.json``, default
``~/.cache/kronbit``), keyed by the machine (CPU model, torch version, threads), the dtype and the
shape, so a shape is timed once per machine. A cache file that does not parse is set aside with
one warning and rebuilt. The chooser's pick is recorded in the frozen config (``layer_shapes``), so
a model rebuilt from its saved config gets the same shapes on any machine, timed or not.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..core.hardware import native_bf16
from .layers import KroneckerLinear

TOKENS = 512        # the distillation step's 2 × 256 tokens
ROUNDS = 9          # interleaved rounds: dense then Kronecker, REPEATS timed samples each (median)
REPEATS = 3
CALLS = 4           # calls per timed sample
WARMUP = 3          # untimed calls first (oneDNN makes its kernels for a new shape on the first calls)
CACHE_ENV = "KRONBIT_CACHE_DIR"
CACHE_NAME = "kron_timing.json"
# Bumped whenever kron_linear's code paths change what a shape costs, so timings made with the old
# paths are not reused (2: the copy-free path for a row or column factor).
PATHS_VERSION = 2

# (m, n, a_shape, b_shape, rank, dtype) -> measured speed-up; the chooser calls one of these
Timer = Callable[[int, int, tuple[int, int], tuple[int, int], int, str], float]


def default_dtype() -> str:
    """What training runs in here: bf16 autocast where the CPU has bf16 units, else fp32."""
    return "bfloat16" if native_bf16() else "float32"


def cache_path() -> Path:
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "kronbit") / CACHE_NAME


def machine_key() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} | torch {torch.__version__} | {torch.get_num_threads()} threads | kron paths {PATHS_VERSION}"


def _median_seconds(fn: Callable[[], None]) -> float:
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(CALLS):
            fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_speedup(m: int, n: int, a_shape: tuple[int, int], b_shape: tuple[int, int], rank: int,
                 dtype: str) -> float:
    """Dense time / Kronecker time for one layer W (m out, n in), forward + backward on TOKENS
    tokens, fp32 weights (under bf16 autocast for ``dtype`` bfloat16), as training runs it."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(TOKENS, n, generator=gen)
    dense = nn.Linear(n, m)
    kron = KroneckerLinear(n, m, a_shape, b_shape, rank)

    def step(layer):
        def run():
            inp = x.detach().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                out = layer(inp)
            out.float().sum().backward()
        return run
    dense_step, kron_step = step(dense), step(kron)
    for _ in range(WARMUP):
        dense_step()
        kron_step()
    # The median of per-round ratios, each round timing both back to back: a change in the
    # machine's load hits both sides of a ratio alike (single millisecond-scale timings on a
    # shared machine vary by 30% and more).
    ratios = [_median_seconds(dense_step) / _median_seconds(kron_step) for _ in range(ROUNDS)]
    return statistics.median(ratios)


class TimingCache:
    """Measured speed-ups by (machine, dtype, shape), read from and written to one JSON file."""

    def __init__(self, path: Path | None = None, timer: Timer = time_speedup):
        self.path = path or cache_path()
        self.timer = timer
        self.machine = machine_key()
        self._data: dict[str, float] | None = None

    def _load(self) -> dict[str, float]:
        if self._data is None:
            self._data = {}
            if self.path.is_file():
                try:
                    raw = json.loads(self.path.read_text())
                    if not isinstance(raw, dict) or not all(isinstance(v, (int, float)) for v in raw.values()):
                        raise ValueError("not a mapping of keys to numbers")
                    self._data = {k: float(v) for k, v in raw.items()}
                except (ValueError, OSError) as e:
                    warnings.warn(f"kronbit: the shape timing cache {self.path} is unreadable ({e}); "
                                  "it is set aside and rebuilt", stacklevel=3)
                    self.path.replace(self.path.with_suffix(".unreadable"))
        return self._data

    def key(self, m: int, n: int, a_shape, b_shape, rank: int, dtype: str) -> str:
        return (f"{self.machine} | {dtype} | {TOKENS} tokens | W {m}x{n} | "
                f"A {a_shape[0]}x{a_shape[1]} B {b_shape[0]}x{b_shape[1]} rank {rank}")

    def speedup(self, m: int, n: int, a_shape, b_shape, rank: int, dtype: str) -> float:
        data = self._load()
        key = self.key(m, n, tuple(a_shape), tuple(b_shape), rank, dtype)
        if key not in data:
            data[key] = round(float(self.timer(m, n, tuple(a_shape), tuple(b_shape), rank, dtype)), 4)
            self._save()
        return data[key]

    def _save(self) -> None:
        # whole file or nothing: a temporary file beside it, then one rename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".kron_timing.", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self._data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
