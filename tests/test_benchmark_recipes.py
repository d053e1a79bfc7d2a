"""Every benchmark that runs a shipped recipe with overrides plans its runs through
``planned_recipes(parse_args(argv))``; applying those overrides to the shipped recipes here keeps
the scripts in step with the recipes (a stale override, e.g. a stage index that no longer
exists, fails this test instead of a long run)."""

import importlib
import sys

import pytest

from helpers import REPO
from kronbit.core.errors import ConfigError
from kronbit.runner import load_recipe

BENCH = REPO / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py")  # the runnable ones (tspq_fair_configs is tspq_fair's data)
                 if "load_recipe(" in p.read_text() and '__name__ == "__main__"' in p.read_text())
ARGVS = {"kngpt2_ablation": [[], ["--parts", "init", "distil"]],  # parts not run by default
         "tspq_stage_levers": [["--stage", "w1"], ["--stage", "w1a1"]]}


def _module(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_the_recipe_benchmarks_are_found():
    assert {p.stem for p in SCRIPTS} >= {"tspq_glue", "tspq_ablation", "tspq_schedule", "tspq_fair", "tspq_da_copies",
                                         "kngpt2", "kngpt2_ablation"}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_overrides_apply_to_the_shipped_recipes(path):
    mod = _module(path.stem)
    assert hasattr(mod, "parse_args") and hasattr(mod, "planned_recipes"), \
        f"{path.name} loads recipes: give it parse_args(argv) and planned_recipes(args)"
    for argv in ARGVS.get(path.stem, [[]]):
        plans = mod.planned_recipes(mod.parse_args(argv))
        assert plans and len({key for key, _, _ in plans}) == len(plans)
        for key, recipe_path, overrides in plans:
            assert recipe_path.is_file() and recipe_path.is_relative_to(REPO / "recipes"), key
            load_recipe(recipe_path, overrides)


def test_ablation_variants_reach_the_stage_they_ablate():
    mod = _module("tspq_ablation")
    args = mod.parse_args([])
    resolved = {}
    for key, path, overrides in mod.planned_recipes(args):
        name = key.split("/")[1]
        resolved[name] = mod.check_variant(load_recipe(path, overrides), name, args.epochs)
    # every variant trains a different stage: none is silently equal to another
    assert len({tuple(sorted(s.items())) for s in resolved.values()}) == len(mod.VARIANTS)
    assert resolved["prob KL, lr 5e-5"]["kd.attention"] == 1.0
    assert resolved["prob KL, lr 5e-5"]["kd.attention_loss"] == "prob_kl"
    # what the script of 2026-11-24 did against today's recipe: a stage that no longer exists ...
    with pytest.raises(ConfigError, match=r"'4' is not an index of a [34]-item list"):
        load_recipe(mod.RECIPE, ["stages.4.learning_rate=2e-4"])
    # ... and a global KD override that the stage's own kd: {attention: 0} overrides
    recipe = load_recipe(mod.RECIPE, ["kd.attention_loss=prob_kl"])
    assert mod.stage_settings(recipe)["kd.attention"] == 0.0
    with pytest.raises(SystemExit, match="the stage resolves to"):
        mod.check_variant(recipe, "prob KL, lr 5e-5", 1.0)


def test_ablation_stage_is_the_binary_attention_stage():
    """Today's w1a1 stage binarizes the attention too: the ablation's rows record it."""
    mod = _module("tspq_ablation")
    key, path, overrides = mod.planned_recipes(mod.parse_args(["--variants", "no attention KD, lr 2e-4"]))[0]
    recipe = load_recipe(path, overrides)
    stage = recipe.stages[mod.stage_index(recipe)]
    cfg = recipe.quant_config(stage)
    assert (stage.w_bits, stage.a_bits, cfg.attention, cfg.ffn_act_quantizer) == (1, 1, "binary", "elastic_unsigned")


def test_w2_lever_rows_each_change_their_stage():
    """Every lever row resolves to a single w2 (or w4) stage from the teacher that differs from the
    shipped stage, and no two rows train the same thing."""
    mod = _module("tspq_w2_levers")
    seen = set()
    for key, path, overrides in mod.planned_recipes(mod.parse_args([])):
        recipe = load_recipe(path, overrides)
        (stage,) = recipe.stages
        kd, train = recipe.kd_config(stage), recipe.train_settings(stage)
        assert stage.init_from == "teacher" and stage.w_bits in (2, 4) and stage.a_bits in (None, 32), key
        assert train.epochs == mod.VARIANTS[key.split("/", 1)[1]][0].get("epochs", mod.EPOCHS), key
        assert train.eval_every is not None, key
        seen.add((stage.w_bits, train.learning_rate, train.epochs, kd.task, kd.attention,
                  recipe.quant.quantize_embeddings, recipe.quant.granularity, recipe.quant.weight_quantizer))
    assert len(seen) == len(mod.VARIANTS)


@pytest.mark.parametrize("stage", ["w1", "w1a1"])
def test_stage_lever_rows_each_change_their_stage(stage):
    """Every w1/w1a1 lever row ends in the studied stage with the shipped stage's bits, starting
    from the base student (or from the variant's own stages before it, the first of which starts
    from the base student); no two rows train the same thing; each base is the shipped recipe cut before the stage, with
    the variant's quant options (a student keeps the options it was first quantized with)."""
    mod = _module("tspq_stage_levers")
    shipped = load_recipe(REPO / "recipes" / "tspq" / mod.RECIPE)
    (ship,) = [s for s in shipped.stages if s.name == stage]
    seen = set()
    for key, path, overrides in mod.planned_recipes(mod.parse_args(["--stage", stage])):
        recipe = load_recipe(path, overrides)
        *before, s = recipe.stages
        kd, train = recipe.kd_config(s), recipe.train_settings(s)
        assert s.name == stage and (s.w_bits, s.a_bits) == (ship.w_bits, ship.a_bits), key
        assert s.init_from == ("previous" if before else "student"), key
        assert all(b.init_from == ("student" if i == 0 else "previous") for i, b in enumerate(before)), key
        assert all(b.a_bits > s.a_bits for b in before), key  # an intermediate step, not the same stage twice
        assert train.eval_every is not None and train.seed == mod.SEED, key
        seen.add((train.learning_rate, train.epochs, str(kd), str(recipe.quant), str(before), s.distill_from))
        extra = mod.VARIANTS[stage][key.split("/", 2)[2]][1]
        base = load_recipe(path, mod.base_overrides("stsb", stage, extra))
        cut = [x.name for x in shipped.stages].index(mod.BASE_BEFORE[stage])
        assert [b.name for b in base.stages] == [x.name for x in shipped.stages[:cut]]
        assert base.quant == recipe.quant, key
    assert len(seen) == len(mod.VARIANTS[stage])
    with pytest.raises(SystemExit):
        mod.parse_args(["--stage", "w1", "--variants", "lr 1e-4"])  # a w1a1 variant
