"""Training plumbing shared by fine-tuning and every recipe stage: the training options and their
checks, Hugging Face ``TrainingArguments`` built from them, the run-directory callbacks (log files,
evaluate at the end, stop before a NaN/inf update), GLUE metrics for the Trainer, and the selected
model's metrics. Training itself is Hugging Face ``Trainer`` (no hand-written loop)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback, TrainingArguments

from ..core import rundir
from ..core.config import Config
from ..core.errors import ConfigError, NumericalError
from ..core.hardware import BF16Setting, resolve_bf16
from ..core.io import atomic_dir, write_json
from ..data import metrics as glue_metrics
from ..formats.meta import KRONBIT_META

log = logging.getLogger("kronbit")


@dataclass(kw_only=True)
class TrainingOptions(Config):
    """How a model trains: shared by fine-tuning (``FinetuneConfig``) and recipe stages
    (``recipe.TrainSettings``), validated by one set of checks."""

    epochs: float = 3.0
    max_steps: int | None = None   # caps training; overrides epochs when set
    seed: int = 42
    # bf16 autocast: true / false, or auto = where the hardware has bf16 units (core.hardware)
    bf16: BF16Setting = False
    learning_rate: float = 5e-5
    batch_size: int = 32
    eval_batch_size: int = 128
    max_seq_length: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    train_subset: int | None = None  # seeded random subset of the training split (budgets)
    eval_every: int | None = None    # steps between evaluations (and checkpoints); default once per epoch
    # Batches of similar-length examples (HF's length-grouped sampler): with dynamic padding a
    # random batch costs its longest example, and GLUE lengths vary 2-3x within a batch.
    group_by_length: bool = False

    def validate(self) -> None:
        check_training(self)


def check_training(cfg: Any) -> None:
    """Checks shared by every config that trains (fine-tuning and recipe stages)."""
    if cfg.epochs <= 0:
        raise ConfigError(f"epochs must be > 0, got {cfg.epochs}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ConfigError(f"max_steps must be ≥ 1, got {cfg.max_steps}")
    if not 0 < cfg.learning_rate < 1:
        raise ConfigError(f"learning_rate must be in (0, 1), got {cfg.learning_rate}")
    for name in ("batch_size", "eval_batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be ≥ 1, got {getattr(cfg, name)}")
    if not 8 <= cfg.max_seq_length <= 8192:
        raise ConfigError(f"max_seq_length must be in [8, 8192], got {cfg.max_seq_length}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ConfigError(f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.train_subset is not None and cfg.train_subset < 1:
        raise ConfigError(f"train_subset must be ≥ 1, got {cfg.train_subset}")
    if cfg.eval_every is not None and cfg.eval_every < 1:
        raise ConfigError(f"eval_every must be ≥ 1, got {cfg.eval_every}")


def glue_compute_metrics(task):
    """A ``compute_metrics`` for Trainer: logits → predictions → the task's GLUE metrics."""

    def compute(eval_pred) -> dict[str, float]:
        logits = eval_pred.predictions
        if isinstance(logits, tuple):
            logits = logits[0]
        logits = np.asarray(logits, dtype=np.float32)
        preds = logits.reshape(-1) if task.is_regression else logits.argmax(-1)
        return glue_metrics.compute(list(task.metrics), preds, eval_pred.label_ids)

    return compute


class RunLog(TrainerCallback):
    """Every Trainer log event to log.jsonl; every evaluation to metrics/eval-step*.json."""

    def __init__(self, out: Path):
        self.out = out

    def on_train_begin(self, args, state, control, **kw):
        if state.is_world_process_zero:  # training has begun: the run directory holds work now
            (self.out / "log.jsonl").touch()

    def on_log(self, args, state, control, logs=None, **kw):
        if state.is_world_process_zero and logs:
            with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")
            log.info("step %d: %s", state.global_step, logs)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        if state.is_world_process_zero and metrics:
            write_json(self.out / "metrics" / f"eval-step{state.global_step:06d}.json",
                       {"step": state.global_step, "epoch": state.epoch, **metrics})


class EvaluateAtEnd(TrainerCallback):
    """Evaluate and save at the very last step too, so best-model selection sees the end of
    training even when the step count is not a multiple of the evaluation interval."""

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
            control.should_save = True
        return control


class NumericalGuard(TrainerCallback):
    """Stop before an optimizer step that would apply NaN/inf gradients (a NaN/inf loss gives
    those too): the weights and the last checkpoint stay good, and the user gets one line."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
        if grads and not bool(torch.isfinite(torch.stack([g.detach().abs().amax().float() for g in grads])).all()):
            last = rundir.latest_checkpoint(Path(args.output_dir))
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
            raise NumericalError(f"training diverged at step {state.global_step + 1}: NaN/inf in the loss or "
                                 f"gradients; stopped before updating the weights ({kept}); lower the learning "
                                 "rate or check the data")


def build_callbacks(out: Path, evaluate: bool = True) -> list:
    base = [RunLog(out), NumericalGuard()]
    return base + [EvaluateAtEnd()] if evaluate else base


def training_arguments(cfg: Any, out: Path, n_train: int, evaluate: bool = True, **extra):
    """TrainingArguments shared by fine-tuning and distillation stages. ``evaluate=False``
    (language-model stages, scored by perplexity afterwards): no evaluation during training,
    checkpoints every ``eval_every`` steps (default once per epoch) for resuming, no best-model
    selection."""
    steps_per_epoch = max(1, math.ceil(n_train / cfg.batch_size))
    total = cfg.max_steps or math.ceil(steps_per_epoch * cfg.epochs)
    every = min(cfg.eval_every or steps_per_epoch, total)
    if not evaluate:
        extra = {"eval_strategy": "no", "load_best_model_at_end": False, **extra}
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.learning_rate,
        warmup_steps=int(cfg.warmup_ratio * total),
        weight_decay=cfg.weight_decay,
        bf16=resolve_bf16(cfg.bf16),
        use_cpu=not _has_cuda(),
        seed=cfg.seed,
        data_seed=cfg.seed,
        eval_strategy=extra.pop("eval_strategy", "steps"),
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=2,             # with load_best_model_at_end: the best and the latest
        load_best_model_at_end=extra.pop("load_best_model_at_end", True),
        logging_steps=max(1, min(50, every)),
        report_to="none",
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if getattr(cfg, "group_by_length", False) else "random",
        # kronbit's losses (task and distillation) are means over the local batch; with this left
        # on, the Trainer scales them by the number of processes under DDP, doubling gradients.
        average_tokens_across_devices=False,
        **extra,
    )


def selected_metrics(trainer) -> dict[str, float]:
    """Dev metrics of the model training ended with (the best checkpoint, loaded at the end).
    That checkpoint was evaluated when it was saved, so its logged metrics are reused rather than
    recomputed: a second pass over the dev set costs minutes for a decoder on this CPU and gives
    the same numbers (evaluation is deterministic). Evaluates only when no such entry exists."""
    best = trainer.state.best_model_checkpoint
    if best is not None:
        step = int(Path(best).name.rsplit("-", 1)[-1])
        logged = [e for e in trainer.state.log_history if e.get("step") == step
                  and f"eval_{trainer.args.metric_for_best_model}" in e]
        if logged:
            return {k.removeprefix("eval_"): v for k, v in logged[-1].items() if k.startswith("eval_")}
    return {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def save_model(model, tokenizer, path: Path, meta: dict[str, Any]) -> None:
    """Save an HF model directory atomically: the old directory survives until the new one is whole."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / KRONBIT_META, meta)
