"""ONNX export of a packed model: the weights stay packed in the graph (unpacking is shifts, masks
and a multiply), and the graph is checked against torch in onnxruntime when it is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import ModelError
from ..core.io import atomic_path
from ..models.encoders import load_tokenizer
from .packed import load_packed, packed_dir


def export_onnx(model_dir: str | Path, path: str | Path, seq_len: int = 128, check: bool = True) -> dict[str, Any]:
    """Export a packed model to ONNX (the weights stay packed in the graph: unpacking is shifts,
    masks and a multiply) and, if onnxruntime is installed, compare it with torch on one batch."""
    d = packed_dir(model_dir)
    if d is None:
        raise ModelError(f"{model_dir}: not a packed model directory; run kronbit export first")
    model = load_packed(d, mode="packed")
    tok = load_tokenizer(d)
    batch = tok(["kronbit exports this sentence to onnx"] * 2, padding="max_length", truncation=True,
                max_length=seq_len, return_tensors="pt")
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch]
    inputs = tuple(batch[k] for k in names)

    class _Wrapper(nn.Module):  # positional inputs → logits tensor
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *xs):
            out = self.inner(**dict(zip(names, xs)))
            return out.logits if hasattr(out, "logits") else out[0]

    wrapper = _Wrapper(model).eval()
    path = Path(path)
    with atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(wrapper, inputs, str(tmp), input_names=names, output_names=["logits"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}},
                          opset_version=18, dynamo=False)
    result: dict[str, Any] = {"path": str(path), "bytes": path.stat().st_size}
    if check:
        try:
            import onnxruntime as ort
        except ImportError:
            result["checked"] = "onnxruntime not installed"
            return result
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {n: x.numpy() for n, x in zip(names, inputs)})[0]
        with torch.no_grad():
            want = wrapper(*inputs).numpy()
        result["max_abs_diff_vs_torch"] = float(abs(got - want).max())
    return result
