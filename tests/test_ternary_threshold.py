"""benchmarks/ternary_threshold.py's bound is the true optimum: the per-row ternary code it finds
by sorting matches a brute-force search over every threshold, and is never farther from the
weights than TWN's rule."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ternary_threshold as tt  # noqa: E402


def _brute_force(row: torch.Tensor) -> float:
    """The least L2 error of α·t, t ∈ {-1, 0, 1}^n, trying every count k of kept weights."""
    a = row.abs().sort(descending=True).values
    best = float((row * row).sum())  # k = 0: all zero
    for k in range(1, len(a) + 1):
        alpha = a[:k].mean()
        best = min(best, float(((a[:k] - alpha) ** 2).sum() + (a[k:] ** 2).sum()))
    return best


def test_the_optimal_ternary_code_is_the_brute_force_optimum_and_beats_twn():
    g = torch.Generator().manual_seed(0)
    w = torch.cat([torch.randn(6, 40, generator=g, dtype=torch.float64),
                   torch.randn(6, 40, generator=g, dtype=torch.float64) ** 3])  # Gaussian and heavy-tailed rows
    q = tt.optimal_ternary(w)
    for i, row in enumerate(w):
        levels = q[i][q[i] != 0].abs()
        assert torch.allclose(levels, levels[0].expand_as(levels))  # one α per row, codes in {-1, 0, 1}
        assert abs(float(((q[i] - row) ** 2).sum()) - _brute_force(row)) < 1e-9
    twn = tt.QUANTIZERS["TWN per row (the recipes')"](w.float()).double()
    assert ((q - w) ** 2).sum(1).le(((twn - w) ** 2).sum(1) + 1e-6).all()


def test_errors_cover_the_quantized_matrices_only():
    g = torch.Generator().manual_seed(1)
    weights = {"bert.encoder.layer.0.attention.self.query.weight": torch.randn(8, 16, generator=g),
               "bert.encoder.layer.0.output.dense.weight": torch.randn(16, 8, generator=g),
               "bert.embeddings.word_embeddings.weight": torch.randn(30, 16, generator=g),
               "bert.embeddings.position_embeddings.weight": torch.randn(12, 16, generator=g),  # not quantized
               "bert.encoder.layer.0.output.LayerNorm.weight": torch.ones(16),
               "classifier.weight": torch.randn(2, 16, generator=g)}
    err = tt.errors(weights)
    assert set(err) == set(tt.QUANTIZERS)
    for q, groups in err.items():
        assert set(groups) == {"attention.self.query", "output.dense", "word_embeddings", "all"}
        assert all(0 < e < 1 for e in groups.values()), q
    best, twn = err["optimal ternary per row (bound)"], err["TWN per row (the recipes')"]
    assert all(best[k] <= twn[k] + 1e-6 for k in best)
    assert err["uniform 4-bit per row (W4 stage)"]["all"] < twn["all"]
