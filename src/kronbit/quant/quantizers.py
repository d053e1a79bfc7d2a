"""Quantizers with straight-through gradients, as small modules.

Every quantizer maps a tensor to its fake-quantized value (same shape, same dtype) and, for
weights, can also return the integer codes and scales such that ``fake == codes * scale (+ offset)``
exactly in float32 — the packed export stores exactly those.

Weights (a ``granularity`` of "row" means one scale per output channel, i.e. per row of W (out, in)):
  * ``uniform`` (8/4/2-bit) symmetric min-max: s = max|w| / (2^(b-1) - 1), codes in [-Qp, Qp];
    asymmetric: s = (max - min) / (2^b - 1), offset = min.
  * ``lsq``: learnable step size s (Esser et al. 2020), gradient scaled by 1/sqrt(numel·Qp).
  * ``twn`` (ternary, Li & Liu 2016, as TernaryBERT): Δ = 0.7·mean|w|, α = mean |w| over |w| > Δ,
    codes in {-1, 0, 1}.
  * ``bwn`` (binary, as BinaryBERT/BiT): α = mean|w - μ|, codes = sign(w - μ) in {-1, +1}, with
    μ = mean(w) when mean-centring (else 0). The offset μ is not added back: the binary weight is
    α·sign, so it packs as one bit plus a scale.
Weight STE: identity gradient (min-max and TWN/BWN never clip a weight to a value it cannot reach;
the scale follows the weights), LSQ: gradient passes inside the clip range only.

Activations (per tensor):
  * ``minmax`` (8/4/2-bit): symmetric dynamic min-max per batch (TernaryBERT's 8-bit scheme).
  * ``lsq``: learnable step size, initialised from the first batch.
  * ``elastic`` (BiT, Liu et al. 2022): learnable scale α and offset β; u = (x - β)/α,
    1-bit: q = sign(u) ∈ {-1, +1}, k-bit: q = clamp(round(u), -Qn, Qp); output α·q + β. Gradient
    passes where u is inside the clip range, and α, β learn through it.
Learnable scales are parameters named ``scale``, ``alpha`` or ``beta`` (see SCALE_PARAM_SUFFIXES),
so a trainer can give them their own learning rate.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SCALE_PARAM_SUFFIXES = (".scale", ".alpha", ".beta")


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


class _SignSTE(torch.autograd.Function):
    """sign with sign(0) = +1 (so codes are always ±1); gradient passes where |u| ≤ 1."""

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return torch.where(u >= 0, torch.ones_like(u), -torch.ones_like(u))

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return g * (u.abs() <= 1).to(g.dtype)


class _Substitute(torch.autograd.Function):
    """Forward: exactly ``q``. Backward: the gradient goes to ``x`` unchanged (identity STE).

    ``x + (q - x).detach()`` would be the usual trick, but it is not exactly ``q`` in floating
    point, and the packed export must reproduce the fake-quant forward bit for bit."""

    @staticmethod
    def forward(ctx, x, q):
        return q

    @staticmethod
    def backward(ctx, g):
        return g, None


def substitute(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return _Substitute.apply(x, q.detach())


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return _RoundSTE.apply(x)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    return _SignSTE.apply(x)


def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Forward: x. Backward: gradient × g (LSQ's step-size gradient scaling)."""
    return (x - x * g).detach() + x * g


def _reduce(w: torch.Tensor, granularity: str):
    """Dims to reduce over and keepdim shape: per row of W (out, in) or the whole tensor."""
    return (tuple(range(1, w.dim())) if granularity == "row" and w.dim() > 1 else None)


def _mean(x: torch.Tensor, dims) -> torch.Tensor:
    return x.mean() if dims is None else x.mean(dim=dims, keepdim=True)


def _amax(x: torch.Tensor, dims) -> torch.Tensor:
    return x.amax() if dims is None else x.amax(dim=dims, keepdim=True)


def _amin(x: torch.Tensor, dims) -> torch.Tensor:
    return x.amin() if dims is None else x.amin(dim=dims, keepdim=True)


class WeightQuantizer(nn.Module):
    """Base: ``forward(w)`` = fake-quantized w; ``codes(w)`` = (int8 codes, scale, offset|None)."""

    bits: int

    def __init__(self, bits: int, granularity: str = "row"):
        super().__init__()
        self.bits = bits
        self.granularity = granularity

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"bits={self.bits}, granularity={self.granularity}"


class UniformWeight(WeightQuantizer):
    def __init__(self, bits: int, granularity: str = "row", symmetric: bool = True, **_):
        super().__init__(bits, granularity)
        self.symmetric = symmetric

    def _params(self, w: torch.Tensor):
        dims = _reduce(w, self.granularity)
        w = w.detach().float()
        if self.symmetric:
            qp = 2 ** (self.bits - 1) - 1
            scale = (_amax(w.abs(), dims) / qp).clamp_min(1e-8)
            return scale, None, -qp, qp
        lo, hi = _amin(w, dims), _amax(w, dims)
        scale = ((hi - lo) / (2 ** self.bits - 1)).clamp_min(1e-8)
        return scale, lo, 0, 2 ** self.bits - 1

    def codes(self, w):
        scale, offset, lo, hi = self._params(w)
        x = w.float() if offset is None else w.float() - offset
        q = torch.clamp(torch.round(x / scale), lo, hi)
        return q.to(torch.int16 if hi > 127 else torch.int8), scale, offset  # asym. 8-bit: 0..255

    def forward(self, w):
        scale, offset, lo, hi = self._params(w)
        x = w if offset is None else w - offset
        q = torch.clamp(round_ste(x / scale), lo, hi)
        out = q * scale
        return (out if offset is None else out + offset).to(w.dtype)


class LSQWeight(WeightQuantizer):
    """Learnable step size; ``scale`` is a parameter shaped per row (or scalar)."""

    def __init__(self, bits: int, granularity: str = "row", shape: tuple[int, ...] | None = None, **_):
        super().__init__(bits, granularity)
        self.qn, self.qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
        if bits == 1:
            raise ValueError("LSQ needs at least 2 bits")
        rows = shape[0] if (shape is not None and granularity == "row" and len(shape) > 1) else None
        size = (rows, *([1] * (len(shape) - 1))) if rows else ()
        self.scale = nn.Parameter(torch.ones(size))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _init(self, w: torch.Tensor) -> None:
        dims = _reduce(w, self.granularity)
        self.scale.copy_((2 * _mean(w.detach().float().abs(), dims) / math.sqrt(self.qp)).reshape(self.scale.shape)
                         .clamp_min(1e-8))
        self.initialized.fill_(True)

    def codes(self, w):
        if not bool(self.initialized):
            self._init(w)
        s = self.scale.detach().float().abs().clamp_min(1e-8)
        q = torch.clamp(torch.round(w.float() / s), -self.qn, self.qp)
        return q.to(torch.int8), s.expand(q.shape[0], *([1] * (q.dim() - 1))) if s.dim() else s, None

    def forward(self, w):
        if not bool(self.initialized):
            self._init(w)
        g = 1.0 / math.sqrt(w.numel() * self.qp)
        s = _grad_scale(self.scale.abs().clamp_min(1e-8), g)
        q = torch.clamp(round_ste(w / s), -self.qn, self.qp)  # STE: no gradient where clipped
        return (q * s).to(w.dtype)


class TWNWeight(WeightQuantizer):
    """Ternary weights: Δ = 0.7·mean|w|, α = mean of |w| above Δ (per row or per tensor)."""

    def __init__(self, bits: int = 2, granularity: str = "row", **_):
        super().__init__(2, granularity)

    def _params(self, w):
        dims = _reduce(w, self.granularity)
        a = w.detach().float().abs()
        delta = 0.7 * _mean(a, dims)
        mask = (a > delta).float()
        if dims is None:
            alpha = (a * mask).sum() / mask.sum().clamp_min(1.0)
        else:
            alpha = (a * mask).sum(dims, keepdim=True) / mask.sum(dims, keepdim=True).clamp_min(1.0)
        return delta, alpha

    def _ternary(self, w, delta):
        return torch.sign(w.detach()) * (w.detach().abs() > delta).to(w.dtype)

    def codes(self, w):
        delta, alpha = self._params(w)
        return self._ternary(w.float(), delta).to(torch.int8), alpha, None

    def forward(self, w):
        delta, alpha = self._params(w)
        q = self._ternary(w.float(), delta) * alpha
        return substitute(w, q.to(w.dtype))


class BWNWeight(WeightQuantizer):
    """Binary weights: α·sign(w - μ), α = mean|w - μ| (μ = mean(w) when mean-centring)."""

    def __init__(self, bits: int = 1, granularity: str = "row", mean_centering: bool = True, **_):
        super().__init__(1, granularity)
        self.mean_centering = mean_centering

    def _centred(self, w):
        dims = _reduce(w, self.granularity)
        w = w.detach().float()
        mu = _mean(w, dims) if self.mean_centering else torch.zeros(())
        c = w - mu
        return c, _mean(c.abs(), dims)

    def codes(self, w):
        c, alpha = self._centred(w)
        return torch.where(c >= 0, 1, -1).to(torch.int8), alpha, None

    def forward(self, w):
        c, alpha = self._centred(w)
        q = torch.where(c >= 0, 1.0, -1.0) * alpha
        return substitute(w, q.to(w.dtype))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mean_centering={self.mean_centering}"


# ------------------------------------------------------------------------------------------------
# Activations


class ActQuantizer(nn.Module):
    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class MinMaxAct(ActQuantizer):
    """Dynamic symmetric min-max per batch (TernaryBERT's activation scheme); identity STE."""

    def __init__(self, bits: int, **_):
        super().__init__(bits)
        self.qp = 2 ** (bits - 1) - 1 if bits > 1 else 1

    def forward(self, x):
        s = (x.detach().float().abs().amax() / self.qp).clamp_min(1e-8)
        q = torch.clamp(torch.round(x.detach().float() / s), -self.qp, self.qp) * s
        return substitute(x, q.to(x.dtype))


class LSQAct(ActQuantizer):
    """Learnable step size for activations (signed), initialised from the first batch."""

    def __init__(self, bits: int, **_):
        super().__init__(bits)
        self.qn, self.qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x):
        if not bool(self.initialized):
            with torch.no_grad():
                self.scale.fill_(float(2 * x.detach().float().abs().mean() / math.sqrt(self.qp)) + 1e-8)
                self.initialized.fill_(True)
        g = 1.0 / math.sqrt(x.numel() * self.qp)
        s = _grad_scale(self.scale.abs().clamp_min(1e-8), g)
        xf = x.float()
        q = torch.clamp(round_ste(xf / s), -self.qn, self.qp)
        return (q * s).to(x.dtype)


class ElasticAct(ActQuantizer):
    """BiT elastic quantizer: learnable scale α and offset β; 1-bit levels β ± α."""

    def __init__(self, bits: int, **_):
        super().__init__(bits)
        self.qn, self.qp = (1, 1) if bits == 1 else (2 ** (bits - 1), 2 ** (bits - 1) - 1)
        self.alpha = nn.Parameter(torch.ones(()))
        self.beta = nn.Parameter(torch.zeros(()))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x):
        if not bool(self.initialized):
            with torch.no_grad():
                xf = x.detach().float()
                self.beta.fill_(float(xf.mean()))
                spread = float((xf - xf.mean()).abs().mean())
                self.alpha.fill_(spread if self.bits == 1 else 2 * spread / math.sqrt(self.qp) + 1e-8)
                self.initialized.fill_(True)
        g = 1.0 / math.sqrt(x.numel() * self.qp)
        alpha = _grad_scale(self.alpha.abs().clamp_min(1e-8), g)
        beta = _grad_scale(self.beta, g)
        u = (x.float() - beta) / alpha
        if self.bits == 1:
            q = sign_ste(u)
        else:
            q = round_ste(torch.clamp(u, -self.qn, self.qp))  # clamp first: no gradient outside
        return (alpha * q + beta).to(x.dtype)


# name -> (class, supported bits)
WEIGHT_QUANTIZERS: dict[str, tuple[type[WeightQuantizer], tuple[int, ...]]] = {
    "uniform": (UniformWeight, (2, 4, 8)),
    "lsq": (LSQWeight, (2, 4, 8)),
    "twn": (TWNWeight, (2,)),
    "bwn": (BWNWeight, (1,)),
}
ACT_QUANTIZERS: dict[str, tuple[type[ActQuantizer], tuple[int, ...]]] = {
    "minmax": (MinMaxAct, (2, 4, 8)),
    "lsq": (LSQAct, (2, 4, 8)),
    "elastic": (ElasticAct, (1, 2, 4, 8)),
}
AUTO_WEIGHT = {8: "uniform", 4: "uniform", 2: "twn", 1: "bwn"}
AUTO_ACT = {8: "minmax", 4: "minmax", 2: "minmax", 1: "elastic"}
