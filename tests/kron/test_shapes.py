"""Factor-shape search: enumeration, budgets, speed guard, error ranking, per-layer choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kronbit.core.errors import ConfigError
from kronbit.kron.nkp import divisors, kron_sum
from kronbit.kron.shapes import (FactorShape, candidates, choose_shape, choose_shapes, factor_shapes,
                                 rank_shapes)


def test_factor_shapes_enumerates_every_divisor_pair():
    shapes = factor_shapes(12, 18)
    assert len(shapes) == len(divisors(12)) * len(divisors(18)) == 6 * 6
    assert len(set(shapes)) == len(shapes)
    assert all(s.m1 * s.m2 == 12 and s.n1 * s.n2 == 18 for s in shapes)
    assert FactorShape(2, 3, 6, 6) in shapes and FactorShape(1, 1, 12, 18) in shapes


def test_flops_and_speedup():
    s = FactorShape(2, 2, 384, 1536)   # 3072 → 768 (W 768 × 3072) with A 2×2
    assert s.flops() == min(2 * 384 * (1536 + 2), 2 * 1536 * (2 + 384))
    assert s.speedup() == pytest.approx(768 * 3072 / s.flops())
    assert 1.98 < s.speedup() < 2.0
    assert s.params(rank=2) == 2 * (4 + 384 * 1536)


@pytest.mark.parametrize("m,n", [(768, 3072), (3072, 768), (576, 576), (96, 32)])
def test_candidates_fit_budget_and_are_never_slower_than_dense(m, n):
    for compression in (2, 4, 10):
        cands = candidates(m, n, rank=1, compression=compression)
        assert cands, (m, n, compression)
        for c in cands:
            assert c.params <= m * n / compression * 1.01
            assert c.speedup >= 1.25 and c.flops < m * n
    # factor 2 admits A 2×1 ⊗ B (m/2 × n), whose m·n/2 + 2 parameters are a hair over half
    assert any(c.shape.a_shape in ((2, 1), (1, 2)) for c in candidates(m, n, compression=2))


def test_chooser_finds_a_planted_kronecker_structure():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(1, 4, 2, generator=g), torch.randn(1, 24, 48, generator=g)
    W = kron_sum(A, B) + 1e-3 * torch.randn(96, 96, generator=g)
    # (4, 2) has 8 + 1152 = 1160 params; at compression 7.5 it is among the shapes nearest the
    # budget, next to (2, 4), (8, 1), (1, 8), ... with the same count but a worse fit
    pick = choose_shape(W, compression=7.5)
    assert pick.shape.a_shape == (4, 2) and pick.shape.b_shape == (24, 48)
    assert pick.error < 0.01
    # at compression 4 it sits at half the budget: found when enough candidates are evaluated
    # (by default only the 12 with the most parameters are, see the module docstring)
    ranked = rank_shapes(W, compression=4, max_evaluated=1000)
    assert ranked[0].shape == pick.shape
    assert all(c.error >= ranked[0].error for c in ranked)


def test_chooser_prefers_speed_among_equal_errors():
    W = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    ranked = rank_shapes(W, compression=2, error_tolerance=1.0)   # everything "equal": fastest first
    assert ranked[0].speedup == max(c.speedup for c in ranked)
    exact = rank_shapes(W, compression=2, error_tolerance=0.0)
    assert exact[0].error == min(c.error for c in exact)


def test_chooser_errors_in_one_line():
    W = torch.randn(6, 6)
    with pytest.raises(ConfigError) as e:
        choose_shape(W, compression=30, where="layer x")
    assert "\n" not in str(e.value) and str(e.value).startswith("layer x: no factor shape of W (6, 6)")
    assert "highest compression reachable" in str(e.value)
    with pytest.raises(ConfigError, match="needs compression"):
        choose_shape(W)
    with pytest.raises(ConfigError, match="min_speedup must be ≥ 1"):
        choose_shape(W, compression=2, min_speedup=0.5)


def test_per_layer_selection_on_a_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))
    picks = choose_shapes(model, compression=2, max_params=None)
    assert set(picks) == {"0", "2"}
    for name, c in picks.items():
        W = model.get_submodule(name).weight
        assert (c.shape.m1 * c.shape.m2, c.shape.n1 * c.shape.n2) == tuple(W.shape)
        assert c.params <= W.numel() / 2 * 1.01 and c.error is not None
    budget = choose_shapes(model, max_params=1100)
    assert all(c.params <= 1100 for c in budget.values())
    assert set(picks["0"].to_dict()) >= {"a_shape", "b_shape", "params", "speedup", "error", "order"}
