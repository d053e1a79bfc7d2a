"""Estimated packed size of a (fake-)quantized model: what a packed export will weigh.

Counts each quantized weight at its bit-width (codes) plus one fp32 scale per row (or tensor),
and every other parameter at 4 bytes (fp32). Learnable activation-quantizer scalars count as fp32
parameters. This is an estimate of the packed checkpoint's tensor bytes, not a file size.
"""

from __future__ import annotations

from torch import nn

from .layers import FULL, QuantEmbedding, QuantLinear


def estimate_size(model: nn.Module) -> dict:
    quant_bytes = scale_bytes = 0.0
    counted: set[int] = set()
    for m in model.modules():
        if isinstance(m, (QuantLinear, QuantEmbedding)) and m.w_bits < FULL:
            counted.add(id(m.weight))
            quant_bytes += m.weight.numel() * m.w_bits / 8
            rows = m.weight.shape[0] if m.granularity == "row" else 1
            scale_bytes += 4 * rows
    fp_bytes = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in counted or id(p) in seen:
            continue
        seen.add(id(p))
        fp_bytes += 4 * p.numel()
    total = quant_bytes + scale_bytes + fp_bytes
    return {"total_bytes": int(total), "quantized_weight_bytes": int(quant_bytes), "scale_bytes": int(scale_bytes),
            "fp32_bytes": int(fp_bytes),
            "note": "estimate: quantized weights at their bit-width + fp32 row scales + fp32 for the rest"}
