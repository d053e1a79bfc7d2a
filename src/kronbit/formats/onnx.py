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
from ..quant.packed import select_kernels_
from .packed import load_packed, packed_dir

OPSET = 18


def export_onnx(model_dir: str | Path, path: str | Path, seq_len: int = 128, check: bool = True) -> dict[str, Any]:
    """Export a packed model to ONNX (the weights stay packed in the graph: unpacking is shifts,
    masks and a multiply) and, if onnxruntime is installed, compare it with torch on one batch."""
    d = packed_dir(model_dir)
    if d is None:
        raise ModelError(f"{model_dir}: not a packed model directory; run kronbit export first")
    model = load_packed(d, mode="packed")
    # The graph is traced on the torch path from the file's packed layout: the kernels' layouts
    # (int64 words on AVX-512) are reinterpreted with dtype views, which the tracer cannot record.
    select_kernels_(model, "off")
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
    with torch.no_grad():
        # Eager first: the reference output, and a learned activation quantizer that has never
        # seen a batch initialises here rather than inside the trace (where it cannot).
        want = wrapper(*inputs).numpy()
    path = Path(path)
    result: dict[str, Any] = {"path": str(path)}
    # The graph is written and checked under a temporary name: a failure leaves no model.onnx, or
    # the previous one as it was.
    with atomic_path(path) as tmp:
        try:
            with torch.no_grad():
                torch.onnx.export(wrapper, inputs, str(tmp), input_names=names, output_names=["logits"],
                                  dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names}
                                  | {"logits": {0: "batch"}}, opset_version=OPSET, dynamo=False)
        except Exception as e:  # the exporter's errors are long dumps of the graph; the user gets a line
            raise ModelError(f"ONNX export of {d} failed: {_first_line(e)}; {path} was not written") from e
        result["bytes"] = tmp.stat().st_size
        if check:
            result.update(_check_in_onnxruntime(tmp, path, dict(zip(names, inputs)), want))
    return result


def _check_in_onnxruntime(graph: Path, path: Path, inputs: dict[str, torch.Tensor], want) -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"checked": "onnxruntime not installed"}
    try:
        sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        got = sess.run(None, {n: x.numpy() for n, x in inputs.items()})[0]
    except Exception as e:  # onnxruntime's own exception types
        raise ModelError(f"{path}: onnxruntime cannot run the exported graph ({_first_line(e)}); "
                         "it was not written") from e
    return {"max_abs_diff_vs_torch": float(abs(got - want).max())}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
