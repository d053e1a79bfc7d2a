"""``kronbit bench MODEL_DIR``: forward latency of a packed model against its full-precision
architecture run three ways (fp32, fp32 under bf16 autocast, PyTorch int8 dynamic quantization
with fbgemm), over a grid of batch × sequence shapes.

The comparison models are the packed model's base architecture built from its ``config.json``
(random weights: latency does not depend on the values; a Kronecker model's comparison is the
undecomposed architecture). Every variant is built once, warmed up once per shape, then timed in
interleaved rounds (packed, fp32, bf16, int8, packed, ...), so a change in the machine's load hits
every variant alike; the figure is the median over rounds of the mean time of a few forwards.

On a CPU without bf16 units (no AVX512_BF16 / AMX) torch emulates bf16 and the autocast variant
is several times slower than fp32; ``bf16_native`` in the result says which case was measured.

The result is one JSON-able dict; ``bench.json`` in the model folder holds one key per shape
(``"1x128"``) mapping each variant to its milliseconds, plus ``meta`` (threads, rounds, machine).
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic

from ..core.errors import ConfigError, ModelError
from ..core.hardware import native_bf16
from ..core.io import write_json
from ..formats.meta import build_base
from ..formats.packed import load_packed, packed_dir
from ..quant.packed import kernel_paths

BENCH_FILE = "bench.json"
VARIANTS = ("packed", "fp32", "bf16_autocast", "int8_dynamic")
DEFAULT_SHAPES = ("1x128", "32x128")
MIN_TIMED_S = 0.2  # forwards per timing: enough for this many seconds (a 1-token model is noisy)


def parse_shape(text: str) -> tuple[int, int]:
    """"32x128" → (32, 128): batch × sequence length."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"shape {text!r}: expected BATCHxSEQ with positive integers, e.g. 32x128")
    return int(parts[0]), int(parts[1])


@contextmanager
def _threads(n: int | None) -> Iterator[int]:
    before = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ConfigError(f"threads={n}: must be at least 1")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _int8_dynamic(fp32: nn.Module) -> nn.Module:
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise ModelError("int8 dynamic quantization needs the fbgemm engine, which this torch build lacks")
    engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        return quantize_dynamic(copy.deepcopy(fp32), {nn.Linear}, dtype=torch.qint8).eval()
    finally:
        torch.backends.quantized.engine = engine


def build_variants(model_dir: Path) -> dict[str, tuple[nn.Module, bool]]:
    """variant → (model, bf16 autocast on?) for a packed directory."""
    packed = load_packed(model_dir)
    torch.manual_seed(0)
    fp32 = build_base(model_dir).eval()
    return {"packed": (packed, False), "fp32": (fp32, False), "bf16_autocast": (fp32, True),
            "int8_dynamic": (_int8_dynamic(fp32), False)}


def _forward(model: nn.Module, ids: torch.Tensor, autocast: bool) -> Callable[[], float]:
    def run(reps: int = 1) -> float:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            t0 = time.perf_counter()
            for _ in range(reps):
                model(input_ids=ids)
            return (time.perf_counter() - t0) / reps
    return run


def time_shape(variants: dict[str, tuple[nn.Module, bool]], batch: int, seq: int, rounds: int,
               vocab: int) -> dict[str, float]:
    """Median ms per forward of each variant at batch × seq, interleaved rounds."""
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    runs = {name: _forward(m, ids, ac) for name, (m, ac) in variants.items()}
    reps = {}
    for name, run in runs.items():  # warm-up: first-call work (caches, kernel selection) is not timed
        first = run()
        reps[name] = max(1, min(20, int(MIN_TIMED_S / max(first, 1e-6))))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(run(reps[name]))
    return {name: round(1e3 * statistics.median(t), 3) for name, t in times.items()}


def _check_shapes(shapes: list[tuple[int, int]], config) -> None:
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    for b, s in shapes:
        if limit is not None and s > limit:
            raise ConfigError(f"shape {b}x{s}: sequence length {s} exceeds the model's {limit} positions")


def bench_model(model_dir: str | Path, shapes: list[str] | tuple[str, ...] = DEFAULT_SHAPES, rounds: int = 5,
                threads: int | None = None, write: bool = True) -> dict[str, Any]:
    """Latency of the packed model at ``model_dir`` against its fp32 / bf16-autocast / int8-dynamic
    equivalents (see the module docstring); writes ``bench.json`` into the folder unless ``write``
    is False. Returns ``{"model_dir", shapes..., "meta"}``."""
    d = packed_dir(model_dir)
    if d is None:
        raise ModelError(f"{model_dir}: no packed model here (kronbit bench times a packed directory; "
                         "create one with kronbit export)")
    if rounds < 1:
        raise ConfigError(f"rounds={rounds}: must be at least 1")
    grid = [parse_shape(s) for s in shapes]
    if not grid:
        raise ConfigError("no shapes to time; pass e.g. --shapes 1x128 32x128")
    with _threads(threads) as n:
        variants = build_variants(d)
        config = variants["fp32"][0].config
        _check_shapes(grid, config)
        result: dict[str, Any] = {f"{b}x{s}": time_shape(variants, b, s, rounds, config.vocab_size) for b, s in grid}
    result["meta"] = {"unit": "ms per forward (median of interleaved rounds)", "threads": n, "rounds": rounds,
                      "variants": list(VARIANTS), "bf16_native": native_bf16(), "machine": platform.machine(),
                      "torch": torch.__version__, "packed_linear_paths": kernel_paths(variants["packed"][0]),
                      "comparison_weights": "the base architecture from config.json, random init"}
    if write:
        write_json(d / BENCH_FILE, result)
    return {"model_dir": str(d), **result}


def markdown(result: dict[str, Any]) -> str:
    """The result as a table: one row per shape, ms (and the ratio to int8 dynamic) per variant."""
    shapes = [k for k in result if k not in ("meta", "model_dir")]
    head = "| batch × seq | " + " | ".join(VARIANTS) + " |\n|---|" + "---|" * len(VARIANTS) + "\n"
    rows = []
    for s in shapes:
        ms = result[s]
        cells = [f"{ms[v]:.2f} ({ms[v] / ms['int8_dynamic']:.2f}x)" for v in VARIANTS]
        rows.append(f"| {s.replace('x', ' × ')} | " + " | ".join(cells) + " |")
    note = "" if result["meta"]["bf16_native"] else "\nbf16 autocast is emulated on this CPU (no bf16 units).\n"
    return head + "\n".join(rows) + "\n\nms per forward, median; ratio to int8 dynamic in brackets.\n" + note
