"""Factor-shape search: which A (m1×n1) ⊗ B (m2×n2) to use for a layer W (m×n).

Every pair of divisors m1 | m, n1 | n gives a valid shape. For a parameter budget (a target
compression ratio c means at most m·n/c parameters, so KnGPT2's "factor 2" is c = 2), a candidate
must

  * fit the budget: rank·(m1·n1 + m2·n2) ≤ budget (+1% slack, see ``BUDGET_SLACK``);
  * be faster than dense by the FLOP estimate: m·n / min(b_first, a_first) ≥ ``min_speedup``
    (formulas in ``layers``); the default 1.25 leaves room for the transpose-copies and small-GEMM
    inefficiency the FLOP count ignores, so at training batch sizes a chosen shape is not slower
    than dense. (Per-op overhead is not modelled: at one token, a layer whose dense call takes
    well under a millisecond may still be a little slower as a Kronecker layer.)

Candidates are then ranked by the reconstruction error of the layer's actual weight (the nearest
Kronecker product, computed from the singular values of R(W)), and among those within
``error_tolerance`` of the best error, by speed: the FLOP estimate, or a time measured on this
machine (``timing``; ``KroneckerConfig.shape_speed: measured``).

Cost control: the error needs one SVD per candidate. Shapes far below the budget are almost
always worse (fewer parameters, less capacity), so only the ``max_evaluated`` candidates with the
most parameters are evaluated; near the budget those are the unbalanced shapes (A or B small),
whose rearranged matrix has a short side, so their SVDs are cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.swap import iter_linear_like, linear_weight
from .layers import choose_order, contraction_flops
from .nkp import divisors, kronecker_singular_values, truncation_error


# A compression target is met within 1%: "factor 2" must admit A (2 × 1) ⊗ B (m/2 × n), whose
# m·n/2 + 2 parameters are a hair over half. (An exact half is impossible for large layers:
# m1·n1 + m2·n2 = m·n/2 forces m1·n1 = m2·n2 = 4.)
BUDGET_SLACK = 0.01


@dataclass(frozen=True)
class FactorShape:
    m1: int
    n1: int
    m2: int
    n2: int

    @property
    def a_shape(self) -> tuple[int, int]:
        return (self.m1, self.n1)

    @property
    def b_shape(self) -> tuple[int, int]:
        return (self.m2, self.n2)

    @property
    def max_rank(self) -> int:
        return min(self.m1 * self.n1, self.m2 * self.n2)

    def params(self, rank: int = 1) -> int:
        return rank * (self.m1 * self.n1 + self.m2 * self.n2)

    def flops(self, rank: int = 1) -> int:
        """Per-token multiply-accumulates of the cheaper contraction order."""
        f = contraction_flops(self.a_shape, self.b_shape, rank)
        return min(f["b_first"], f["a_first"])

    def speedup(self, rank: int = 1) -> float:
        """Ideal FLOP speed-up over the dense layer (same for forward and forward+backward)."""
        return (self.m1 * self.m2 * self.n1 * self.n2) / self.flops(rank)


@dataclass
class Candidate:
    shape: FactorShape
    rank: int
    params: int
    compression: float       # dense params / Kronecker params
    flops: int               # per token, multiply-accumulates
    speedup: float           # ideal FLOP speed-up over dense
    order: str
    error: float | None = None   # relative Frobenius error of the nearest Kronecker sum
    measured_speedup: float | None = None  # dense time / Kronecker time on this machine (``timing``), if timed

    def to_dict(self) -> dict:
        d = asdict(self)
        d["a_shape"], d["b_shape"] = list(self.shape.a_shape), list(self.shape.b_shape)
        del d["shape"]
        return d


def factor_shapes(m: int, n: int) -> list[FactorShape]:
    """Every (m1, n1, m2, n2) with m1·m2 = m and n1·n2 = n."""
    return [FactorShape(m1, n1, m // m1, n // n1) for m1 in divisors(m) for n1 in divisors(n)]


def _budget(m: int, n: int, compression: float | None, max_params: int | None) -> int:
    if compression is None and max_params is None:
        raise ConfigError("the shape chooser needs compression (e.g. 2 = half the parameters) or max_params")
    limits = []
    if compression is not None:
        if compression <= 1:
            raise ConfigError(f"compression must be > 1 (dense params / Kronecker params), got {compression}")
        limits.append(int(m * n / compression * (1 + BUDGET_SLACK)))
    if max_params is not None:
        limits.append(int(max_params))
    return min(limits)


def candidates(m: int, n: int, rank: int = 1, compression: float | None = None, max_params: int | None = None,
               min_speedup: float = 1.25) -> list[Candidate]:
    """Shapes within the budget and at least ``min_speedup`` faster than dense (no error yet),
    most parameters first."""
    if min_speedup < 1:
        raise ConfigError(f"min_speedup must be ≥ 1 (the chooser never picks a shape slower than dense), "
                          f"got {min_speedup}")
    budget = _budget(m, n, compression, max_params)
    out = []
    for s in factor_shapes(m, n):
        if rank > s.max_rank:
            continue
        p = s.params(rank)
        if p > budget or s.speedup(rank) < min_speedup:
            continue
        out.append(Candidate(s, rank, p, m * n / p, s.flops(rank), s.speedup(rank),
                             choose_order(s.a_shape, s.b_shape, rank)))
    out.sort(key=lambda c: (-c.params, -c.speedup))
    return out


def rank_shapes(weight: torch.Tensor, rank: int = 1, compression: float | None = None,
                max_params: int | None = None, min_speedup: float = 1.25, max_evaluated: int = 12,
                error_tolerance: float = 0.01, speed: Callable[[Candidate], float] | None = None) -> list[Candidate]:
    """Evaluated candidates for ``weight`` (out, in), best first: lowest reconstruction error, and
    among those within ``error_tolerance`` of the best, the highest speed-up: estimated from
    FLOPs, or, with ``speed`` (candidate -> measured speed-up, ``timing.TimingCache``), measured
    on this machine. Only the near-best candidates are timed."""
    m, n = weight.shape
    cands = candidates(m, n, rank, compression, max_params, min_speedup)[:max_evaluated]
    for c in cands:
        c.error = truncation_error(kronecker_singular_values(weight, c.shape.a_shape, c.shape.b_shape), rank)
    if not cands:
        return []
    best = min(c.error for c in cands)
    near = [c for c in cands if c.error <= best + error_tolerance]
    if speed is not None and len(near) > 1:
        for c in near:
            c.measured_speedup = float(speed(c))
        near.sort(key=lambda c: (-c.measured_speedup, c.error))
    else:
        near.sort(key=lambda c: (-c.speedup, c.error))
    rest = sorted((c for c in cands if c.error > best + error_tolerance), key=lambda c: c.error)
    return near + rest


def choose_shape(weight: torch.Tensor, rank: int = 1, compression: float | None = None,
                 max_params: int | None = None, min_speedup: float = 1.25, max_evaluated: int = 12,
                 error_tolerance: float = 0.01, where: str = "",
                 speed: Callable[[Candidate], float] | None = None) -> Candidate:
    """The best candidate for one layer; ConfigError in one line when nothing fits."""
    ranked = rank_shapes(weight, rank, compression, max_params, min_speedup, max_evaluated, error_tolerance, speed)
    if ranked:
        return ranked[0]
    m, n = weight.shape
    budget = _budget(m, n, compression, max_params)
    feasible = [s for s in factor_shapes(m, n) if rank <= s.max_rank and s.speedup(rank) >= min_speedup]
    best_c = max((m * n / s.params(rank) for s in feasible), default=None)
    prefix = f"{where}: " if where else ""
    reach = (f"the highest compression reachable at rank {rank} with FLOP speed-up ≥ {min_speedup:g} is "
             f"{best_c:.3g}" if best_c
             else f"no factor shape of rank {rank} is ≥ {min_speedup:g}× faster than dense")
    raise ConfigError(f"{prefix}no factor shape of W ({m}, {n}) fits {budget} parameters "
                      f"(compression {m * n / budget:.3g}) at rank {rank}; {reach}")


def choose_shapes(layers: Iterable[tuple[str, nn.Module]] | nn.Module, rank: int = 1,
                  compression: float | None = None, max_params: int | None = None, min_speedup: float = 1.25,
                  max_evaluated: int = 12, error_tolerance: float = 0.01) -> dict[str, Candidate]:
    """Per-layer selection: name → best candidate for every linear layer given (or in a model).
    ``max_params`` is per layer."""
    named = iter_linear_like(layers) if isinstance(layers, nn.Module) else layers
    out = {}
    for name, module in named:
        W, _, _ = linear_weight(module)
        out[name] = choose_shape(W.detach(), rank, compression, max_params, min_speedup, max_evaluated,
                                 error_tolerance, where=name)
    return out
