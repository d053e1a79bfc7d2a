"""The shipped W1A1 recipes binarize the attention matmul inputs (BiT) at their W1A1 stage only;
a tiny run of recipes/tspq/binary.yaml records it, and eval / export / size reproduce it."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from helpers import REPO, single_thread, write_tiny_sst2
from kronbit.cli import main
from kronbit.core.errors import ConfigError
from kronbit.core.transforms import recorded_transforms
from kronbit.data.glue import get_task
from kronbit.formats import load_model, load_packed
from kronbit.quant.attention import active_binary_attention
from kronbit.quant.api import quant_summary
from kronbit.quant.packed import select_kernels_
from kronbit.runner import load_recipe
from kronbit.runner.glue import _student
from kronbit.runner.stages import stage_dir

_one_thread = pytest.fixture(autouse=True)(single_thread)
W1A1_RECIPES = ["binary.yaml", "binary-da.yaml", "direct-binary.yaml"]


@pytest.mark.parametrize("name", W1A1_RECIPES)
def test_w1a1_recipes_binarize_attention_only_where_a_bits_is_1(name):
    recipe = load_recipe(REPO / "recipes" / "tspq" / name)
    summaries = [(s.a_bits, quant_summary(recipe.quant_config(s))) for s in recipe.stages]
    assert any(a == 1 for a, _ in summaries)
    for a_bits, q in summaries:
        assert q["attention"] == ("binary" if a_bits == 1 else "full")
        # BiT's {0, α} family on the non-negative GELU outputs wherever activations are quantized
        # (the W1A2 rung's 2-bit levels too)
        assert q["ffn_act_quantizer"] == ("elastic_unsigned" if a_bits < 32 else None)


def test_ternary_recipes_keep_full_precision_attention():
    for name in ("ternary.yaml", "direct-ternary.yaml"):
        recipe = load_recipe(REPO / "recipes" / "tspq" / name)
        assert all(quant_summary(recipe.quant_config(s))["attention"] == "full" for s in recipe.stages)


def test_binary_recipe_runs_end_to_end_with_binary_attention(tmp_path, capsys, tiny_bert):
    data = write_tiny_sst2(tmp_path / "glue")
    out = tmp_path / "run"
    sets = ["train.bf16=false", "teacher.bf16=false", "train.batch_size=16", "teacher.batch_size=16"]
    args = ["run", str(REPO / "recipes" / "tspq" / "binary.yaml"), "--model", str(tiny_bert), "--task", "sst2",
            "--data-dir", str(data), "--output-dir", str(out), "--max-steps", "2",
            *[x for s in sets for x in ("--set", s)]]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stages"]
    assert [(r["stage"], r["a_bits"], r["attention"]) for r in rows] == [
        ("w2", 32, "full"), ("w1", 32, "full"), ("w1a2", 2, "full"), ("w1a1", 1, "binary")]
    assert "| w1a1 | 1 | 1 | binary |" in (out / "stages.md").read_text()
    cfg = json.loads((out / "model" / "kronbit.json").read_text())["transforms"][0]["config"]
    assert (cfg["a_bits"], cfg["attention"], cfg["ffn_act_quantizer"]) == (1, "binary", "elastic_unsigned")
    # the reloaded model (rebuilt from its transforms, on kronbit's attention) scores as the run did
    assert main(["eval", "--model", str(out), "--data-dir", str(data)]) == 0
    assert json.loads(capsys.readouterr().out.strip())["accuracy"] == pytest.approx(rows[-1]["accuracy"])
    assert main(["export", "--model", str(out), "--output-dir", str(tmp_path / "packed"), "--onnx",
                 "--onnx-seq-len", "16"]) == 0
    exported = json.loads(capsys.readouterr().out.strip())
    if "max_abs_diff_vs_torch" in exported["onnx"]:  # checked in onnxruntime when it is installed
        assert exported["onnx"]["max_abs_diff_vs_torch"] < 1e-4
    # the packed reload computes the run's model, binary attention included: exactly on the torch
    # path, to float32 rounding on the bit-level kernels (integer dot products against float sums)
    tok = AutoTokenizer.from_pretrained(out / "model")
    batch = tok(["a good movie", "the plot was very dull and the actor sad"] * 8, padding=True, return_tensors="pt")
    fake, packed = load_model(out), load_packed(tmp_path / "packed")
    assert active_binary_attention(packed) == active_binary_attention(fake) == 2
    with torch.no_grad():
        want, got = fake(**batch).logits, packed(**batch).logits
        assert ((got - want).abs().max() / want.abs().max()) < 1e-5
        select_kernels_(packed, "off")
        assert torch.equal(packed(**batch).logits, want)
    assert main(["eval", "--model", str(tmp_path / "packed"), "--task", "sst2", "--data-dir", str(data)]) == 0
    assert json.loads(capsys.readouterr().out.strip())["accuracy"] == pytest.approx(rows[-1]["accuracy"])
    assert main(["size", str(tmp_path / "packed"), "--no-memory"]) == 0
    report = json.loads(capsys.readouterr().out.strip())
    assert report["quant"] == {"w_bits": 1, "a_bits": 1, "attention": "binary", "ffn_act_quantizer": "elastic_unsigned"}
    assert main(["size", str(out), "--no-memory"]) == 0  # the compressed checkpoint says the same
    assert json.loads(capsys.readouterr().out.strip())["quant"] == report["quant"]
    # A stage that re-bits that student under a recipe with other quant options refuses it
    # (set_bits_ would keep the student's options and train what the recipe does not say).
    recipe = load_recipe(REPO / "recipes" / "tspq" / "binary.yaml", ["quant.ffn_act_quantizer=null"])
    i = recipe.index_of("w1a1")
    with pytest.raises(ConfigError, match=r"stage 'w1a1': the student was quantized with other options than the "
                                          r"recipe's \(ffn_act_quantizer: 'elastic_unsigned' → None\)"):
        _student(recipe, i, stage_dir(out, i - 1, recipe.stages[i - 1].name) / "model", get_task("sst2"))
    # Attention is set per stage, like the bits: the same W1A2 student under a full-attention recipe
    # trains its W1A1 stage with full-precision attention matmuls (W1A1 both ways share W2 … W1A2).
    full = load_recipe(REPO / "recipes" / "tspq" / "binary.yaml", ["quant.attention=full"])
    student = _student(full, i, stage_dir(out, i - 1, full.stages[i - 1].name) / "model", get_task("sst2"))
    assert active_binary_attention(student) == 0
    assert next(t["config"]["attention"] for t in recorded_transforms(student) if t["kind"] == "quant") == "full"
    binary = _student(load_recipe(REPO / "recipes" / "tspq" / "binary.yaml"), i,
                      stage_dir(out, i - 1, full.stages[i - 1].name) / "model", get_task("sst2"))
    assert active_binary_attention(binary) > 0
