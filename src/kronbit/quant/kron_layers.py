"""Quantized Kronecker layers: the factors A and B of ``Σ A_r ⊗ B_r`` fake-quantized in training
and stored as packed codes on export — both compressions at once (e.g. a factor-2 Kronecker layer
with ternary factors is ~32x smaller than the dense fp32 matrix).

``QuantKroneckerLinear`` shares the Kronecker layer's parameters (``a``, ``b``, ``bias``) and
adds ``a_quantizer`` / ``b_quantizer`` (any weight quantizer; "row" granularity means one scale
per rank term of the factor) and an ``input_quantizer`` for the activations, with the same bit
rules as ``QuantLinear``. The forward pass is the Kronecker contraction on the quantized factors,
so the dense weight is never built here either.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.errors import ModelError
from ..kron.layers import KroneckerLinear, kron_linear
from .layers import FULL, QuantModule, QuantOptions, normalize_bits
from .registry import build_weight_quantizer


class QuantKroneckerLinear(QuantModule):
    def __init__(self, kron: KroneckerLinear, config: Any = None):
        super().__init__()
        self.in_features, self.out_features = kron.in_features, kron.out_features
        self.a_shape, self.b_shape, self.rank, self.order = kron.a_shape, kron.b_shape, kron.rank, kron.order
        self.fan_in_fan_out = kron.fan_in_fan_out
        self.quantize_output = False
        self.a, self.b, self.bias = kron.a, kron.b, kron.bias  # shared Parameters: training updates them
        self.options = QuantOptions.of(config)
        self.w_bits = self.a_bits = FULL
        for name in ("a_quantizer", "b_quantizer", "input_quantizer"):
            self.register_module(name, None)
        self.set_bits(getattr(config, "w_bits", FULL), getattr(config, "a_bits", FULL))

    @classmethod
    def from_module(cls, kron: KroneckerLinear, config: Any) -> "QuantKroneckerLinear":
        return cls(kron, config)

    def _weight_quantizer(self, bits: int, factor: torch.Tensor) -> nn.Module | None:
        if bits >= FULL:
            return None
        o = self.options
        return build_weight_quantizer(bits, o.weight_quantizer, granularity=o.granularity, symmetric=o.symmetric,
                                      mean_centering=o.mean_centering, clip_ratio=o.clip_ratio, clip_val=o.clip_val,
                                      shape=tuple(factor.shape)).to(factor.device)

    def set_bits(self, w_bits: int | None, a_bits: int | None) -> None:
        w_bits, a_bits = normalize_bits(w_bits), normalize_bits(a_bits)
        qa, qb, qin = self.a_quantizer, self.b_quantizer, self.input_quantizer
        if w_bits != self.w_bits:
            qa, qb = self._weight_quantizer(w_bits, self.a), self._weight_quantizer(w_bits, self.b)
        if a_bits != self.a_bits:
            qin = self._make_act_quantizer(a_bits, self.in_features, self.a.device)
        self.a_quantizer, self.b_quantizer, self.input_quantizer = qa, qb, qin
        self.w_bits, self.a_bits = w_bits, a_bits

    def quantized_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        qa = self.a if self.a_quantizer is None else self.a_quantizer(self.a)
        qb = self.b if self.b_quantizer is None else self.b_quantizer(self.b)
        return qa, qb

    def factor_codes(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """{"a": (codes, scale, offset), "b": ...} with codes·scale (+ offset) == the fake-quant factor."""
        if self.a_quantizer is None:
            raise ModelError("QuantKroneckerLinear: the factors are full precision (w_bits=32); no codes to export")
        return {"a": self.a_quantizer.codes(self.a), "b": self.b_quantizer.codes(self.b)}

    def quantized_tensors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        return self.factor_codes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        qa, qb = self.quantized_factors()
        return kron_linear(x, qa, qb, self.bias, self.order)

    def to_module(self) -> KroneckerLinear:
        """A plain KroneckerLinear holding the quantized factor values."""
        with torch.no_grad():
            qa, qb = (t.detach().clone() for t in self.quantized_factors())
        k = KroneckerLinear(self.in_features, self.out_features, self.a_shape, self.b_shape, self.rank,
                            bias=self.bias is not None, fan_in_fan_out=self.fan_in_fan_out, order=self.order,
                            device=qa.device, dtype=qa.dtype)
        with torch.no_grad():
            k.a.copy_(qa)
            k.b.copy_(qb)
            if self.bias is not None:
                k.bias.copy_(self.bias)
        return k

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, A={self.a_shape}, "
                f"B={self.b_shape}, rank={self.rank}, w_bits={self.w_bits}, a_bits={self.a_bits}")
