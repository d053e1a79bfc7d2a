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

W2A8 pairs cannot take bits (the next layer's 8-bit scale is the whole tensor's max), so there
the up-projection writes into a reused workspace and GELU runs on it in place
(``WorkspaceFusion``): the same arithmetic, no fresh 3072-wide tensors to fault in.

Wiring (``fuse_ffn_``, run after loading and by ``select_kernels_``): an encoder block with
``intermediate.dense`` → ``intermediate.intermediate_act_fn`` → ``output.dense`` (BERT, RoBERTa,
ELECTRA, ... in Hugging Face naming) where both linears are packed W1A1 layers on the binary
kernel and the activation is an elementwise module. The activation module is wrapped in
``PassBits`` (which lets the packed bits through unchanged and applies the activation otherwise),
so the blocks' own forward code runs as it is; tensor names and the state dict do not change.
The bits are emitted only for float32 inputs outside autocast and when the consumer is on its
binary kernel; everything else (tracing, ONNX export, another dtype) takes the unfused path.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules import module as nn_module

from . import kernels
from .quantizers import EPS

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
    """An activation that lets through what a fused producer already activated (an int64 tensor of
    packed bits, or the workspace it activated in place) and applies the wrapped activation to
    anything else."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act
        self.done: torch.Tensor | None = None  # the producer's activated output, this call only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.int64:
            return x
        if self.done is not None and x is self.done:
            self.done = None
            return x
        return self.act(x)


_WORKSPACE = threading.local()


def workspace(numel: int) -> torch.Tensor:
    """A float32 buffer of ``numel`` elements reused across calls (per thread, grown as needed):
    a fresh multi-megabyte tensor is a fresh mmap whose pages fault in on first write, which costs
    about as much as GELU over it (measured: 4096 x 3072 floats, ~25 ms either way)."""
    # One buffer per inference-mode state: a buffer made under torch.inference_mode is an
    # inference tensor, which may not be written in place outside it (and the other way round
    # a normal tensor would be fine, but keeping them apart keeps both cases fast and legal).
    key = "buf_inference" if torch.is_inference_mode_enabled() else "buf"
    buf = getattr(_WORKSPACE, key, None)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel)
        setattr(_WORKSPACE, key, buf)
    return buf[:numel]


def gelu_in_place(act: nn.Module):
    """f(y) applying ``act`` to y in place with the same result as act(y) (torch's GELU kernel
    writing into its input), or None for an activation without one."""
    if isinstance(act, nn.GELU):
        return lambda y: torch._C._nn.gelu(y, approximate=act.approximate, out=y)
    if type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is torch.nn.functional.gelu:
        return lambda y: torch._C._nn.gelu(y, out=y)
    return None


@dataclass
class WorkspaceFusion:
    """A W2A8 FFN pair: the up-projection writes into the shared workspace and applies GELU there
    in place; the down-projection reads it (its own copy of nothing). Exact: the same kernel, the
    same GELU kernel (out= its input), only the memory differs. Not used while forward hooks could
    keep the intermediate tensor beyond the block (the workspace is overwritten by the next one)."""

    act: nn.Module
    wrapper: PassBits
    owner: nn.Module  # the block's intermediate module (its hooks are checked)

    def forward(self, producer, x: torch.Tensor) -> torch.Tensor | None:
        hooked = (nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
                  or any(m._forward_hooks or m._forward_pre_hooks for m in (self.owner, self.wrapper, producer)))
        inplace = gelu_in_place(self.act)
        if x.dtype != torch.float32 or torch.is_autocast_enabled("cpu") or producer.output_quantizer is not None \
                or hooked or inplace is None:
            return None
        k, q = producer.kernel, producer.input_quantizer
        flat = x.reshape(-1, producer.in_features)
        if not flat.is_contiguous():
            flat = flat.contiguous()
        cv = -1.0 if q.clip_val is None else float(q.clip_val)
        bias = None if producer.bias is None else producer.bias.detach()
        y = workspace(flat.shape[0] * k.out_features).view(flat.shape[0], k.out_features)
        with torch.no_grad():
            kernels.extension().ternary_linear(flat, float(q.clip_ratio), cv, producer.packed_weight, k.out_features,
                                               producer.weight_scale, bias, k.path, into=y)
            inplace(y)
        out = y.view(*x.shape[:-1], k.out_features)
        self.wrapper.done = out
        return out


def _rows(x: torch.Tensor, features: int) -> torch.Tensor:
    flat = x.reshape(-1, features)
    return flat if flat.is_contiguous() else flat.contiguous()


def _levels(layer) -> torch.Tensor:
    """Every value of a packed W1A1 layer's epilogue, (K + 1, O), row c: D = K - 2c."""
    q, bias = layer.input_quantizer, layer.bias
    return kernels.extension().binary_levels(layer.in_features, q.alpha.detach().float(),
                                             layer.weight_scale.detach().float().contiguous(),
                                             None if bias is None else bias.detach().float().contiguous(),
                                             layer.out_features)


@dataclass
class BitsFusion:
    """Held by the producing PackedLinear (``fused_next``; a plain object, not a submodule)."""

    act: nn.Module
    consumer: nn.Module
    # (stamp, value) pairs, each stored as one tuple so a concurrent reader never pairs one call's
    # value with another's stamp
    _th: tuple = field(default=(None, None), repr=False)  # the thresholds and what they were found from
    _planned: tuple = field(default=(None, None), repr=False)

    def _refs(self, producer) -> list:
        q, cq = producer.input_quantizer, self.consumer.input_quantizer
        return [(producer, "input_quantizer"), (q, "alpha"), (producer, "weight_scale"), (producer, "bias"),
                (self.consumer, "input_quantizer"), (cq, "beta"), (cq, "alpha")]

    def thresholds(self, producer) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(lo, hi) int32 per output, or None when some output's bits are not of that form."""
        st, th = self._th
        if not kernels.fresh(st):
            st = kernels.stamp(self._refs(producer))
            th = find_thresholds(producer, self.act, self.consumer)
            self._th = (st, th)
        return th

    def _plan(self, producer) -> tuple | None:
        """(lo, hi, the producer's input β as float32) while every quantizer is initialised and the
        bits are of threshold form, else None; kept until one of the tensors it came from changes,
        so a call costs no device syncs and no copies."""
        st, plan = self._planned
        if not kernels.fresh(st):
            q, cq = producer.input_quantizer, self.consumer.input_quantizer
            st = kernels.stamp([*self._refs(producer), (q, "beta"), (q, "initialized"), (cq, "initialized")])
            plan = None
            if bool(q.initialized) and bool(cq.initialized):
                th = self.thresholds(producer)
                if th is not None:
                    plan = (th[0], th[1], q.beta.detach().float().contiguous())
            self._planned = (st, plan)
        return plan

    def forward(self, producer, x: torch.Tensor) -> torch.Tensor | None:
        """The consumer's packed input bits from the producer's raw input, or None (unfused)."""
        consumer = self.consumer
        if (x.dtype != torch.float32 or torch.is_autocast_enabled("cpu") or producer.output_quantizer is not None
                or consumer.kernel is None or consumer.kernel.kind != "binary"):
            return None
        with torch.no_grad():
            plan = self._plan(producer)
            if plan is None:
                return None
            k = producer.kernel
            bits = kernels.extension().binary_linear_bits(_rows(x, producer.in_features), plan[2], producer.packed_weight,
                                                          k.out_features, plan[0], plan[1], k.path)
        return bits.view(*x.shape[:-1], bits.shape[-1])


def find_thresholds(producer, act: nn.Module, consumer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Every epilogue value of ``producer`` through ``act`` and the consumer's packing (signs, or the
    unsigned binarizer's bits); per
    output, lo / hi with bit = (D <= lo or D >= hi) for D = -K, -K+2, ..., K, or None if some
    output's bits are not of that form."""
    ext, k, o = kernels.extension(), producer.in_features, producer.out_features
    levels = _levels(producer)
    cq = consumer.input_quantizer
    if consumer.kernel.unsigned:  # {0, α} input: the unsigned binarizer's bits, (y - β) / α > 0.5
        words = kernels.pack_unsigned(act(levels), float(cq.alpha.detach().clamp_min(EPS)), cq.beta)
    else:
        words = ext.pack_signs(act(levels).contiguous(), cq.beta.detach().float().contiguous(), consumer.kernel.path)
    return interval_thresholds(words, k, o)


def interval_thresholds(words: torch.Tensor, k: int, o: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """From the packed bits of every epilogue value (row c: D = K - 2c), per output lo / hi with
    bit = (D <= lo or D >= hi), or None if some output's bits are not of that form."""
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


@dataclass
class SignOutput:
    """A W1A1 layer whose output quantizer is the signed binarizer α·sign(y - β) (BiT's Q, K, V):
    held by the PackedLinear (``sign_output``). The sign is a function of the GEMM's integer D, so
    the kernel's epilogue writes ±α from thresholds on D (``binary_linear_pm``) instead of the float
    y, the subtraction and the sign. Exact by the same construction as ``BitsFusion``: the thresholds
    come from every epilogue value put through the kernel's own arithmetic and sign packing, and
    the written value is the α the binarizer itself multiplies by."""

    # Set by ``wire_sign_bytes_`` when this is the Q, K or V projection of an attention module that
    # runs the one-pass binary attention: the epilogue then writes one sign byte per output
    # (1 = +α) instead of ±α floats, a quarter of the memory traffic both ways; that module turns
    # the bytes back into ±α where anything else needs the values.
    as_bytes: bool = False
    _th: tuple = field(default=(None, None), repr=False)  # (stamp, thresholds), one tuple as in BitsFusion
    _planned: tuple = field(default=(None, None), repr=False)

    @staticmethod
    def _refs(layer) -> list:
        q, oq = layer.input_quantizer, layer.output_quantizer
        return [(layer, "input_quantizer"), (layer, "output_quantizer"), (q, "alpha"), (layer, "weight_scale"),
                (layer, "bias"), (oq, "beta")]

    def thresholds(self, layer) -> tuple[torch.Tensor, torch.Tensor] | None:
        st, th = self._th
        if not kernels.fresh(st):
            st = kernels.stamp(self._refs(layer))
            oq = layer.output_quantizer
            k, o = layer.in_features, layer.out_features
            beta = oq.beta.detach().float().reshape(-1).expand(o).contiguous()
            words = kernels.extension().pack_signs(_levels(layer).contiguous(), beta, layer.kernel.path)
            th = interval_thresholds(words, k, o)
            self._th = (st, th)
        return th

    def _plan(self, layer) -> tuple | None:
        """(lo, hi, the input β as float32, α) while both binarizers are initialised and the signs are
        of threshold form, else None; kept until one of the tensors it came from changes."""
        st, plan = self._planned
        if not kernels.fresh(st):
            q, oq = layer.input_quantizer, layer.output_quantizer
            st = kernels.stamp([*self._refs(layer), (oq, "alpha"), (q, "beta"), (q, "initialized"),
                                (oq, "initialized")])
            plan = None
            if bool(q.initialized) and bool(oq.initialized):
                th = self.thresholds(layer)
                if th is not None:
                    plan = (th[0], th[1], q.beta.detach().float().contiguous(), float(oq.alpha.detach().clamp_min(EPS)))
            self._planned = (st, plan)
        return plan

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor | None:
        """±α per output (sign bytes with ``as_bytes``), or None to take the ordinary path."""
        if (x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
                or (torch.is_grad_enabled() and layer.output_quantizer.alpha.requires_grad)):
            return None
        with torch.no_grad():
            plan = self._plan(layer)
            if plan is None:
                return None
            lo, hi, beta, alpha = plan
            flat = _rows(x, layer.in_features)
            ext, k = kernels.extension(), layer.kernel
            if self.as_bytes:
                y = ext.binary_linear_signs(flat, beta, layer.packed_weight, layer.out_features, lo, hi, k.path)
            else:
                y = ext.binary_linear_pm(flat, beta, layer.packed_weight, layer.out_features, lo, hi, alpha, k.path)
        return y.view(*x.shape[:-1], layer.out_features)


def is_signed_binarizer(quantizer) -> bool:
    return type(quantizer).__name__ == "ElasticAct" and getattr(quantizer, "bits", None) == 1


def wire_sign_outputs_(model: nn.Module) -> int:
    """Give every packed W1A1 layer on the binary kernel whose output goes through the signed 1-bit
    binarizer its epilogue plan (``SignOutput``); clear it elsewhere. Returns how many."""
    count = 0
    for m in model.modules():
        if not hasattr(m, "sign_output"):
            continue
        use = (_on_kernel(m, "binary") and not m.kernel.unsigned and is_signed_binarizer(m.output_quantizer)
               and m.in_features < 65536)
        m.sign_output = SignOutput() if use else None
        count += use
    return count


def _on_kernel(m, kind: str) -> bool:
    k = getattr(m, "kernel", None)
    return k is not None and k.kind == kind and getattr(m, "mode", None) == "packed"


def fuse_ffn_(model: nn.Module) -> int:
    """Wire every fusable FFN pair of ``model`` (see the module docstring): W1A1 pairs emit packed
    bits (``BitsFusion``), W2A8 up-projections work in the shared workspace (``WorkspaceFusion``).
    Returns how many pairs are wired."""
    count = 0
    for block in model.modules():
        inter, out = getattr(block, "intermediate", None), getattr(block, "output", None)
        up, down = getattr(inter, "dense", None), getattr(out, "dense", None)
        act = getattr(inter, "intermediate_act_fn", None)
        if isinstance(act, PassBits):
            act = act.act
        if up is not None and hasattr(up, "fused_next"):
            up.fused_next = None
        if not (isinstance(act, nn.Module) and is_elementwise(act) and down is not None
                and getattr(down, "in_features", None) == getattr(up, "out_features", None)):
            continue
        binary = (_on_kernel(up, "binary") and not up.kernel.unsigned and _on_kernel(down, "binary")
                  and up.in_features < 65536)
        ternary = _on_kernel(up, "ternary") and gelu_in_place(act) is not None
        if not (binary or ternary):
            continue
        if not isinstance(inter.intermediate_act_fn, PassBits):
            inter.intermediate_act_fn = PassBits(act)
        up.fused_next = BitsFusion(act, down) if binary else WorkspaceFusion(act, inter.intermediate_act_fn, inter)
        count += 1
    return count
