"""The accuracy benchmarks' recipe overrides stay in step with the shipped recipes: every
(task, config, seed) row of tspq_fair.py and every point of tspq_da_copies.py loads and validates
against recipes/tspq/*.yaml (a stale override, e.g. one naming a stage the recipe no longer has,
fails here instead of hours into a run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import tspq_da_copies  # noqa: E402
import tspq_fair  # noqa: E402

from kronbit.runner import load_recipe  # noqa: E402

RECIPES = BENCH.parent / "recipes" / "tspq"


@pytest.mark.parametrize("task", list(tspq_fair.BUDGETS))
@pytest.mark.parametrize("name", list(tspq_fair.CONFIGS))
def test_every_fair_row_loads_against_the_shipped_recipe(task, name):
    recipe_file, _ = tspq_fair.CONFIGS[name]
    r = load_recipe(RECIPES / recipe_file, tspq_fair.overrides_for(task, name, 43, 4))
    assert r.train.seed == 43 and r.train.max_seq_length == tspq_fair.BUDGETS[task]["train.max_seq_length"]
    assert r.train.train_subset == tspq_fair.BUDGETS[task].get("train.train_subset")  # full sets but SST-2
    if name.endswith("_da"):
        assert r.augment.n_copies == 4 and any(s.augment for s in r.stages)


@pytest.mark.parametrize("copies", [0, 1, 4, 8])
def test_every_da_point_loads_against_the_shipped_recipe(copies):
    recipe_file, overrides = tspq_da_copies.overrides_for(copies, 800, 128)
    r = load_recipe(RECIPES / recipe_file, overrides)
    assert r.train.train_subset == 800
    assert any(s.augment for s in r.stages) == (copies > 0)
    if copies:
        assert r.augment.n_copies == copies
