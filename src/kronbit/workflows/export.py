"""``kronbit export``: a run or compressed-model directory in, a packed directory out (optionally
with ONNX), its size, and its model card (README.md): a folder ready for the Hub that plain
transformers loads once kronbit is imported."""

from __future__ import annotations

import os

from pathlib import Path
from typing import Any

from ..core.errors import ModelError
from ..core.io import atomic_dir
from ..formats.compressed import compressed_dir, load_compressed
from ..formats.meta import read_meta
from ..formats.model_card import CARD_NAME, base_model_of, write_model_card
from ..formats.onnx import export_onnx
from ..formats.packed import check_dtype, export_packed
from ..formats.size import size_report
from ..models.encoders import load_tokenizer


def export_model(model: str | Path, output_dir: str | Path, *, dtype: str = "float32", overwrite: bool = False,
                 onnx: bool = False, onnx_seq_len: int = 128) -> dict[str, Any]:
    """``kronbit export``: a run or compressed-model directory → a packed directory."""
    check_dtype(dtype)
    src = compressed_dir(model)
    if src is None:
        raise ModelError(f"{model}: not a kronbit compressed model or run directory (no kronbit_model.safetensors); "
                         "a plain full-precision checkpoint has nothing to pack")
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ModelError(f"{out} exists and is not empty; pass --overwrite to replace it")
    if out.resolve() == src.resolve():
        raise ModelError("the output directory is the source model directory; choose another")
    m = load_compressed(src)
    meta = {k: v for k, v in read_meta(src).items() if k not in ("format", "format_version", "transforms")}
    base = base_model_of(src, meta)  # before "source" below names the exported directory
    tokenizer = load_tokenizer(src)
    result: dict[str, Any] = {"output_dir": str(out), "dtype": dtype}
    # Packed files, model.onnx and the model card are built side by side and appear together: a
    # failure leaves no output directory (or the previous one as it was).
    with atomic_dir(out) as tmp:
        export_packed(m, tmp, tokenizer=tokenizer, dtype=dtype, meta={**meta, "source": _portable(src, out), "base_model": base})
        if onnx:
            result["onnx"] = {**export_onnx(tmp, tmp / "model.onnx", seq_len=onnx_seq_len),
                              "path": str(out / "model.onnx")}
        report = size_report(tmp, in_memory=False)
        write_model_card(tmp, report, name=out.name)
    result.update({k: report[k] for k in ("disk_mb", "fp32_mb", "ratio_vs_fp32")})
    result["model_card"] = str(out / CARD_NAME)
    return result


def _portable(src: Path, out: Path) -> str:
    """Where the packed model came from, relative to where it goes: kronbit.json travels with the
    folder (to another machine, to the Hub), an absolute local path would not mean anything there."""
    return os.path.relpath(src.resolve(), out.resolve().parent)
