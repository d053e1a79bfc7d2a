"""Estimated packed size of a (fake-)quantized model: what a packed export will weigh.

Counts each quantized weight at its bit-width (its integer codes) plus its fp32 scales and
offsets exactly as ``quantized_weight()`` returns them, and every other parameter at 4 bytes
(fp32), shared parameters once. A quantized weight tied to a full-precision module (GPT-2's LM
head) is also counted at fp32, since that module needs it unquantized. Learnable
activation-quantizer parameters count as fp32 parameters. This is the packed checkpoint's tensor
bytes, not a file size.
"""

from __future__ import annotations

from torch import nn

from .attention import active_binary_attention
from .layers import FULL, QuantModule


def _quantized_tensors(m: nn.Module) -> dict[str, tuple]:
    """{parameter name: (codes, scale, offset)} of a module's quantized weights ({} if none)."""
    return m.quantized_tensors() if isinstance(m, QuantModule) and m.w_bits < FULL else {}


def estimate_size(model: nn.Module) -> dict:
    quant_bytes = scale_bytes = 0.0
    for m in model.modules():
        for codes, scale, offset in _quantized_tensors(m).values():
            quant_bytes += codes.numel() * m.w_bits / 8
            scale_bytes += 4 * (scale.numel() + (0 if offset is None else offset.numel()))
    fp_bytes = 0
    seen: set[int] = set()
    for m in model.modules():
        quantized = set(_quantized_tensors(m))
        for name, p in m.named_parameters(recurse=False):
            if name in quantized or id(p) in seen:
                continue
            # A latent weight also used by a full-precision module (a tied LM head) is stored
            # twice: packed for the quantized module, fp32 for the other.
            seen.add(id(p))
            fp_bytes += 4 * p.numel()
    total = quant_bytes + scale_bytes + fp_bytes
    return {"total_bytes": int(total), "quantized_weight_bytes": int(quant_bytes), "scale_bytes": int(scale_bytes),
            "fp32_bytes": int(fp_bytes),
            # BiT's binarized attention in effect (its probability α's are among the fp32 bytes)
            "attention": "binary" if active_binary_attention(model) else "full",
            "note": "estimate: quantized weights at their bit-width + fp32 scales/offsets + fp32 for the rest"}
