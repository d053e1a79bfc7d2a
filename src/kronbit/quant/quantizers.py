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
    |w| > Δ, codes = sign(w)·[|w| > Δ] in {-1, 0, 1}. Identity gradient. TernaryBERT's code uses
    one Δ/α per matrix for the linear layers and per row for the word embeddings; per row (the
    recipes' choice) fits each matrix at least as closely, and Δ = 0.7·mean|w| is TWN's
    Gaussian approximation of the per-row L2-optimal threshold. Not implemented: TernaryBERT's
    loss-aware variant (LAT, Δ/α weighted by Adam's second moments).
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
  * ``elastic_unsigned`` (BiT's quantizer for non-negative inputs: GELU outputs, attention
    probabilities): u = x - β, 1 bit: out = α·round(clamp(u/α, 0, 1)) ∈ {0, α}, i.e. α where
    x > β + α/2; k bits: levels α·{0, ..., 2^b - 1} above the batch minimum, which is added back
    (as BiT). β is one per feature when ``features`` is given (BiT's learnable bias in front of
    a quantized linear layer); ``offset=False`` drops it, as BiT has none on the attention
    probabilities (the threshold is then α/2 > 0, so a masked key's probability, exactly 0,
    stays 0). Gradients as LSQ: x and β where 0 ≤ u/α ≤ Qp, α gets round(u/α) - u/α inside and
    Qp above, scaled by 1/sqrt(numel·Qp). α starts at 4·mean|u|/sqrt(Qp) of the first batch.

Scale initialisation, checked against BiT's public code (its ``AlphaInit`` wrapper initialises α
from the first batch it sees): signed α = 2·mean|x|/sqrt(Qp) with Qp = 2^(b-1) - 1 (taken as 1
for one bit, so α = 2·mean|x| for the ±α binarizer), unsigned α = 4·mean|x|/sqrt(Qp) with
Qp = 2^b - 1 (so α = 4·mean|x| for {0, α}); the statistic is taken on the input after the
learnable offset (β = 0 at that point); the gradient scale of α is 1/sqrt(numel·Qp) in both, and
the input gradient passes where u/α is inside the clip range. ``elastic`` and
``elastic_unsigned`` follow that. BiT's BWN weights (α = mean|W|, sign(W - mean W)) match
``bwn``; BiT takes mean(W) over the whole matrix even with per-row α, ``bwn`` per row takes it
over the row.

Parameter naming convention: every learnable quantizer tensor is an ``nn.Parameter`` called
``scale`` (LSQ step size), ``alpha`` (elastic scale) or ``beta`` (elastic offset), and quantized
modules hold their quantizers in attributes ending in ``_quantizer`` (``weight_quantizer``,
``input_quantizer``, ``output_quantizer``). So a parameter is a quantizer parameter iff its full
name ends with one of ``SCALE_PARAM_SUFFIXES``; a trainer can give those their own learning rate
(and no weight decay) by suffix.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .ste import (EPS, _clip_abs, _dequant, _dims, _minmax_codes, _qrange, _reduce, elastic_binary, grad_scale,
                  round_ste, sign_pm1, ste)

SCALE_PARAM_SUFFIXES = ("_quantizer.scale", "_quantizer.alpha", "_quantizer.beta")


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
            return elastic_binary(u, alpha, gscale).to(x.dtype)
        alpha = grad_scale(alpha, gscale)
        return (round_ste(torch.clamp(u / alpha, -self.qn, self.qp)) * alpha).to(x.dtype)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, features={self.beta.numel() if self.beta.dim() else None}"


class ElasticUnsignedAct(ActQuantizer):
    """BiT's elastic quantizer for non-negative inputs (GELU outputs, attention probabilities):
    learnable ``alpha`` (scale, scalar) and, with ``offset``, ``beta`` (one per feature when
    ``features`` is given, else a scalar); 1 bit: out = α·round(clamp((x - β)/α, 0, 1)) ∈ {0, α}.
    The offset is not added back: it moves the threshold, not the levels."""

    def __init__(self, bits: int, features: int | None = None, offset: bool = True):
        super().__init__(bits)
        self.qp = 2 ** bits - 1
        self.alpha = nn.Parameter(torch.ones(()))
        if offset:
            self.beta = nn.Parameter(torch.zeros(features) if features else torch.zeros(()))
        else:
            self.register_parameter("beta", None)
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x):
        u = x.float() if self.beta is None else x.float() - self.beta
        if not bool(self.initialized):
            with torch.no_grad():
                self.alpha.fill_(max(float(4 * u.detach().abs().mean() / math.sqrt(self.qp)), EPS))
                self.initialized.fill_(True)
        low = u.detach().amin() if self.bits > 1 else None
        if low is not None:
            u = u - low
        alpha = grad_scale(self.alpha.clamp_min(EPS), 1.0 / math.sqrt(x.numel() * self.qp))
        out = round_ste(torch.clamp(u / alpha, 0, self.qp)) * alpha
        return (out if low is None else out + low).to(x.dtype)

    def extra_repr(self) -> str:
        beta = "none" if self.beta is None else (self.beta.numel() if self.beta.dim() else "scalar")
        return f"bits={self.bits}, unsigned, offset={beta}"
