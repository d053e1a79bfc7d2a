"""The console of a run: a header per stage, labelled bars, one short line per log step, no raw
Trainer dicts and no load reports of the libraries underneath."""

import os
import subprocess
import sys

import yaml

from kronbit.workflows.console import log_line

RECIPE = {
    "name": "console-test", "method": "tspq",
    "teacher": {"epochs": 1, "batch_size": 8, "bf16": False, "max_seq_length": 32},
    "train": {"epochs": 1, "batch_size": 8, "bf16": False, "max_seq_length": 32, "eval_every": 2},
    "kd": {"logits": 1.0, "hidden": 1.0, "layer_map": "identity"},
    "stages": [{"name": "w2", "w_bits": 2, "init_from": "teacher"},
               {"name": "w2a8", "w_bits": 2, "a_bits": 8}],
}


def test_log_line_keeps_the_gist():
    logs = {"loss": 0.41234567, "grad_norm": 1.5, "learning_rate": 1e-4, "epoch": 0.5,
            "train_runtime": 3.2, "train_samples_per_second": 9.0}
    assert log_line("w2", 50, 312, logs) == "w2 step 50/312: loss 0.4123, grad_norm 1.5, lr 1.00e-04"
    ev = {"eval_loss": 0.5, "eval_accuracy": 0.8125, "eval_runtime": 1.0, "eval_samples_per_second": 3.0,
          "epoch": 1.0}
    assert log_line("w2", 78, 312, ev) == "w2 eval at step 78: loss 0.5, accuracy 0.8125"


def test_a_run_says_where_it_is(tmp_path, tiny_bert):
    from helpers import write_tiny_sst2

    data = write_tiny_sst2(tmp_path / "glue", n_train=32, n_dev=16)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    cmd = [sys.executable, "-m", "kronbit.cli", "run", str(recipe), "--model", str(tiny_bert), "--task", "sst2",
           "--data-dir", str(data), "--output-dir", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    err = proc.stderr
    assert "is not yet fine-tuned on sst2; fine-tuning it first" in err  # the teacher is announced
    assert "stage 1/2: w2 (W2, A32), from teacher" in err
    assert "stage 2/2: w2a8 (W2, A8), from w2" in err
    for label in ("finetune sst2 train", "w2 train", "w2a8 train", "w2 eval"):
        assert label in err, label
    assert "w2 step 4/4: " in err and "w2 eval at step 2: " in err
    assert "{'" not in err  # no raw Trainer dicts
    assert "Loading weights" not in err and "newly initialized" not in err
    log = (tmp_path / "run" / "train.log").read_text()
    assert "stage 1/2: w2" in log and "stage 2/2: w2a8" in log  # train.log names the stages
