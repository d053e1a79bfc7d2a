"""Multi-process fine-tuning through torchrun (DDP on CPU, gloo), checked against one process with
the same global batch.

Two processes with per-device batch B see, at every step, exactly the examples one process sees
with batch 2B (the Trainer's sampler is seeded alike and Accelerate deals the batches out in
turn), and DDP averages the two half-batch gradients, which equals the full-batch mean gradient.
So the runs agree up to float summation order: after 3 steps the weights differ by ~1e-7
(tolerance 1e-6). Over many steps Adam's normalised updates amplify those last-bit differences
in near-zero gradients, so a longer comparison would need a looser, less meaningful bound.
Dropout is off: its random masks differ between one and two processes by design.
"""

import json
import os
import socket
import subprocess
import sys

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_bert):
    from helpers import write_tiny_sst2
    from safetensors.torch import load_file

    cfg_path = tiny_bert / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    cfg_path.write_text(json.dumps(cfg))
    data = write_tiny_sst2(tmp_path / "glue", n_train=96, n_dev=32)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["finetune", "--model", str(tiny_bert), "--task", "sst2", "--data-dir", str(data), "--max-steps", "3",
              "--learning-rate", "1e-3", "--max-seq-length", "32", "--set", "bf16=false",
              "--set", "keep_checkpoints=true"]
    one = subprocess.run([sys.executable, "-m", "kronbit.cli", *common, "--batch-size", "16",
                          "--output-dir", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(_free_port()), "-m", "kronbit.cli", *common, "--batch-size", "8",
                          "--output-dir", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    # the result line is printed once (by the main process), and the run was written once
    lines = [json.loads(line) for line in two.stdout.splitlines() if line.startswith("{\"task\"")]
    assert len(lines) == 1 and lines[0]["steps"] == 3
    a = load_file(str(tmp_path / "one" / "checkpoints" / "checkpoint-3" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoints" / "checkpoint-3" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, worst
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["steps"] == 3


def test_recipe_runs_refuse_multi_process_launches(monkeypatch, tmp_path, tiny_bert, capsys):
    from kronbit.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["run", "recipes/tspq/binary.yaml", "--model", str(tiny_bert), "--task", "sst2",
                 "--output-dir", str(tmp_path / "r")])
    assert code == 2
    assert "does not support multi-process launches yet" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
