"""KnGPT2 recipes through the stage runner: a Kronecker student and its layer-drop baseline,
distilled on a tiny text with the real GPT-2 tokenizer, via the CLI."""

import json

import pytest

from kronbit.cli import main


def _last_json(capsys):
    """The command's JSON line (the Trainer prints its own log dicts before it)."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture
def lm_setup(lm_world):
    tmp_path, root = lm_world
    small = ["--set", "lm.block_size=32", "--set", "lm.max_tokens=1024", "--set", "train.batch_size=4",
             "--set", "perplexity.max_length=64", "--set", "perplexity.stride=32", "--set",
             "perplexity.max_tokens=400", "--set", "train.bf16=false", "--set", "perplexity.bf16=false"]
    return tmp_path, root, small


def test_kron_and_layerdrop_recipes_run_and_resume(lm_setup, capsys):
    from kronbit.formats import load_model

    tmp, root, small = lm_setup
    argv = ["run", "recipes/kngpt2/kron-pretrain.yaml", "--model", str(tmp / "teacher"), "--data-dir", str(root),
            "--output-dir", str(tmp / "kron"), "--max-steps", "3", *small]
    assert main(argv) == 0
    table = _last_json(capsys)
    row = table["stages"][0]
    assert row["kind"] == "kron" and row["steps"] == 3 and row["params"] < table["teacher"]["params"]
    assert row["ppl"] > 1 and row["ppl_before"] > 1 and row["kron_layers"] > 0
    assert (tmp / "kron" / "stages.md").is_file() and (tmp / "kron" / "model" / "kronbit.json").is_file()
    student = load_model(tmp / "kron" / "model")  # rebuilt from its transforms
    assert sum(p.numel() for p in student.parameters()) == row["params"]
    # a rerun with --resume skips the finished stage
    assert main([*argv, "--resume"]) == 0
    assert _last_json(capsys)["stages"][0]["wall_time_s"] == row["wall_time_s"]

    target = row["params"]
    argv = ["run", "recipes/kngpt2/layerdrop-pretrain.yaml", "--model", str(tmp / "teacher"), "--data-dir", str(root),
            "--output-dir", str(tmp / "drop"), "--max-steps", "3", *small,
            "--set", "stages.0.layerdrop.keep=null", "--set", f"stages.0.layerdrop.target_params={target}"]
    assert main(argv) == 0
    drop = _last_json(capsys)["stages"][0]
    assert drop["kind"] == "layerdrop" and "layerdrop_plan" in drop
    assert drop["kept_layers"] == sorted(drop["kept_layers"]) and len(drop["kept_layers"]) < 4


def test_lm_recipe_errors(lm_setup, capsys):
    tmp, root, small = lm_setup
    base = ["run", "recipes/kngpt2/kron-pretrain.yaml", "--model", str(tmp / "teacher"), "--data-dir", str(root),
            "--output-dir", str(tmp / "x"), *small]
    cases = [
        (["--set", "stages.0.kron.compresion=2"], "did you mean 'compression'"),
        (["--set", "stages.0.w_bits=4"], "not supported"),
        (["--set", "stages.0.layerdrop.keep=2"], "choose kron or layerdrop, not both"),
        (["--set", "perplexity.text=/no/such.txt"], "text file not found"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("kronbit: error: ") and message in err and "\n" not in err
    assert not (tmp / "x").exists()


def test_perplexity_at_token_marks(lm_setup, capsys):
    """perplexity.at_tokens scores the student as its training tokens reach each mark, into the stage
    row and ppl_curve.json; the mark at the stage's end is the stage's own final perplexity."""
    tmp, root, small = lm_setup  # 4 blocks of 32 tokens a step: 128 tokens
    argv = ["run", "recipes/kngpt2/kron-pretrain.yaml", "--model", str(tmp / "teacher"), "--data-dir", str(root),
            "--output-dir", str(tmp / "curve"), "--max-steps", "4", *small,
            "--set", "perplexity.at_tokens=[128, 300, 512]"]
    assert main(argv) == 0
    row = _last_json(capsys)["stages"][0]
    curve = row["ppl_curve"]
    assert [(p["tokens_mark"], p["step"], p["train_tokens"]) for p in curve] == [(128, 1, 128), (300, 3, 384),
                                                                                  (512, 4, 512)]
    assert curve[-1]["ppl"] == row["ppl"] and curve[0]["ppl"] != row["ppl"]
    saved = json.loads((tmp / "curve" / "stages" / "01-kron" / "ppl_curve.json").read_text())["points"]
    assert saved == curve
    # a mark the stage cannot reach is said before any training, in one line
    bad = [*argv[:7], str(tmp / "bad"), *argv[8:-1], "perplexity.at_tokens=[128, 5000]"]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert "perplexity.at_tokens [5000] lie beyond" in err and "\n" not in err
    assert main([*bad[:-1], "perplexity.at_tokens=[0]"]) == 2
    assert "positive token counts" in capsys.readouterr().err
    assert not (tmp / "bad").exists()


def test_curve_points_survive_a_resume(tmp_path):
    """Points measured before a kill are read back; a mark passed again after resuming from an
    earlier checkpoint is measured again and replaces its old point."""
    from types import SimpleNamespace

    import torch

    from kronbit.workflows.ppl_curve import PerplexityAtTokens, read_curve

    scores = iter([{"ppl": 50.0, "ppl_tokens": 10}, {"ppl": 40.0, "ppl_tokens": 10}, {"ppl": 41.0, "ppl_tokens": 10}])
    model = torch.nn.Linear(2, 2)
    cb = PerplexityAtTokens([100, 300], 64, lambda m: next(scores), tmp_path)
    assert [cb.due(s) for s in (1, 2, 3, 4, 5)] == [[], [100], [], [], [300]]
    for step in (1, 2, 3, 4, 5):
        cb.on_step_end(None, SimpleNamespace(global_step=step), None, model=model)
    assert [(p["tokens_mark"], p["step"], p["ppl"]) for p in read_curve(tmp_path)] == [(100, 2, 50.0), (300, 5, 40.0)]
    again = PerplexityAtTokens([100, 300], 64, lambda m: next(scores), tmp_path)  # resumed from step 4
    again.on_step_end(None, SimpleNamespace(global_step=5), None, model=model)
    assert [(p["tokens_mark"], p["ppl"]) for p in again.curve()] == [(100, 50.0), (300, 41.0)]
    assert model.training
