"""How quantized modules go to, and come back from, the packed format (the quant method's
``pack`` and ``shell`` in the transform registry).

``pack_module`` turns a quantized module with quantized weights into its packed form and a small
JSON description (kind, bits, scale layout); ``packed_shell`` rebuilds an empty packed module of
the same shape from that description and the module the transforms rebuilt, on whatever device
is current (the loader uses meta: every tensor of the shell comes from the file).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..core.errors import ModelError
from .kron_layers import QuantKroneckerLinear
from .layers import FULL, QuantEmbedding, QuantLinear
from .packed import PackedEmbedding, PackedKroneckerLinear, PackedLinear


def pack_module(m: nn.Module, mode: str = "packed") -> tuple[nn.Module, dict[str, Any]] | None:
    """(packed module, description) for a quantized module with quantized weights, else None."""
    if isinstance(m, QuantKroneckerLinear) and m.w_bits < FULL:
        new = PackedKroneckerLinear.from_quant(m)
        return new, {"kind": "kron_linear", "bits": m.w_bits, "per_row": new.a_scale.dim() > 0,
                     "has_offset": new.a_offset is not None}
    if isinstance(m, QuantLinear) and m.w_bits < FULL:
        new = PackedLinear.from_quant(m, mode=mode)
        return new, {"kind": "linear", "bits": m.w_bits, "per_row": new.weight_scale.dim() > 0,
                     "has_offset": new.weight_offset is not None}
    if isinstance(m, QuantEmbedding) and m.w_bits < FULL:
        new = PackedEmbedding.from_quant(m)
        return new, {"kind": "embedding", "bits": m.w_bits, "per_row": True, "has_offset": new.weight_offset is not None}
    return None


def packed_shell(q: nn.Module, info: dict[str, Any], mode: str = "packed",
                 compute_dtype: str = "float32") -> nn.Module:
    """An empty packed module for ``q`` (the rebuilt quantized module) as ``info`` describes it."""
    kind = info.get("kind")
    if kind == "linear" and isinstance(q, QuantLinear):
        return PackedLinear.shell_of(q, info["bits"], info["per_row"], info["has_offset"], mode, compute_dtype)
    if kind == "kron_linear" and isinstance(q, QuantKroneckerLinear):
        return PackedKroneckerLinear.shell_of(q, info["bits"], info["per_row"], info["has_offset"])
    if kind == "embedding" and isinstance(q, QuantEmbedding):
        return PackedEmbedding(q.num_embeddings, q.embedding_dim, info["bits"], q.padding_idx, info["has_offset"])
    raise ModelError(f"packed module of kind {kind!r} does not match the rebuilt {type(q).__name__}; "
                     "the description is inconsistent")
