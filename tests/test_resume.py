"""A staged run killed with SIGKILL in the middle of a stage resumes from its last checkpoint and
ends exactly where an uninterrupted run ends (same seed: same metrics, same weights)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

RECIPE = {
    "name": "resume-test", "method": "tspq",
    "teacher": {"epochs": 1, "batch_size": 8, "bf16": False, "max_seq_length": 32},
    "train": {"epochs": 1, "batch_size": 8, "bf16": False, "max_seq_length": 32, "learning_rate": 1e-3,
              "eval_every": 2, "scale_lr_multiplier": 10},
    "kd": {"logits": 1.0, "hidden": 1.0, "attention": 1.0, "layer_map": "identity"},
    "stages": [{"name": "w4", "w_bits": 4, "init_from": "teacher"},
               {"name": "w1a1", "w_bits": 1, "a_bits": 1, "epochs": 6}],
}


def _cmd(recipe, tiny_bert, data, out, *extra):
    return [sys.executable, "-m", "kronbit.cli", "run", str(recipe), "--model", str(tiny_bert), "--task", "sst2",
            "--data-dir", str(data), "--output-dir", str(out), *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_matches_uninterrupted(tmp_path, tiny_bert):
    from helpers import write_tiny_sst2
    from safetensors.torch import load_file

    data = write_tiny_sst2(tmp_path / "glue", n_train=96, n_dev=32)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))

    ref = subprocess.run(_cmd(recipe, tiny_bert, data, tmp_path / "ref"), env=_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(recipe, tiny_bert, data, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    stage2 = out / "stages" / "02-w1a1" / "checkpoints"
    deadline = time.time() + 300
    try:
        # wait for the second stage's second checkpoint: well inside the stage (36 steps)
        while not (stage2 / "checkpoint-4" / "trainer_state.json").is_file():
            assert proc.poll() is None, "the run ended before it could be killed mid-stage"
            assert time.time() < deadline
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / "stages" / "01-w4" / "result.json").is_file()
    assert not (out / "stages" / "02-w1a1" / "result.json").is_file()

    resumed = subprocess.run(_cmd(recipe, tiny_bert, data, out, "--resume"), env=_env(), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = (out / "train.log").read_text()
    assert "stage 1/2: w4 (W4, A32), from teacher — already finished; skipping" in log
    assert "resuming from checkpoint-" in log

    a = json.loads((tmp_path / "ref" / "stages.json").read_text())["stages"]
    b = json.loads((out / "stages.json").read_text())["stages"]
    assert [r["accuracy"] for r in a] == [r["accuracy"] for r in b]
    assert [r["steps"] for r in a] == [r["steps"] for r in b]
    wa = load_file(str(tmp_path / "ref" / "model" / "kronbit_model.safetensors"))
    wb = load_file(str(out / "model" / "kronbit_model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:  # same arithmetic in the same order: equal bit for bit
        assert (wa[k] == wb[k]).all(), k
