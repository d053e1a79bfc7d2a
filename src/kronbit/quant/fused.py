"""Kernel fusion across two binary layers: an FFN's W1A1 up-projection hands the down-projection
its input already binarized, as packed sign bits, so the wide float output, the activation
function over it and the next layer's sign packing never run.

Why this is exact: the up-projection's output is y = fl(fl(v_o·D) + b_o) with D an integer in
{-K, -K+2, ..., K}, and the down-projection binarizes act(y) - β_o (``ElasticAct``: the sign bit of
the float32 difference). For each output o the bit is therefore a function of D alone, with K + 1
possible values. At the first forward (and again whenever a scale, bias or β changes) every one
of them is put through the same code the unfused path runs — the kernel's epilogue arithmetic
(``binary_levels``), the model's own activation module, the kernel's own sign packing — and the
bits are read back per output. Where they form ``D <= lo or D >= hi`` (GELU minus a threshold
does: one or two crossings), the GEMM's epilogue compares D with lo / hi and writes the bit;
where any output does not, the pair stays unfused. So the fused bits are the unfused ones by
construction, not by a second implementation of GELU (torch's CPU GELU is oneDNN's, not libm's).

Wiring (``fuse_binary_ffn_``, run after loading and by ``select_kernels_``): an encoder block with
``intermediate.dense`` → ``intermediate.intermediate_act_fn`` → ``output.dense`` (BERT, RoBERTa,
ELECTRA, ... in Hugging Face naming) where both linears are packed W1A1 layers on the binary
kernel and the activation is an elementwise module. The activation module is wrapped in
``PassBits`` (which lets the packed bits through unchanged and applies the activation otherwise),
so the blocks' own forward code runs as it is; tensor names and the state dict do not change.
The bits are emitted only for float32 inputs outside autocast and when the consumer is on its
binary kernel; everything else (tracing, ONNX export, another dtype) takes the unfused path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from . import kernels

# Elementwise activation modules (torch's, and transformers' by class name: quant does not import
# transformers): the ones the threshold search may treat as a function of each value alone.
TORCH_ELEMENTWISE = (nn.GELU, nn.ReLU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Mish, nn.LeakyReLU)
HF_ELEMENTWISE = {"GELUActivation", "NewGELUActivation", "FastGELUActivation", "QuickGELUActivation",
                  "GELUTanh", "PytorchGELUTanh", "SiLUActivation", "MishActivation", "LinearActivation"}
FAR = 1 << 30  # a threshold no D reaches


def is_elementwise(act) -> bool:
    if isinstance(act, TORCH_ELEMENTWISE):
        return True
    return type(act).__name__ in HF_ELEMENTWISE and type(act).__module__.startswith("transformers.")


class PassBits(nn.Module):
    """An activation that lets an int64 tensor of packed bits through (the fused producer already
    applied it) and applies the wrapped activation to anything else."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.dtype == torch.int64 else self.act(x)


@dataclass
class BitsFusion:
    """Held by the producing PackedLinear (``fused_next``; a plain object, not a submodule)."""

    act: nn.Module
    consumer: nn.Module
    _key: list = field(default_factory=list, repr=False)  # (tensor, version) the thresholds were found for
    _thresholds: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def _inputs(self, producer) -> list[torch.Tensor | None]:
        q = producer.input_quantizer
        return [q.alpha, producer.weight_scale, producer.bias, self.consumer.input_quantizer.beta]

    def thresholds(self, producer) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(lo, hi) int32 per output, or None when some output's bits are not of that form."""
        key = [(t, t._version) for t in self._inputs(producer) if t is not None]
        if len(key) != len(self._key) or any(a is not b or v != w for (a, v), (b, w) in zip(key, self._key)):
            self._thresholds = find_thresholds(producer, self.act, self.consumer)
            self._key = key
        return self._thresholds

    def forward(self, producer, x: torch.Tensor) -> torch.Tensor | None:
        """The consumer's packed input bits from the producer's raw input, or None (unfused)."""
        consumer = self.consumer
        if (x.dtype != torch.float32 or torch.is_autocast_enabled("cpu") or producer.output_quantizer is not None
                or consumer.kernel is None or consumer.kernel.kind != "binary"
                or not bool(producer.input_quantizer.initialized) or not bool(consumer.input_quantizer.initialized)):
            return None
        with torch.no_grad():
            th = self.thresholds(producer)
            if th is None:
                return None
            flat = x.reshape(-1, producer.in_features)
            if not flat.is_contiguous():
                flat = flat.contiguous()
            q, k = producer.input_quantizer, producer.kernel
            bits = kernels.extension().binary_linear_bits(flat, q.beta.detach().float().contiguous(),
                                                          producer.packed_weight, k.out_features, th[0], th[1], k.path)
        return bits.view(*x.shape[:-1], bits.shape[-1])


def find_thresholds(producer, act: nn.Module, consumer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Every epilogue value of ``producer`` through ``act`` and the consumer's sign packing; per
    output, lo / hi with bit = (D <= lo or D >= hi) for D = -K, -K+2, ..., K, or None if some
    output's bits are not of that form."""
    ext, k, o = kernels.extension(), producer.in_features, producer.out_features
    q, bias = producer.input_quantizer, producer.bias
    levels = ext.binary_levels(k, q.alpha.detach().float(), producer.weight_scale.detach().float().contiguous(),
                               None if bias is None else bias.detach().float().contiguous(), o)  # row c: D = K - 2c
    words = ext.pack_signs(act(levels).contiguous(), consumer.input_quantizer.beta.detach().float().contiguous(),
                           consumer.kernel.path)
    bits = (words.view(torch.uint8).unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    on = bits.view(k + 1, -1)[:, :o].bool().flip(0)  # row i: D = -K + 2i
    n = k + 1
    lead = on.to(torch.int32).cumprod(0).sum(0)  # ones from the smallest D up
    trail = on.flip(0).to(torch.int32).cumprod(0).sum(0)  # ones from the largest D down
    if not bool(((lead == n) | (lead + trail == on.sum(0))).all()):
        return None
    lo = torch.where(lead > 0, -k + 2 * (lead - 1), torch.full_like(lead, -FAR))
    hi = torch.where((trail > 0) & (lead < n), k - 2 * (trail - 1), torch.full_like(trail, FAR))
    return lo.to(torch.int32).contiguous(), hi.to(torch.int32).contiguous()


def _binary_kernel(m) -> bool:
    k = getattr(m, "kernel", None)
    return k is not None and k.kind == "binary" and getattr(m, "mode", None) == "packed"


def fuse_binary_ffn_(model: nn.Module) -> int:
    """Wire every fusable FFN pair of ``model`` (see the module docstring); returns how many are."""
    count = 0
    for block in model.modules():
        inter, out = getattr(block, "intermediate", None), getattr(block, "output", None)
        up, down = getattr(inter, "dense", None), getattr(out, "dense", None)
        act = getattr(inter, "intermediate_act_fn", None)
        if isinstance(act, PassBits):
            act = act.act
        if not (isinstance(act, nn.Module) and is_elementwise(act) and _binary_kernel(up) and _binary_kernel(down)
                and up.in_features < 65536 and down.in_features == up.out_features):
            if up is not None and getattr(up, "fused_next", None) is not None:
                up.fused_next = None
            continue
        if not isinstance(inter.intermediate_act_fn, PassBits):
            inter.intermediate_act_fn = PassBits(act)
        up.fused_next = BitsFusion(act, down)
        count += 1
    return count
