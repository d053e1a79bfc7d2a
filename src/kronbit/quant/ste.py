"""The building blocks of every quantizer: straight-through gradient functions (identity, round,
gradient scaling, the elastic binarizer's), exact signs, and the reductions and integer ranges the
quantizers share."""

from __future__ import annotations

import torch

EPS = 1e-8  # smallest step size: an all-zero row quantizes to zeros instead of dividing by 0


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


def elastic_binary(u: torch.Tensor, alpha: torch.Tensor, gscale: float) -> torch.Tensor:
    """α·sign(u) with ``sign_pm1``'s convention and BiT's gradients (``_ElasticBinary``). While
    exporting to ONNX, the same values from ops ONNX has: ``copysign`` has none (opset 18), and
    ``Sign`` gives 0 for ±0, so the sign bit is read as ``u < 0``, with 1/u (±inf) for a zero.
    Only then: in eager torch that form is ~10x slower than ``copysign``."""
    if torch.onnx.is_in_onnx_export():
        negative = torch.where(u == 0, 1 / u, u) < 0
        return torch.where(negative, -alpha, alpha)
    return _ElasticBinary.apply(u, alpha, gscale)


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
