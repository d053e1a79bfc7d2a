"""Quantizers with straight-through gradients, as small ``nn.Module``s.

A quantizer maps a tensor to its *fake-quantized* value: same shape and dtype, but every element
is one of a few levels. Weight quantizers can also return the integer codes behind those levels,
``codes(w) -> (codes int8, scale, offset or None)``, with

    forward(w) == codes.float() * scale (+ offset)      exactly, bit for bit, in float32,

because the packed export stores exactly those tensors and must reproduce the trained model. The
non-learnable quantizers therefore compute the quantized value once, under ``no_grad``, and attach
the gradient with an explicit straight-through function (``ste``) instead of the usual
``x + (q - x).detach()``, which is ``q`` only up to rounding.

Weights (W is (out, in); ``granularity="row"`` means one scale per output channel = per row):
  * ``uniform`` (8/4/2 bits), min-max. Symmetric: s = r / (2^(b-1) - 1) with r = clip_ratio·max|w|,
    codes in [-(2^(b-1) - 1), 2^(b-1) - 1]. Asymmetric: the range [clip_ratio·min, clip_ratio·max]
    is cut into 2^b levels, codes in [-2^(b-1), 2^(b-1) - 1] around an offset (so 8-bit codes still
    fit int8). Gradient: identity inside the clip range, zero outside.
  * ``lsq``: learned step size (Esser et al. 2020, "Learned Step Size Quantization"): codes =
    round(clamp(w/s, -2^(b-1), 2^(b-1) - 1)), s a parameter initialised to 2·mean|w|/sqrt(Qp),
    its gradient scaled by 1/sqrt(n·Qp) with n = number of elements sharing that step size
    (the whole tensor per tensor, one row per row). No gradient to w where it is clipped.
  * ``twn``: ternary (Li & Liu 2016, as in TernaryBERT): Δ = 0.7·mean|w|, α = mean of |w| over
    |w| > Δ, codes = sign(w)·[|w| > Δ] in {-1, 0, 1}. Identity gradient.
  * ``bwn``: binary (as in BinaryBERT and BiT): α = mean|w|, codes = sign(w - μ) in {-1, +1},
    with μ = mean(w) over the same row/tensor when mean-centring (BiT), μ = 0 otherwise
    (BinaryBERT). The sign is never 0 (sign(+0) = +1, sign(-0) = -1), so a code is one bit.
    Identity gradient.
  ``clip_val`` (TernaryBERT's absolute clip, 2.5 there), when set, clamps w to [-clip_val, clip_val]
  before the statistics and codes of uniform/twn/bwn are computed, and stops the gradient outside.

Activations (per tensor, statistics from the current batch):
  * ``minmax`` (8/4/2 bits): dynamic min-max, symmetric (TernaryBERT: 8-bit symmetric per batch)
    or asymmetric, with the same clip_ratio / clip_val and gradient rule as ``uniform``.
  * ``lsq``: learned step size, initialised from the first batch.
  * ``elastic`` (BiT, Liu et al. 2022, "BiT: Robustly Binarized Multi-distilled Transformer"):
    learnable scale α and offset β; u = x - β (β one per feature, as BiT's learnable bias).
    1 bit: out = α·sign(u) (levels ±α); k bits: out = α·round(clamp(u/α, -2^(b-1), 2^(b-1) - 1)).
    Gradient to x and β where u/α is inside the clip range; α gets BiT's gradient (for 1 bit
    Σ sign(u)·g, for k bits the LSQ one), scaled by 1/sqrt(numel·Qp). α starts at
    2·mean|u|/sqrt(Qp) of the first batch (Qp = 1 for one bit), β at 0, as in BiT.
  * ``ElasticUnsignedAct`` (not in the config registry): BiT's quantizer for non-negative inputs
    such as attention probabilities: 1 bit gives {0, α}.

Parameter naming convention: every learnable quantizer tensor is an ``nn.Parameter`` called
``scale`` (LSQ step size), ``alpha`` (elastic scale) or ``beta`` (elastic offset), and quantized
modules hold their quantizers in attributes ending in ``_quantizer`` (``weight_quantizer``,
``input_quantizer``, ``output_quantizer``). So a parameter is a quantizer parameter iff its full
name ends with one of ``SCALE_PARAM_SUFFIXES``; a trainer can give those their own learning rate
(and no weight decay) by suffix.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..core.errors import ConfigError

SCALE_PARAM_SUFFIXES = ("_quantizer.scale", "_quantizer.alpha", "_quantizer.beta")

EPS = 1e-8  # smallest step size: an all-zero row quantizes to zeros instead of dividing by 0


# ------------------------------------------------------------------------------------------------
# Straight-through building blocks


class _STE(torch.autograd.Function):
    """Forward: exactly ``q``. Backward: the gradient goes to ``x``, times ``mask`` if given."""

    @staticmethod
    def forward(ctx, x, q, mask):
        ctx.save_for_backward(mask)
        return q

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        # g * mask rather than torch.where(mask, g, 0): several times faster on CPU.
        return (g if mask is None else g * mask), None, None


def ste(x: torch.Tensor, q: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``q`` in the forward pass, the gradient of ``x`` (zeroed where ``mask`` is False) backward."""
    return _STE.apply(x, q.detach(), None if mask is None else mask.detach())


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) with an identity gradient."""
    return _RoundSTE.apply(x)


class _GradScale(torch.autograd.Function):
    """Forward: x exactly. Backward: gradient × g (LSQ's step-size gradient scaling). The
    ``(x - x·g).detach() + x·g`` trick is x only up to rounding, which would break codes·scale
    == fake-quant."""

    @staticmethod
    def forward(ctx, x, g):
        ctx.g = g
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.g, None


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    return _GradScale.apply(x, g)


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """±1 by the sign bit (+0 → +1, -0 → -1), never 0 as torch.sign gives: every code is one bit."""
    return torch.copysign(torch.ones((), dtype=x.dtype, device=x.device), x)


class _ElasticBinary(torch.autograd.Function):
    """BiT's 1-bit elastic binarizer: forward α·sign(u); backward: u gets g where |u| ≤ α, α gets
    Σ sign(u)·g·grad_scale (the true derivative of α·sign(u) with respect to α)."""

    @staticmethod
    def forward(ctx, u, alpha, gscale):
        ctx.save_for_backward(u, alpha)
        ctx.gscale = gscale
        return torch.copysign(alpha, u)  # α·sign(u) in one pass, with sign_pm1's convention

    @staticmethod
    def backward(ctx, g):
        u, alpha = ctx.saved_tensors
        gu = g * (u.abs() <= alpha)
        galpha = (g * sign_pm1(u)).sum().reshape(alpha.shape) * ctx.gscale
        return gu, galpha, None


def _dims(x: torch.Tensor, granularity: str) -> tuple[int, ...] | None:
    """Dims reduced for one scale: all of them per tensor (None), all but dim 0 per row."""
    return tuple(range(1, x.dim())) if granularity == "row" and x.dim() > 1 else None


def _reduce(x: torch.Tensor, op: str, dims) -> torch.Tensor:
    """mean/amax/amin/sum over ``dims`` (keepdim, so the result broadcasts against x)."""
    if dims is None:
        return getattr(x, op)()
    return getattr(x, op)(dim=dims, keepdim=True)


def _qrange(bits: int) -> tuple[int, int]:
    """(Qn, Qp) of signed k-bit codes: [-2^(b-1), 2^(b-1) - 1]."""
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1


def _clip_abs(x: torch.Tensor, clip_val: float | None) -> torch.Tensor:
    return x if clip_val is None else x.clamp(-clip_val, clip_val)


def _minmax_codes(x: torch.Tensor, bits: int, dims, symmetric: bool, clip_ratio: float,
                  clip_val: float | None):
    """Shared by ``uniform`` weights and ``minmax`` activations: (codes as float, scale, offset,
    mask of elements inside the clip range). ``x`` is float32 and detached."""
    clips = clip_ratio < 1 or clip_val is not None  # else every element is inside: no mask needed
    xc = _clip_abs(x, clip_val)
    if symmetric:
        qp = 2 ** (bits - 1) - 1
        a = x.abs()
        r = clip_ratio * _reduce(a if clip_val is None else a.clamp(max=clip_val), "amax", dims)
        scale = (r / qp).clamp_min(EPS)
        codes = torch.clamp(torch.round(xc / scale), -qp, qp)
        return codes, scale, None, (a <= r) if clips else None
    qn, qp = _qrange(bits)
    lo, hi = clip_ratio * _reduce(xc, "amin", dims), clip_ratio * _reduce(xc, "amax", dims)
    scale = ((hi - lo) / (2 ** bits - 1)).clamp_min(EPS)
    offset = lo + qn * scale  # code -2^(b-1) sits at lo, so the codes are signed and fit int8
    codes = torch.clamp(torch.round((xc - offset) / scale), -qn, qp)
    return codes, scale, offset, ((x >= lo) & (x <= hi)) if clips else None


def _dequant(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """The one place codes become values; ``codes()`` consumers must use the same expression."""
    out = codes * scale
    return out if offset is None else out + offset


# ------------------------------------------------------------------------------------------------
# Weights


class WeightQuantizer(nn.Module):
    """``forward(w)`` = fake-quantized w; ``codes(w)`` = (int8 codes, scale, offset or None) with
    ``forward(w) == codes.float() * scale (+ offset)`` exactly. Scales broadcast against w: shape
    (rows, 1, ...) per row, () per tensor."""

    def __init__(self, bits: int, granularity: str = "row", clip_val: float | None = None):
        super().__init__()
        self.bits = bits
        self.granularity = granularity
        self.clip_val = clip_val

    def _quantize(self, w: torch.Tensor):
        """(codes as float32, scale, offset, gradient mask or None) from the detached float32 w."""
        raise NotImplementedError

    @torch.no_grad()
    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        codes, scale, offset, _ = self._quantize(w.detach().float())
        return codes.to(torch.int8), scale, offset

    def forward_rows(self, rows: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Quantize ``rows = weight[index]`` (2-D) as rows of ``weight``: for an embedding lookup,
        only the looked-up rows, not the whole vocabulary. Valid for per-row quantizers, whose
        rows are independent; gives exactly ``self(weight)[index]``."""
        if self.granularity != "row":
            raise ValueError("forward_rows needs per-row quantization")
        return self(rows)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            codes, scale, offset, mask = self._quantize(w.detach().float())
            q = _dequant(codes, scale, offset).to(w.dtype)
        if self.clip_val is not None:
            inside = w.detach().abs() <= self.clip_val
            mask = inside if mask is None else mask & inside
        return ste(w, q, mask)

    def extra_repr(self) -> str:
        clip = "" if self.clip_val is None else f", clip_val={self.clip_val}"
        return f"bits={self.bits}, granularity={self.granularity}{clip}"


class UniformWeight(WeightQuantizer):
    """Min-max uniform k-bit weights, symmetric or asymmetric, clip range = clip_ratio × min-max."""

    def __init__(self, bits: int, granularity: str = "row", symmetric: bool = True, clip_ratio: float = 1.0,
                 clip_val: float | None = None):
        if bits < 2:
            raise ValueError("uniform quantization needs at least 2 bits; use 'bwn' for 1")
        super().__init__(bits, granularity, clip_val)
        self.symmetric, self.clip_ratio = symmetric, clip_ratio

    def _quantize(self, w):
        return _minmax_codes(w, self.bits, _dims(w, self.granularity), self.symmetric, self.clip_ratio,
                             self.clip_val)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", symmetric={self.symmetric}, clip_ratio={self.clip_ratio}"


class TWNWeight(WeightQuantizer):
    """Ternary weights: Δ = 0.7·mean|w|, α = mean of |w| above Δ (per row or per tensor)."""

    def __init__(self, bits: int = 2, granularity: str = "row", clip_val: float | None = None):
        super().__init__(2, granularity, clip_val)

    def _quantize(self, w):
        dims = _dims(w, self.granularity)
        w = _clip_abs(w, self.clip_val)
        a = w.abs()
        delta = 0.7 * _reduce(a, "mean", dims)
        keep = (a > delta).float()
        # An all-zero row keeps nothing: α = 0/1 = 0, and the row stays zero.
        alpha = _reduce(a * keep, "sum", dims) / _reduce(keep, "sum", dims).clamp_min(1.0)
        return torch.sign(w) * keep, alpha, None, None


class BWNWeight(WeightQuantizer):
    """Binary weights α·sign(w - μ), α = mean|w|; μ = mean(w) when mean-centring, else 0."""

    def __init__(self, bits: int = 1, granularity: str = "row", mean_centering: bool = True,
                 clip_val: float | None = None):
        super().__init__(1, granularity, clip_val)
        self.mean_centering = mean_centering

    def _quantize(self, w):
        dims = _dims(w, self.granularity)
        w = _clip_abs(w, self.clip_val)
        alpha = _reduce(w.abs(), "mean", dims)
        centred = w - _reduce(w, "mean", dims) if self.mean_centering else w
        return sign_pm1(centred), alpha, None, None

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mean_centering={self.mean_centering}"


class LSQWeight(WeightQuantizer):
    """Learned step size (``scale``: one per row, shape (rows, 1), or a scalar per tensor).

    The step size is initialised from the weight on first use (``initialized`` is a buffer, so a
    reloaded model does not re-initialise)."""

    def __init__(self, bits: int, granularity: str = "row", shape: tuple[int, ...] | None = None):
        if bits < 2:
            raise ValueError("LSQ needs at least 2 bits")
        per_row = granularity == "row" and shape is not None and len(shape) > 1
        super().__init__(bits, "row" if per_row else "tensor", None)  # per row needs the shape
        self.qn, self.qp = _qrange(bits)
        self.scale = nn.Parameter(torch.ones((shape[0], *[1] * (len(shape) - 1)) if per_row else ()))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _init(self, w: torch.Tensor) -> None:
        s = 2 * _reduce(w.detach().float().abs(), "mean", _dims(w, self.granularity)) / math.sqrt(self.qp)
        self.scale.copy_(s.reshape(self.scale.shape).clamp_min(EPS))
        self.initialized.fill_(True)

    def _step(self, w: torch.Tensor) -> tuple[torch.Tensor, float]:
        if not bool(self.initialized):
            self._init(w)
        n = w.numel() // max(self.scale.numel(), 1)  # elements sharing one step size
        return self.scale.clamp_min(EPS), 1.0 / math.sqrt(n * self.qp)

    @torch.no_grad()
    def codes(self, w):
        s, _ = self._step(w)
        s = s.detach().float()
        return torch.round(torch.clamp(w.detach().float() / s, -self.qn, self.qp)).to(torch.int8), s, None

    def forward(self, w):
        s, g = self._step(w)
        return self._fake(w, s, g)

    def forward_rows(self, rows, index, weight):
        if self.granularity != "row":
            raise ValueError("forward_rows needs per-row quantization")
        s, g = self._step(weight)  # initialised from the whole weight, like forward(weight)
        return self._fake(rows, s.reshape(-1, 1)[index], g)

    def _fake(self, w, s, g):
        s = grad_scale(s.float(), g)
        # Clamp before rounding: no gradient to w outside [-Qn, Qp], and the step size gets
        # LSQ's gradient there (-Qn or Qp) and round(u) - u inside.
        q = round_ste(torch.clamp(w.float() / s, -self.qn, self.qp))
        return (q * s).to(w.dtype)


# ------------------------------------------------------------------------------------------------
# Activations


class ActQuantizer(nn.Module):
    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class MinMaxAct(ActQuantizer):
    """Dynamic min-max per batch (per tensor), symmetric (TernaryBERT) or asymmetric."""

    def __init__(self, bits: int, symmetric: bool = True, clip_ratio: float = 1.0, clip_val: float | None = None):
        if bits < 2:
            raise ValueError("min-max activation quantization needs at least 2 bits; use 'elastic' for 1")
        super().__init__(bits)
        self.symmetric, self.clip_ratio, self.clip_val = symmetric, clip_ratio, clip_val

    def forward(self, x):
        with torch.no_grad():
            codes, scale, offset, mask = _minmax_codes(x.detach().float(), self.bits, None, self.symmetric,
                                                       self.clip_ratio, self.clip_val)
            q = _dequant(codes, scale, offset).to(x.dtype)
        return ste(x, q, mask)

    def extra_repr(self) -> str:
        clip = "" if self.clip_val is None else f", clip_val={self.clip_val}"
        return f"bits={self.bits}, symmetric={self.symmetric}, clip_ratio={self.clip_ratio}{clip}"


class LSQAct(ActQuantizer):
    """Learned step size for (signed) activations, initialised from the first batch."""

    def __init__(self, bits: int):
        if bits < 2:
            raise ValueError("LSQ needs at least 2 bits")
        super().__init__(bits)
        self.qn, self.qp = _qrange(bits)
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x):
        xf = x.float()
        if not bool(self.initialized):
            with torch.no_grad():
                self.scale.fill_(max(float(2 * xf.detach().abs().mean() / math.sqrt(self.qp)), EPS))
                self.initialized.fill_(True)
        s = grad_scale(self.scale.clamp_min(EPS), 1.0 / math.sqrt(x.numel() * self.qp))
        return (round_ste(torch.clamp(xf / s, -self.qn, self.qp)) * s).to(x.dtype)


class ElasticAct(ActQuantizer):
    """BiT's elastic quantizer for signed inputs: learnable ``alpha`` (scale, scalar) and ``beta``
    (offset, one per feature when ``features`` is given, else a scalar); out = α·q(x - β)."""

    def __init__(self, bits: int, features: int | None = None):
        super().__init__(bits)
        self.qn, self.qp = (1, 1) if bits == 1 else _qrange(bits)
        self.alpha = nn.Parameter(torch.ones(()))
        self.beta = nn.Parameter(torch.zeros(features) if features else torch.zeros(()))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x):
        u = x.float() - self.beta
        if not bool(self.initialized):
            with torch.no_grad():
                self.alpha.fill_(max(float(2 * u.detach().abs().mean() / math.sqrt(self.qp)), EPS))
                self.initialized.fill_(True)
        gscale = 1.0 / math.sqrt(x.numel() * self.qp)
        alpha = self.alpha.clamp_min(EPS)
        if self.bits == 1:
            return _ElasticBinary.apply(u, alpha, gscale).to(x.dtype)
        alpha = grad_scale(alpha, gscale)
        return (round_ste(torch.clamp(u / alpha, -self.qn, self.qp)) * alpha).to(x.dtype)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, features={self.beta.numel() if self.beta.dim() else None}"


class ElasticUnsignedAct(ActQuantizer):
    """BiT's elastic quantizer for non-negative inputs (attention probabilities): levels
    α·{0, 1, ..., 2^b - 1}; for more than one bit the batch minimum is subtracted first and added
    back, as in BiT. ``alpha`` starts at 4·mean|x|/sqrt(Qp) of the first batch."""

    def __init__(self, bits: int):
        super().__init__(bits)
        self.qp = 2 ** bits - 1
        self.alpha = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x):
        xf = x.float()
        low = xf.detach().amin() if self.bits > 1 else None
        if not bool(self.initialized):
            with torch.no_grad():
                self.alpha.fill_(max(float(4 * xf.abs().mean() / math.sqrt(self.qp)), EPS))
                self.initialized.fill_(True)
        alpha = grad_scale(self.alpha.clamp_min(EPS), 1.0 / math.sqrt(x.numel() * self.qp))
        u = xf if low is None else xf - low
        out = round_ste(torch.clamp(u / alpha, 0, self.qp)) * alpha
        return (out if low is None else out + low).to(x.dtype)


# ------------------------------------------------------------------------------------------------
# Registry: config name -> class and the bit-widths it supports.


class QuantizerSpec(NamedTuple):
    cls: type[nn.Module]
    bits: tuple[int, ...]
    learnable: bool  # has parameters named by SCALE_PARAM_SUFFIXES


WEIGHT_QUANTIZERS: dict[str, QuantizerSpec] = {
    "uniform": QuantizerSpec(UniformWeight, (2, 4, 8), False),
    "lsq": QuantizerSpec(LSQWeight, (2, 4, 8), True),
    "twn": QuantizerSpec(TWNWeight, (2,), False),
    "bwn": QuantizerSpec(BWNWeight, (1,), False),
}
ACT_QUANTIZERS: dict[str, QuantizerSpec] = {
    "minmax": QuantizerSpec(MinMaxAct, (2, 4, 8), False),
    "lsq": QuantizerSpec(LSQAct, (2, 4, 8), True),
    "elastic": QuantizerSpec(ElasticAct, (1, 2, 4, 8), True),
}
# What "auto" means per bit-width: the choices of TernaryBERT (8/4-bit uniform, ternary TWN,
# 8-bit min-max activations) and BinaryBERT/BiT (BWN weights, elastic binary activations).
AUTO_WEIGHT = {8: "uniform", 4: "uniform", 2: "twn", 1: "bwn"}
AUTO_ACT = {8: "minmax", 4: "minmax", 2: "minmax", 1: "elastic"}


def resolve(name: str, bits: int, auto: dict[int, str]) -> str:
    """The registry name ``name`` stands for at ``bits`` ("auto" resolved)."""
    return auto[bits] if name == "auto" else name


def _bits_text(bits: tuple[int, ...]) -> str:
    return ", ".join(map(str, bits)) + (" bit" if bits == (1,) else " bits")


def check_quantizer(key: str, name: str, bits: int, registry: dict[str, QuantizerSpec], bits_key: str) -> None:
    """Raise a one-line ConfigError when ``name`` is unknown or cannot do ``bits`` (32 = off)."""
    if name != "auto" and name not in registry:
        raise ConfigError(f"{key} '{name}' is unknown; choose auto or one of: "
                          + ", ".join(f"{n} ({_bits_text(s.bits)})" for n, s in registry.items()))
    if name == "auto" or bits >= 32 or bits in registry[name].bits:
        return
    others = [n for n, s in registry.items() if bits in s.bits]
    raise ConfigError(f"{key} '{name}' supports {bits_key} {', '.join(map(str, registry[name].bits))}, "
                      f"not {bits}; for {bits_key}={bits} use auto or one of: {', '.join(others) or 'none'}")


def build_weight_quantizer(bits: int, name: str, *, granularity: str = "row", symmetric: bool = True,
                           mean_centering: bool = True, clip_ratio: float = 1.0, clip_val: float | None = None,
                           shape: tuple[int, ...] | None = None) -> WeightQuantizer:
    """The weight quantizer ``name`` ("auto" allowed) at ``bits``, given every option a config can
    set; each quantizer takes the options that apply to it."""
    check_quantizer("weight_quantizer", name, bits, WEIGHT_QUANTIZERS, "w_bits")
    name = resolve(name, bits, AUTO_WEIGHT)
    if name == "uniform":
        return UniformWeight(bits, granularity, symmetric, clip_ratio, clip_val)
    if name == "lsq":
        return LSQWeight(bits, granularity, shape)
    if name == "twn":
        return TWNWeight(bits, granularity, clip_val)
    return BWNWeight(bits, granularity, mean_centering, clip_val)


def build_act_quantizer(bits: int, name: str, *, symmetric: bool = True, clip_ratio: float = 1.0,
                        clip_val: float | None = None, features: int | None = None) -> ActQuantizer:
    """The activation quantizer ``name`` ("auto" allowed) at ``bits``; ``features`` is the size
    of the last dim (elastic keeps one offset per feature)."""
    check_quantizer("act_quantizer", name, bits, ACT_QUANTIZERS, "a_bits")
    name = resolve(name, bits, AUTO_ACT)
    if name == "minmax":
        return MinMaxAct(bits, symmetric, clip_ratio, clip_val)
    if name == "lsq":
        return LSQAct(bits)
    return ElasticAct(bits, features)
