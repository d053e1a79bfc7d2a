"""NaN/inf in the loss or gradients stops a run with one clear line, before the bad update, and
the last good checkpoint stays intact."""

import pytest
import torch

import kronbit.workflows.finetune as ft
from kronbit.cli import main


@pytest.fixture
def poison_at_step_3(monkeypatch):
    """Make the weights NaN when step 3 begins (after the checkpoint of step 2)."""
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kw):
            if state.global_step == 2:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))

    real = ft.build_callbacks
    monkeypatch.setattr(ft, "build_callbacks", lambda out, evaluate=True: real(out, evaluate) + [Poison()])


def test_nan_stops_the_run_and_keeps_the_checkpoint(tmp_path, tiny_bert, capsys, poison_at_step_3):
    from helpers import write_tiny_sst2

    data = write_tiny_sst2(tmp_path / "glue")
    out = tmp_path / "run"
    code = main(["finetune", "--model", str(tiny_bert), "--task", "sst2", "--data-dir", str(data),
                 "--output-dir", str(out), "--batch-size", "8", "--epochs", "1", "--set", "eval_every=2",
                 "--set", "bf16=false"])
    assert code == 2
    # progress bars came before it; the error itself is one line
    errors = [line for line in capsys.readouterr().err.splitlines() if "kronbit: error" in line]
    assert len(errors) == 1
    err = errors[0].strip()
    assert err.startswith("kronbit: error: training diverged at step 3: NaN/inf in the loss or gradients")
    assert "checkpoint-2" in err
    ckpt = out / "checkpoints" / "checkpoint-2"
    assert (ckpt / "trainer_state.json").is_file()
    from safetensors.torch import load_file

    weights = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (out / "model").exists()  # no final model was written from diverged weights
