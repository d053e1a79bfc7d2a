"""What a person watching a run sees on the console (stderr).

The Trainer's own console output is a bare progress bar, a second unlabelled bar per evaluation,
and each log event printed as a raw dict. Here instead: a header line per stage, one labelled bar
for training and one for each evaluation, and one short line per log step. Everything stays in
train.log / log.jsonl in full; the console gets the gist.
"""

from __future__ import annotations

import logging
import math
import sys

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

log = logging.getLogger("kronbit")

# Log keys that say how fast, not how well: kept in log.jsonl, left off the console line.
SPEED_KEYS = ("runtime", "samples_per_second", "steps_per_second", "total_flos", "epoch")
SHORT = {"learning_rate": "lr", "train_loss": "mean loss"}


def say(message: str) -> None:
    """A line for the console (above any live bar) and for train.log."""
    log.info("%s", message)
    tqdm.write(message, file=sys.stderr)


def fmt(value) -> str:
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return f"{value:g}"
        return f"{value:.2e}" if abs(value) < 1e-3 else f"{value:.4g}"
    return str(value)


def log_line(label: str, step: int, total: int, logs: dict) -> str:
    """``w2 step 50/312: loss 0.4123, lr 1.00e-04, kd_hidden 0.0312`` (eval: ``w2 eval at step 78: ...``)."""
    keep = {k: v for k, v in logs.items() if not any(k.endswith(s) for s in SPEED_KEYS)}
    if any(k.startswith("eval_") for k in keep):
        items = ", ".join(f"{k[5:]} {fmt(v)}" for k, v in keep.items() if k.startswith("eval_"))
        return f"{label} eval at step {step}: {items}"
    items = ", ".join(f"{SHORT.get(k, k)} {fmt(v)}" for k, v in keep.items())
    return f"{label} step {step}/{total}: {items}"


class Console(TrainerCallback):
    """Labelled bars and one concise line per log event, in place of the Trainer's console output."""

    def __init__(self, label: str):
        self.label = label
        self.bar = self.eval_bar = None

    def on_train_begin(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=f"{self.label} train",
                            unit="step", file=sys.stderr, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kw):
        if not state.is_world_process_zero or eval_dataloader is None:
            return
        if self.eval_bar is None:
            self.eval_bar = tqdm(total=len(eval_dataloader), desc=f"{self.label} eval", unit="batch",
                                 leave=False, file=sys.stderr, dynamic_ncols=True)
        self.eval_bar.update(1)

    def on_evaluate(self, args, state, control, **kw):
        self._close_eval()

    def on_predict(self, args, state, control, **kw):
        self._close_eval()

    def on_log(self, args, state, control, logs=None, **kw):
        if state.is_world_process_zero and logs:
            tqdm.write(log_line(self.label, state.global_step, state.max_steps, logs), file=sys.stderr)

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _close_eval(self) -> None:
        if self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None


def attach_console(trainer, label: str) -> None:
    """Swap the Trainer's bar / dict printer for ``Console(label)``."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Console(label))
