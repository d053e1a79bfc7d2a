"""Quantized modules: ``QuantLinear`` (for ``nn.Linear`` and HF ``Conv1D``) and ``QuantEmbedding``.

Both keep the latent full-precision weight as a parameter and fake-quantize it in ``forward``;
bits can change at run time (``set_bits``) because progressive quantization lowers them between
stages on the same trained modules. The weight is always stored (out, in); ``fan_in_fan_out``
remembers that the original was a ``Conv1D`` (in, out) so ``to_module`` gives it back as it was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modules import Conv1D, linear_weight
from .quantizers import ACT_QUANTIZERS, AUTO_ACT, AUTO_WEIGHT, WEIGHT_QUANTIZERS, WeightQuantizer

FULL = 32


def make_weight_quantizer(bits: int, name: str, granularity: str, symmetric: bool, mean_centering: bool,
                          shape: tuple[int, ...]) -> WeightQuantizer | None:
    if bits >= FULL:
        return None
    cls, _ = WEIGHT_QUANTIZERS[AUTO_WEIGHT[bits] if name == "auto" else name]
    return cls(bits=bits, granularity=granularity, symmetric=symmetric, mean_centering=mean_centering,
               shape=shape)


def make_act_quantizer(bits: int, name: str) -> nn.Module | None:
    if bits >= FULL:
        return None
    cls, _ = ACT_QUANTIZERS[AUTO_ACT[bits] if name == "auto" else name]
    return cls(bits=bits)


class _Quantized(nn.Module):
    """Shared bits / quantizer bookkeeping of QuantLinear and QuantEmbedding."""

    weight: nn.Parameter

    def _setup(self, qcfg) -> None:
        self.weight_quantizer_name = qcfg.weight_quantizer
        self.act_quantizer_name = qcfg.act_quantizer
        self.granularity = qcfg.granularity
        self.symmetric = qcfg.symmetric
        self.mean_centering = qcfg.mean_centering

    def _weight_q(self, bits: int):
        return make_weight_quantizer(bits, self.weight_quantizer_name, self.granularity, self.symmetric,
                                     self.mean_centering, tuple(self.weight.shape))

    def quantized_weight_value(self) -> torch.Tensor:
        """The weight as the forward uses it (fake-quantized), detached."""
        with torch.no_grad():
            return self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)

    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(integer codes, scale, offset or None) with fake weight == codes·scale (+ offset)."""
        if self.weight_quantizer is None:
            raise ValueError("this layer's weight is full precision (w_bits=32)")
        with torch.no_grad():
            return self.weight_quantizer.codes(self.weight)


class QuantLinear(_Quantized):
    def __init__(self, in_features: int, out_features: int, bias: bool, qcfg, fan_in_fan_out: bool = False,
                 quantize_output: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.fan_in_fan_out = fan_in_fan_out
        self.quantize_output = quantize_output
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._setup(qcfg)
        self.w_bits, self.a_bits = FULL, FULL
        self.weight_quantizer = self.input_quantizer = self.output_quantizer = None
        self.set_bits(qcfg.w_bits, qcfg.a_bits)

    @classmethod
    def from_module(cls, module: nn.Module, qcfg, quantize_output: bool = False) -> "QuantLinear":
        w, b, fifo = linear_weight(module)
        q = cls(w.shape[1], w.shape[0], b is not None, qcfg, fifo, quantize_output)
        with torch.no_grad():
            q.weight.copy_(w)
            if b is not None:
                q.bias.copy_(b)
        return q.to(w.device)

    def set_bits(self, w_bits: int, a_bits: int) -> None:
        """Change bit-widths in place; quantizers whose bits change start fresh (their learned
        scales were fitted to the old grid), the latent weights are kept."""
        if w_bits != self.w_bits:
            self.weight_quantizer = self._weight_q(w_bits)
        if a_bits != self.a_bits:
            self.input_quantizer = make_act_quantizer(a_bits, self.act_quantizer_name)
            self.output_quantizer = make_act_quantizer(a_bits, self.act_quantizer_name) if self.quantize_output else None
        self.w_bits, self.a_bits = w_bits, a_bits
        if self.weight_quantizer is not None:
            self.weight_quantizer.to(self.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        w = self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)
        y = F.linear(x, w, self.bias)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y)
        return y

    def to_module(self) -> nn.Module:
        """The equivalent plain layer with the quantized weight values (activation quantizers,
        which a plain layer cannot express, are dropped)."""
        w = self.quantized_weight_value().detach().clone()
        if self.fan_in_fan_out:
            m = Conv1D(self.out_features, self.in_features)
            m.weight.data = w.t().contiguous()
            if self.bias is not None:
                m.bias.data = self.bias.detach().clone()
            return m
        m = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        m.weight.data = w
        if self.bias is not None:
            m.bias.data = self.bias.detach().clone()
        return m

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, w_bits={self.w_bits}, a_bits={self.a_bits}"
                f"{', conv1d' if self.fan_in_fan_out else ''}{', quantize_output' if self.quantize_output else ''}")


class QuantEmbedding(_Quantized):
    """Word embeddings with quantized weights (lookups need no activation quantizer)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, qcfg, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        self._setup(qcfg)
        self.w_bits, self.a_bits = FULL, FULL
        self.weight_quantizer = None
        self.set_bits(qcfg.w_bits, qcfg.a_bits)

    @classmethod
    def from_module(cls, module: nn.Embedding, qcfg) -> "QuantEmbedding":
        q = cls(module.num_embeddings, module.embedding_dim, qcfg, module.padding_idx)
        with torch.no_grad():
            q.weight.copy_(module.weight)
        return q.to(module.weight.device)

    def set_bits(self, w_bits: int, a_bits: int) -> None:
        if w_bits != self.w_bits:
            self.weight_quantizer = self._weight_q(w_bits)
        self.w_bits, self.a_bits = w_bits, a_bits

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)
        return F.embedding(ids, w, self.padding_idx)

    def to_module(self) -> nn.Embedding:
        m = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx)
        m.weight.data = self.quantized_weight_value().detach().clone()
        return m

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, w_bits={self.w_bits}"
