"""Factor-shape search: enumeration, budgets, speed guard, error ranking, per-layer choice."""

from __future__ import annotations

import json

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


def test_measured_speed_reorders_near_best_shapes_and_is_cached(tmp_path, monkeypatch):
    """shape_speed: measured ranks the shapes near the best error by a timed speed-up (here a fake
    timer that makes the FLOP-slower of two equal-error shapes the faster); each shape is timed once
    per machine and read from the cache after, and a reload from the frozen config times nothing."""
    from kronbit.kron import KroneckerConfig, kroneckerize_
    from kronbit.kron import timing
    from kronbit.kron.shapes import rank_shapes

    monkeypatch.setenv(timing.CACHE_ENV, str(tmp_path / "cache"))
    torch.manual_seed(0)
    w = torch.randn(24, 16)  # random: many shapes within the error tolerance of the best
    by_flops = rank_shapes(w, compression=2, error_tolerance=1.0)
    assert len(by_flops) > 1
    slowest = by_flops[-1].shape  # the FLOP ranking's last near-best shape
    calls = []

    def fake_timer(m, n, a, b, rank, dtype):
        calls.append((a, b))
        return 5.0 if (a, b) == (slowest.a_shape, slowest.b_shape) else 1.1
    cache = timing.TimingCache(timer=fake_timer)
    speed = (lambda c: cache.speedup(24, 16, c.shape.a_shape, c.shape.b_shape, c.rank, "float32"))
    ranked = rank_shapes(w, compression=2, error_tolerance=1.0, speed=speed)
    assert ranked[0].shape == slowest and ranked[0].measured_speedup == 5.0
    assert len(calls) == len(ranked)
    again = timing.TimingCache(timer=fake_timer)  # a new process: read from the file
    rank_shapes(w, compression=2, error_tolerance=1.0,
                speed=lambda c: again.speedup(24, 16, c.shape.a_shape, c.shape.b_shape, c.rank, "float32"))
    assert len(calls) == len(ranked)
    assert all(timing.machine_key() in k for k in json.loads(timing.cache_path().read_text()))

    # through the config: the pick is frozen into layer_shapes, and a rebuild times nothing
    monkeypatch.setattr(timing, "time_speedup", fake_timer)
    model = torch.nn.Sequential(torch.nn.Linear(16, 24))
    cfg = KroneckerConfig(target_modules=["0"], compression=2, shape_speed="measured")
    monkeypatch.setattr("kronbit.kron.api.TimingCache", lambda: timing.TimingCache(timer=fake_timer))
    report = kroneckerize_(model, cfg)
    frozen = report.config
    n = len(calls)
    kroneckerize_(torch.nn.Sequential(torch.nn.Linear(16, 24)), frozen)
    assert len(calls) == n and frozen.layer_shapes["0"][:4] == [*model[0].a_shape, *model[0].b_shape]


def test_an_unreadable_timing_cache_is_set_aside_with_one_warning(tmp_path, monkeypatch):
    from kronbit.kron import timing

    monkeypatch.setenv(timing.CACHE_ENV, str(tmp_path))
    timing.cache_path().write_text("{not json")
    cache = timing.TimingCache(timer=lambda *a: 2.0)
    with pytest.warns(UserWarning, match="timing cache .* is unreadable"):
        assert cache.speedup(8, 8, (2, 2), (4, 4), 1, "float32") == 2.0
    assert (tmp_path / "kron_timing.unreadable").is_file()
    assert list(json.loads(timing.cache_path().read_text()).values()) == [2.0]


def test_the_real_timer_measures_a_speedup():
    from kronbit.kron import timing

    s = timing.time_speedup(64, 64, (8, 8), (8, 8), 1, "float32")
    assert 0 < s < 1e4
