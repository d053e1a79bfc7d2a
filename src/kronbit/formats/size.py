"""The size report: on-disk and in-memory size of a packed, compressed or plain model directory,
with a breakdown (embeddings, encoder weights, scales, full-precision parts), what stays in full
precision by group (word / position embeddings, LayerNorms, biases, classifier, ...) and the ratio
to the same architecture stored as fp32. Tensor tables are read from the safetensors header, without
loading (or unpickling) anything."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import ModelError
from ..core.io import safetensors_header
from ..core.transforms import transform_summaries
from .compressed import WEIGHTS_NAME
from .load import load_model
from .meta import build_base, read_meta
from .packed import PACKED_WEIGHTS, load_packed, packed_dir, read_packed_meta


def _category(name: str, packed_names: set[str]) -> str:
    module = name.rsplit(".", 1)[0]
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("weight_scale", "weight_offset", "a_scale", "a_offset", "b_scale", "b_offset") or "_quantizer." in name:
        return "scales"
    if "embed" in name or module.endswith(("wte", "wpe")):
        return "embeddings"
    if leaf in ("packed_weight", "packed_a", "packed_b") or (leaf in ("a", "b") and module not in packed_names):
        return "encoder_weights"
    if leaf == "weight" and ("layer." in name or ".h." in name or "layers." in name) and "LayerNorm" not in name \
            and "norm" not in module.rsplit(".", 1)[-1].lower():
        return "encoder_weights"
    return "full_precision"


# What stays in full precision, by group: the first pattern a tensor name matches names its group.
_FP_GROUPS = (
    ("word embeddings", re.compile(r"(word_embeddings|embed_tokens|\bwte)\.")),
    ("position embeddings", re.compile(r"(position_embeddings|\bwpe)\.")),
    ("token-type embeddings", re.compile(r"token_type_embeddings\.")),
    ("LayerNorms", re.compile(r"(layernorm|layer_norm|\bln_\w*|\bnorm)\.", re.IGNORECASE)),
    ("classifier / head", re.compile(r"^(classifier|score|lm_head)\.")),
    ("pooler", re.compile(r"pooler\.")),
    ("biases", re.compile(r"\.bias$")),
    ("Kronecker factors", re.compile(r"\.(a|b)$")),
    ("linear weights", re.compile(r"\.weight$")),
)


def _fp_group(name: str) -> str:
    return next((g for g, pattern in _FP_GROUPS if pattern.search(name)), "other")


def full_precision_groups(header: dict[str, Any], packed_names: set[str]) -> dict[str, float]:
    """MB of the float tensors that are neither integer codes nor scales, by group (largest first):
    what a user can still shrink (``quantize_embeddings``, ``--dtype float16``)."""
    sizes: dict[str, int] = {}
    for name, v in header.items():
        if not v["dtype"].startswith(("F", "BF")) or _category(name, packed_names) == "scales":
            continue
        group = _fp_group(name)
        sizes[group] = sizes.get(group, 0) + v["data_offsets"][1] - v["data_offsets"][0]
    return {g: round(b / 1e6, 3) for g, b in sorted(sizes.items(), key=lambda kv: -kv[1])}


def fp32_reference_bytes(model_dir: Path) -> tuple[int, int]:
    """(parameters, bytes at fp32) of the uncompressed base model described by config.json,
    counted on the meta device (no memory, no weights); tied parameters count once."""
    with torch.device("meta"):
        base = build_base(model_dir)
    n = sum(p.numel() for p in base.parameters())
    return n, 4 * n


def size_report(path: str | Path, in_memory: bool = True) -> dict[str, Any]:
    """On-disk and in-memory size of a packed, compressed or plain model directory, with a
    breakdown. ``ratio_vs_fp32`` = bytes of the same architecture stored as fp32 safetensors
    (parameters × 4) over this model's tensor file."""
    p = Path(path)
    d = packed_dir(p)
    transforms: list[dict[str, Any]] = []
    if d is not None:
        tensor_file, kind = d / PACKED_WEIGHTS, "packed"
        packed_meta = read_packed_meta(d)
        packed_names, transforms = set(packed_meta.get("packed", {})), packed_meta["transforms"]
    else:
        cands = [c / f for c in (p, p / "model") for f in (WEIGHTS_NAME, "model.safetensors")]
        tensor_file = next((c for c in cands if c.is_file()), None)
        if tensor_file is None:
            raise ModelError(f"{p}: no model tensors found (a packed, compressed or Hugging Face safetensors dir)")
        d, packed_names = tensor_file.parent, set()
        kind = "compressed" if tensor_file.name == WEIGHTS_NAME else "huggingface"
        if kind == "compressed":
            transforms = read_meta(d).get("transforms") or []
    header = safetensors_header(tensor_file)
    breakdown: dict[str, int] = {"embeddings": 0, "encoder_weights": 0, "scales": 0, "full_precision": 0}
    for name, v in header.items():
        a, b = v["data_offsets"]
        breakdown[_category(name, packed_names)] += b - a
    n_params, fp32 = fp32_reference_bytes(d)
    disk = tensor_file.stat().st_size
    report: dict[str, Any] = {
        "path": str(d), "kind": kind, "file": tensor_file.name,
        "disk_bytes": disk, "disk_mb": round(disk / 1e6, 3), "disk_mib": round(disk / 2**20, 3),
        "fp32_parameters": n_params, "fp32_bytes": fp32, "fp32_mb": round(fp32 / 1e6, 3),
        "ratio_vs_fp32": round(fp32 / disk, 3),
        "breakdown_mb": {k: round(v / 1e6, 3) for k, v in breakdown.items()},
        "breakdown_mib": {k: round(v / 2**20, 3) for k, v in breakdown.items()},
        "full_precision_mb": full_precision_groups(header, packed_names),
        "counts": "tensor file only (config/tokenizer JSON excluded); fp32 = the base architecture's parameters × 4 "
                  "bytes, tied parameters once",
    }
    # What the recorded transforms do (quant: bits, and whether the attention matmul inputs are binary)
    report.update(transform_summaries(transforms))
    if in_memory:
        if kind == "packed":
            model = load_packed(d)
        else:
            model = load_model(d)
        mem = module_bytes(model)
        report.update(memory_bytes=mem, memory_mb=round(mem / 1e6, 3), memory_mib=round(mem / 2**20, 3),
                      memory_ratio_vs_fp32=round(fp32 / mem, 3))
    return report


def module_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (each storage once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


