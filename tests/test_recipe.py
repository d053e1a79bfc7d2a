"""Recipes: every shipped recipe validates; bad recipes fail before training; a tiny staged run."""

import json

import pytest
import yaml

from helpers import REPO, write_tiny_sst2
from kronbit.cli import main
from kronbit.core.errors import ConfigError
from kronbit.runner.recipe import Recipe, load_recipe

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


def test_there_are_recipes():
    names = {p.relative_to(REPO / "recipes").as_posix() for p in RECIPES}
    assert {"tspq/binary.yaml", "tspq/binary-da.yaml", "tspq/ternary.yaml", "tspq/ternary-da.yaml",
            "tspq/direct-binary.yaml", "tspq/direct-ternary.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(REPO / "recipes").as_posix())
def test_every_recipe_loads_and_validates(path):
    recipe = load_recipe(path)
    assert recipe.stages and recipe.name
    for i, stage in enumerate(recipe.stages):
        recipe.quant_config(stage)
        init = recipe.resolve_init(i)
        assert init in ("teacher", "student") or init in [s.name for s in recipe.stages[:i]]


BASE = {"name": "t", "stages": [{"name": "a", "w_bits": 8, "init_from": "teacher"}, {"name": "b", "w_bits": 2}]}


def _with(**stage_b):
    d = json.loads(json.dumps(BASE))
    d["stages"][1].update(stage_b)
    return d


@pytest.mark.parametrize("data, message", [
    (_with(init_from="c"), "stage 'b': init_from 'c' names no earlier stage; choose one of: teacher, previous, student, a"),
    ({"name": "t", "stages": [{"name": "a", "init_from": "b"}, {"name": "b"}]},
     "stage 'a': init_from 'b' names a later stage"),
    (_with(w_bits=3), "w_bits=3 is not supported"),
    ({**BASE, "quant": {"weight_quantizer": "twn"}}, "stage 'a' quant: .*'twn' supports w_bits 2, not 8"),
    (_with(name="a"), "stage name 'a' is used twice"),
    (_with(name="teacher"), "stage name 'teacher' is reserved"),
    ({**BASE, "stages": []}, "a recipe needs at least one stage"),
    ({**BASE, "kd": {"logits": 0}}, "every loss weight is 0"),
    ({**BASE, "trian": {}}, "unknown key 'trian'; did you mean 'train'"),
    (_with(kd={"hiden": 1}), "unknown key 'hiden'; did you mean 'hidden'"),
    ({**BASE, "quant": {"w_bits": 4}}, "set w_bits / a_bits per stage"),
    (_with(distill_from="c"), "stage 'b': distill_from 'c' names no earlier stage; choose one of: teacher, previous, a"),
    ({"name": "t", "stages": [{"name": "a", "distill_from": "previous"}]},
     "stage 'a': distill_from 'previous' needs an earlier stage"),
    (_with(attention="half"), "stage 'b': attention must be 'full' or 'binary', got 'half'"),
    ({"name": "t", "stages": [{"name": "a", "attention": "full"}]},
     "stage 'a': attention applies to quantized stages"),
    ({"name": "t", "method": "kngpt2", "stages": [{"name": "a", "attention": "full"}]},
     "stage 'a': attention applies to quantized GLUE stages only"),
])
def test_bad_recipes(data, message):
    with pytest.raises(ConfigError, match=message):
        Recipe.from_dict(data)


def test_cli_rejects_a_bad_recipe_before_training(tmp_path, capsys, tiny_bert):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with(init_from="zz")))
    data = write_tiny_sst2(tmp_path / "glue")
    rc = main(["run", str(bad), "--model", str(tiny_bert), "--task", "sst2", "--data-dir", str(data),
               "--output-dir", str(tmp_path / "out")])
    assert rc == 2
    assert "init_from 'zz' names no earlier stage" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_augmentation_without_a_source_fails_before_training(tmp_path, capsys, tiny_bert, monkeypatch):
    monkeypatch.setenv("KRONBIT_WORDNET_DIR", str(tmp_path / "no-wordnet"))
    recipe = tmp_path / "da.yaml"
    recipe.write_text(yaml.safe_dump({**_with(augment=True), "augment": {"sources": ["wordnet"]}}))
    data = write_tiny_sst2(tmp_path / "glue")
    rc = main(["run", str(recipe), "--model", str(tiny_bert), "--task", "sst2", "--data-dir", str(data),
               "--output-dir", str(tmp_path / "out")])
    assert rc == 2
    assert "WordNet" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_tiny_staged_run_end_to_end_and_resume(tmp_path, capsys, tiny_bert):
    data = write_tiny_sst2(tmp_path / "glue")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny", "train": {"bf16": False, "batch_size": 16, "learning_rate": 1e-3},
        "teacher": {"bf16": False, "batch_size": 16, "learning_rate": 3e-3, "epochs": 4},
        "kd": {"logits": 1, "hidden": 1, "embedding": 1, "attention": 1, "layer_map": "identity"},
        "quant": {"quantize_embeddings": True},
        "stages": [{"name": "w4", "w_bits": 4, "init_from": "teacher"}, {"name": "w1", "w_bits": 1},
                   {"name": "w1a8", "w_bits": 1, "a_bits": 8, "init_from": "w4"}]}))
    out = tmp_path / "run"
    args = ["run", str(recipe), "--model", str(tiny_bert), "--task", "sst2", "--data-dir", str(data),
            "--output-dir", str(out), "--max-steps", "4"]
    assert main(args) == 0
    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = table["stages"]
    assert [r["stage"] for r in rows] == ["w4", "w1", "w1a8"]
    assert [r["init_from"] for r in rows] == ["teacher", "w4", "w4"]
    assert [(r["w_bits"], r["a_bits"]) for r in rows] == [(4, 32), (1, 32), (1, 8)]
    assert all(r["steps"] == 4 for r in rows)
    assert rows[0]["size_mb"] > rows[1]["size_mb"]
    for name in ("stages.json", "stages.md", "stages.png", "model/kronbit_model.safetensors", "teacher/model"):
        assert (out / name).exists(), name
    meta = json.loads((out / "model" / "kronbit.json").read_text())
    assert meta["stage"] == "w1a8" and meta["transforms"][0]["config"]["a_bits"] == 8
    # kronbit eval reloads the compressed model (rebuilt from its transforms) and scores it
    # exactly as the run did.
    assert main(["eval", "--model", str(out), "--data-dir", str(data)]) == 0
    ev = json.loads(capsys.readouterr().out.strip())
    assert ev["accuracy"] == pytest.approx(rows[-1]["accuracy"])
    # Resume: finished stages are skipped (their results are reused unchanged).
    before = (out / "stages" / "01-w4" / "result.json").read_text()
    assert main(args + ["--resume"]) == 0
    capsys.readouterr()
    assert (out / "stages" / "01-w4" / "result.json").read_text() == before
    # Without --resume or --overwrite the run directory is protected.
    assert main(args) == 2
    assert "output directory is not empty" in capsys.readouterr().err


def _binary_schedule(tmp_path, middle: dict):
    """A tiny BiT-style recipe: W1, then ``middle``, then binary-attention W1A1 distilling it."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny", "train": {"bf16": False, "batch_size": 16, "learning_rate": 1e-3},
        "teacher": {"bf16": False, "batch_size": 16, "learning_rate": 3e-3, "epochs": 2},
        "kd": {"logits": 1, "hidden": 1, "layer_map": "identity"},
        "quant": {"attention": "binary", "ffn_act_quantizer": "elastic_unsigned"},
        "stages": [{"name": "w1", "w_bits": 1, "init_from": "teacher"}, middle,
                   {"name": "w1a1", "w_bits": 1, "a_bits": 1, "distill_from": "previous"}]}))
    return recipe


def test_a_stage_distils_an_earlier_stage_student(tmp_path, capsys, tiny_bert):
    """distill_from (BiT's multi-distillation): the W1A1 stage's KD targets come from the W1A2
    stage's student, loaded as it finished, not from the full-precision teacher."""
    from kronbit.distill.trainer import DistillationTrainer

    data = write_tiny_sst2(tmp_path / "glue")
    recipe = _binary_schedule(tmp_path, {"name": "w1a2", "w_bits": 1, "a_bits": 2})
    seen = []
    original = DistillationTrainer.__init__

    def spy(self, *a, teacher=None, **k):
        seen.append(teacher)
        original(self, *a, teacher=teacher, **k)
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DistillationTrainer, "__init__", spy)
        assert main(["run", str(recipe), "--model", str(tiny_bert), "--task", "sst2", "--data-dir", str(data),
                     "--output-dir", str(out), "--max-steps", "3"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stages"]
    assert [r.get("distill_from", "teacher") for r in rows] == ["teacher", "teacher", "w1a2"]
    assert [r["attention"] for r in rows] == ["full", "full", "binary"]  # k-bit stage: attention full
    from kronbit.quant.api import quantized_modules
    w1a2_teacher = seen[-1]
    bits = {m.a_bits for _, m in quantized_modules(w1a2_teacher) if m.takes_activations}
    assert bits == {2} and not w1a2_teacher.training  # the W1A2 student, in eval mode


def test_a_stage_can_hold_attention_full_before_binarizing_it(tmp_path, capsys, tiny_bert):
    """A progressive attention step: a W1A1 stage with full-precision attention matmuls (its own
    ``attention: full``), then a W1A1 stage with the recipe's binary attention that starts from it
    and distils it. Each stage's saved student reloads with the attention it trained with."""
    from kronbit.formats import load_model
    from kronbit.quant.attention import active_binary_attention

    data = write_tiny_sst2(tmp_path / "glue")
    recipe = _binary_schedule(tmp_path, {"name": "w1a1full", "w_bits": 1, "a_bits": 1, "attention": "full"})
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--model", str(tiny_bert), "--task", "sst2", "--data-dir", str(data),
                 "--output-dir", str(out), "--max-steps", "3"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stages"]
    assert [r["attention"] for r in rows] == ["full", "full", "binary"]
    assert [r.get("distill_from", "teacher") for r in rows] == ["teacher", "teacher", "w1a1full"]
    middle = load_model(out / "stages" / "02-w1a1full" / "model")
    final = load_model(out / "model")
    assert active_binary_attention(middle) == 0 and active_binary_attention(final) == 2
