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
