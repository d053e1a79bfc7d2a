"""Fine-tune a full-precision model on a GLUE task: the teacher every compression starts from.

Training runs on Hugging Face ``Trainer``: seeded, optional bf16 autocast on CPU, dynamic padding,
evaluation every epoch, best checkpoint selected by the task's primary metric.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import DataCollatorWithPadding, set_seed

from .. import __version__
from ..core import distributed, rundir
from ..core.hardware import resolve_bf16
from ..core.io import write_json
from ..data.features import sorted_by_length, subsample, tokenize
from ..data.glue import get_task, is_hub, load_split
from ..models.encoders import load_classifier, load_tokenizer
from ..distill.trainer import SameEvalTrainer
from ..models.resolve import resolve_model
from .console import attach_console
from .training import (TrainingOptions, build_callbacks, check_training, glue_compute_metrics, save_model,
                       selected_metrics, training_arguments)

log = logging.getLogger("kronbit")


@dataclass(kw_only=True)
class FinetuneConfig(TrainingOptions):
    model: str
    task: str
    output_dir: str
    data_dir: str = "hub"          # a GLUE TSV root (CoLA/, SST-2/, ...) or "hub"
    keep_checkpoints: bool = False   # keep Trainer checkpoints after a successful run
    trust_remote_code: bool = False

    def validate(self) -> None:
        get_task(self.task)
        check_training(self)


def finetune(cfg: FinetuneConfig, *, overwrite: bool = False, resume: bool = False) -> dict[str, float]:
    """Fine-tune ``cfg.model`` on ``cfg.task``; returns the selected model's dev metrics."""
    task = get_task(cfg.task)
    model_path = resolve_model(cfg.model)  # fail on a bad path before creating anything
    train_ex = load_split(task, cfg.data_dir, "train")
    dev_ex = load_split(task, cfg.data_dir, "dev")
    out = rundir.prepare(cfg.output_dir, {"command": "finetune", **cfg.to_dict()},
                         overwrite=overwrite, resume=resume)
    with rundir.discarded_if_unused(out, resume):  # e.g. a damaged model found while loading it
        return _finetune(cfg, task, model_path, train_ex, dev_ex, out, resume)


def _finetune(cfg: FinetuneConfig, task, model_path: str, train_ex, dev_ex, out: Path, resume: bool) -> dict:
    set_seed(cfg.seed)
    start = time.time()
    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.trust_remote_code)
    model = load_classifier(model_path, task, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_ex = subsample(train_ex, cfg.train_subset, cfg.seed)
    train_ds = tokenize(train_ex, tokenizer, task, cfg.max_seq_length)
    dev_ds = sorted_by_length(tokenize(dev_ex, tokenizer, task, cfg.max_seq_length))
    log.info("task %s: %d train / %d dev examples; model %s", task.name, len(train_ds), len(dev_ds), model_path)

    args = training_arguments(cfg, out, len(train_ds), metric_for_best_model=task.primary_metric,
                              greater_is_better=True)
    trainer = SameEvalTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
                      data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=glue_compute_metrics(task), callbacks=build_callbacks(out))
    attach_console(trainer, f"finetune {task.name}")
    ckpt = rundir.latest_checkpoint(out / "checkpoints") if resume else None
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    metrics = selected_metrics(trainer)
    wall = time.time() - start
    result = {"task": task.name, "split": "dev", "primary_metric": task.primary_metric,
              **{m: metrics[m] for m in task.metrics},
              "best_checkpoint": trainer.state.best_model_checkpoint and
              Path(trainer.state.best_model_checkpoint).name,
              "train_examples": len(train_ds), "steps": trainer.state.global_step,
              "bf16": resolve_bf16(cfg.bf16), "wall_time_s": round(wall, 1)}
    meta = {"kronbit_version": __version__, "kind": "teacher", "task": task.name,
            "source_model": str(cfg.model), "data": "hub" if is_hub(cfg.data_dir) else "glue-tsv",
            "dev_metrics": {m: metrics[m] for m in task.metrics},
            # how dev_metrics were computed: kronbit eval's defaults for this model
            "eval": {"bf16": resolve_bf16(cfg.bf16), "batch_size": cfg.eval_batch_size,
                     "max_seq_length": cfg.max_seq_length}}
    def save() -> None:  # under torchrun: written once, by the main process
        save_model(trainer.model, tokenizer, out / "model", meta)
        write_json(out / "metrics.json", result)
        if not cfg.keep_checkpoints:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)

    distributed.on_main(save)
    log.info("done in %.0fs: %s", wall, result)
    return result

