"""Quantized modules: ``QuantLinear`` (for ``nn.Linear`` and HF ``Conv1D``) and ``QuantEmbedding``.

Both keep the latent full-precision weight as their parameter and fake-quantize it in every
forward pass, so training updates the latent weight through the straight-through gradient.
Bit-widths change at run time (``set_bits``) without rebuilding the module, because progressive
quantization lowers them between stages on the same trained weights; a quantizer whose bits change
is replaced (its learned scales belonged to the old grid), the latent weight is kept. Bits of 32
(or None) mean full precision on that side.

``QuantLinear`` stores W as (out, in) whatever the original layout; ``fan_in_fan_out`` remembers a
GPT-2 ``Conv1D`` (in, out), and for those the forward pass uses Conv1D's own arithmetic
(``addmm`` on the (in, out) matrix) so that ``to_module()`` — a plain Conv1D holding the
quantized weight — reproduces the fake-quant output bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ModelError
from ..core.swap import Conv1D, linear_weight
from .registry import AUTO_ACT, AUTO_WEIGHT, build_act_quantizer, build_weight_quantizer, resolve

FULL = 32


def normalize_bits(bits: int | None) -> int:
    return FULL if bits is None or bits >= FULL else int(bits)


@dataclass(frozen=True)
class QuantOptions:
    """Everything a quantized module needs to (re)build its quantizers at any bit-width: the
    ``QuantConfig`` minus bits and targets."""

    weight_quantizer: str = "auto"
    act_quantizer: str = "auto"
    granularity: str = "row"
    symmetric: bool = True
    act_symmetric: bool = True
    mean_centering: bool = True
    clip_ratio: float = 1.0
    clip_val: float | None = None
    embedding_bits: int | None = None  # word embeddings: max(w_bits, embedding_bits) below 32

    @classmethod
    def of(cls, config: Any) -> "QuantOptions":
        """From a QuantConfig (or anything with these attributes; missing ones keep defaults)."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        defaults = cls()
        return cls(**{k: getattr(config, k, getattr(defaults, k)) for k in cls.__dataclass_fields__})


class QuantModule(nn.Module):
    """What every quantized module offers (QuantLinear, QuantEmbedding, QuantKroneckerLinear), so
    the API, the size estimate and the packed export treat them alike:

    * ``w_bits`` / ``a_bits`` and ``set_bits(w_bits, a_bits)``; ``options`` (a QuantOptions);
    * ``takes_activations``: whether it has an input to quantize (a lookup table has none);
    * ``quantized_tensors()``: {parameter name: (codes, scale, offset)} of its quantized weights,
      with ``codes · scale (+ offset) == the fake-quant tensor`` exactly in float32;
    * ``to_module()``: the plain module holding the quantized values."""

    takes_activations = True
    w_bits: int
    a_bits: int

    def quantized_tensors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        raise NotImplementedError

    @property
    def weight_quantizer_name(self) -> str | None:
        """The registry name in use ("auto" resolved), or None at full precision."""
        return None if self.w_bits >= FULL else resolve(self.options.weight_quantizer, self.w_bits, AUTO_WEIGHT)

    @property
    def act_quantizer_name(self) -> str | None:
        if not self.takes_activations or self.a_bits >= FULL:
            return None
        return resolve(self.options.act_quantizer, self.a_bits, AUTO_ACT)

    def _make_act_quantizer(self, bits: int, features: int, device: torch.device,
                            name: str | None = None) -> nn.Module | None:
        """The activation quantizer at ``bits`` (None at full precision): ``name`` when given,
        else the config's ``act_quantizer``."""
        if bits >= FULL:
            return None
        o = self.options
        return build_act_quantizer(bits, name or o.act_quantizer, symmetric=o.act_symmetric, clip_ratio=o.clip_ratio,
                                   clip_val=o.clip_val, features=features).to(device)


class _Quantized(QuantModule):
    """Bits and weight-quantizer bookkeeping shared by QuantLinear and QuantEmbedding (one latent
    ``weight``)."""

    weight: nn.Parameter
    _row_only = False  # embeddings: always one scale per row (per token vector)

    def _init_quant(self, config: Any) -> None:
        self.options = QuantOptions.of(config)
        self.w_bits = self.a_bits = FULL
        self.register_module("weight_quantizer", None)

    def _make_weight_quantizer(self, bits: int) -> nn.Module | None:
        if bits >= FULL:
            return None
        o = self.options
        q = build_weight_quantizer(bits, o.weight_quantizer, granularity="row" if self._row_only else o.granularity,
                                   symmetric=o.symmetric, mean_centering=o.mean_centering,
                                   clip_ratio=o.clip_ratio, clip_val=o.clip_val, shape=tuple(self.weight.shape))
        return q.to(self.weight.device)

    def _quantized_w(self) -> torch.Tensor:
        return self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)

    def fake_quant_weight(self) -> torch.Tensor:
        """The weight exactly as the forward pass uses it (fake-quantized), detached."""
        with torch.no_grad():
            return self._quantized_w().detach().clone()

    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(codes as int8, scale, offset or None) such that, exactly in float32,
        ``fake_quant_weight() == codes.float() * scale (+ offset)``. The weight is (out, in) for
        QuantLinear (Conv1D layers included) and (vocab, dim) for QuantEmbedding; scale and offset
        broadcast against it: (rows, 1) per row, () per tensor."""
        if self.weight_quantizer is None:
            raise ModelError(f"{type(self).__name__}: the weight is full precision (w_bits=32); "
                             "there are no integer codes to export")
        return self.weight_quantizer.codes(self.weight)

    def quantized_tensors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        return {"weight": self.quantized_weight()}


class QuantLinear(_Quantized):
    """A linear layer with a fake-quantized weight and, when ``a_bits < 32``, a quantized input
    (and, with ``quantize_output``, a quantized output: the Q/K/V projections feeding the
    attention matmuls; with ``binary_output``, the same but only at ``a_bits == 1``, BiT's
    binarized attention). ``input_act_quantizer`` names the input's quantizer when it differs
    from the config's ``act_quantizer`` (BiT's unsigned binarizer on the non-negative FFN
    intermediate activations). Bias stays full precision."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, config: Any = None, *,
                 fan_in_fan_out: bool = False, quantize_output: bool = False, binary_output: bool = False,
                 input_act_quantizer: str | None = None, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.fan_in_fan_out = fan_in_fan_out
        self.quantize_output = quantize_output
        self.binary_output = binary_output
        self.input_act_quantizer = input_act_quantizer
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()
        self._init_quant(config)
        self.register_module("input_quantizer", None)
        self.register_module("output_quantizer", None)
        self.set_bits(getattr(config, "w_bits", FULL), getattr(config, "a_bits", FULL))

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation (only matters for a layer built from scratch)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_module(cls, module: nn.Module, config: Any, quantize_output: bool = False, *,
                    binary_output: bool = False, input_act_quantizer: str | None = None) -> "QuantLinear":
        """Wrap an ``nn.Linear`` or ``Conv1D`` (its weight and bias are copied, as (out, in))."""
        w, b, fan_in_fan_out = linear_weight(module)
        q = cls(w.shape[1], w.shape[0], b is not None, config, fan_in_fan_out=fan_in_fan_out,
                quantize_output=quantize_output, binary_output=binary_output,
                input_act_quantizer=input_act_quantizer, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            q.weight.copy_(w)
            if b is not None:
                q.bias.copy_(b)
        return q

    def set_bits(self, w_bits: int | None, a_bits: int | None) -> None:
        """Change bit-widths in place (None or 32 = full precision)."""
        w_bits, a_bits = normalize_bits(w_bits), normalize_bits(a_bits)
        # Build everything first, so an unsupported combination leaves the layer unchanged.
        new_w = self._make_weight_quantizer(w_bits) if w_bits != self.w_bits else self.weight_quantizer
        new_in, new_out = self.input_quantizer, self.output_quantizer
        if a_bits != self.a_bits:
            new_in = self._make_act_quantizer(a_bits, self.in_features, self.weight.device, self.input_act_quantizer)
            output = self.quantize_output or (self.binary_output and a_bits == 1)
            new_out = self._make_act_quantizer(a_bits, self.out_features, self.weight.device) if output else None
        self.weight_quantizer, self.input_quantizer, self.output_quantizer = new_w, new_in, new_out
        self.w_bits, self.a_bits = w_bits, a_bits

    def set_binary_output(self, on: bool) -> None:
        """Turn BiT's binary output (Q/K/V at ``a_bits == 1``) on or off in place: a progressive
        schedule trains W1A1 with full-precision attention first, then binarizes it. A new output
        binarizer starts uninitialised (its scale is set from the next batch)."""
        if on == self.binary_output:
            return
        self.binary_output = on
        output = self.quantize_output or (on and self.a_bits == 1)
        if output != (self.output_quantizer is not None):
            self.output_quantizer = (self._make_act_quantizer(self.a_bits, self.out_features, self.weight.device)
                                     if output else None)

    @property
    def act_quantizer_name(self) -> str | None:
        """The input's activation quantizer ("auto" resolved), or None at full precision."""
        name = self.input_act_quantizer or self.options.act_quantizer
        return None if self.a_bits >= FULL else resolve(name, self.a_bits, AUTO_ACT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        w = self._quantized_w()
        if self.fan_in_fan_out:  # exactly Conv1D.forward, on the (in, out) matrix
            bias = self.bias if self.bias is not None else w.new_zeros(self.out_features)
            y = torch.addmm(bias, x.reshape(-1, self.in_features), w.t().contiguous())
            y = y.view(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, w, self.bias)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y)
        return y

    def to_module(self) -> nn.Module:
        """The original layer type and layout (``nn.Linear`` or ``Conv1D``) holding the *quantized*
        weight values. Activation quantizers cannot be expressed by a plain layer and are dropped
        (``dequantize_`` refuses that unless asked)."""
        w = self.fake_quant_weight()
        bias = None if self.bias is None else self.bias.detach().clone()
        if self.fan_in_fan_out:
            m = Conv1D(self.out_features, self.in_features)
            m.weight = nn.Parameter(w.t().contiguous())
            m.bias = nn.Parameter(bias if bias is not None else w.new_zeros(self.out_features))
            return m
        m = nn.Linear(self.in_features, self.out_features, bias=bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            m.weight.copy_(w)
            if bias is not None:
                m.bias.copy_(bias)
        return m

    def extra_repr(self) -> str:
        extra = ((", conv1d" if self.fan_in_fan_out else "") + (", quantize_output" if self.quantize_output else "")
                 + (", binary_output" if self.binary_output else "")
                 + (f", input_act_quantizer={self.input_act_quantizer}" if self.input_act_quantizer else ""))
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"w_bits={self.w_bits}, a_bits={self.a_bits}{extra}")


class QuantEmbedding(_Quantized):
    """Word embeddings with a fake-quantized weight, always one scale per row (per token vector,
    as TernaryBERT and BiT do for embeddings). A lookup has no input activation to quantize, so
    ``a_bits`` stays 32."""

    _row_only = True
    takes_activations = False

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, config: Any = None,
                 *, device=None, dtype=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.weight = nn.Parameter(torch.randn(num_embeddings, embedding_dim, device=device, dtype=dtype))
        if padding_idx is not None:  # as nn.Embedding (only matters for a layer built from scratch)
            with torch.no_grad():
                self.weight[padding_idx].zero_()
        self._init_quant(config)
        self.set_bits(getattr(config, "w_bits", FULL), FULL)

    @classmethod
    def from_module(cls, module: nn.Embedding, config: Any) -> "QuantEmbedding":
        """Wrap an ``nn.Embedding``, sharing its weight Parameter: a tied LM head (GPT-2, BERT MLM)
        stays tied to the latent weight and itself stays full precision."""
        if module.max_norm is not None or module.sparse:
            raise ModelError("QuantEmbedding does not support embeddings with max_norm or sparse gradients")
        q = cls(module.num_embeddings, module.embedding_dim, module.padding_idx, config=None,
                device=module.weight.device, dtype=module.weight.dtype)
        q.weight = module.weight
        q.options = QuantOptions.of(config)
        q.set_bits(getattr(config, "w_bits", FULL), FULL)
        return q

    def set_bits(self, w_bits: int | None, a_bits: int | None = None) -> None:
        w_bits = normalize_bits(w_bits)
        floor = self.options.embedding_bits
        if floor is not None and w_bits < FULL:
            w_bits = max(w_bits, floor)  # the table keeps its own (higher) bits through every stage
        if w_bits != self.w_bits:
            self.weight_quantizer = self._make_weight_quantizer(w_bits)
        self.w_bits = w_bits

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight, self.padding_idx)
        if self.weight_quantizer is None:
            return rows
        # Per-row quantization: quantizing the looked-up rows gives exactly the rows of the
        # quantized table, at the cost of the batch instead of the whole vocabulary.
        flat = rows.reshape(-1, self.embedding_dim)
        return self.weight_quantizer.forward_rows(flat, ids.reshape(-1), self.weight).view(rows.shape)

    def to_module(self) -> nn.Embedding:
        """A plain ``nn.Embedding`` holding the quantized weight values (a new Parameter: a tied
        head keeps the latent weight)."""
        w = self.fake_quant_weight()
        m = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx,
                         device=w.device, dtype=w.dtype)
        with torch.no_grad():
            m.weight.copy_(w)
        return m

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, w_bits={self.w_bits}"
