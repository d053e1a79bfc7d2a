"""GLUE stages: distil a student (quantized or not) from a fine-tuned teacher on one GLUE task.

Two-stage progressive quantization (TSPQ) is a recipe of this method: stage 1 lowers the weight
bits step by step with full-precision activations, each step starting from the one before; stage
2 quantizes activations too. KnGPT2's GLUE fine-tuning is another: its first stage starts from a
student given on the command line (``init_from: student``, e.g. a Kronecker decoder after
language-model pre-training), stays at full precision (32 bits) and distils from the teacher.
``method: glue`` is the name; ``tspq`` is the same method under the name older recipes use.

One stage: load the student from its init checkpoint (a language model gets a classification
head) → quantize it, or change the bits of an already quantized one in place (the progressive
schedule) → distil with the Hugging Face Trainer (``DistillationTrainer``) → save it as a
compressed checkpoint, rebuilt later from its recorded transforms.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from transformers import DataCollatorWithPadding, set_seed

from ..core import distributed, rundir
from ..core.errors import ConfigError, KronbitError
from ..core.hardware import resolve_bf16
from ..core.transforms import recorded_transforms
from ..data.augment import augment_examples, check_available
from ..data.features import sorted_by_length, subsample, tokenize
from ..data.glue import get_task, load_split
from ..distill.mapping import kept_layer_map
from ..distill.trainer import DistillationTrainer
from ..formats.compressed import compressed_dir, save_compressed
from ..formats.load import load_model
from ..formats.meta import KRONBIT_META, read_meta
from ..models.encoders import load_classifier, load_tokenizer
from ..models.resolve import resolve_model
from ..quant import SCALE_PARAM_SUFFIXES, quantize_, set_bits_
from ..quant.api import check_quant_options, quant_summary, set_attention_
from ..quant.size import estimate_size
from ..workflows.console import attach_console, say
from ..workflows.finetune import FinetuneConfig, finetune
from ..workflows.training import build_callbacks, glue_compute_metrics, selected_metrics, training_arguments
from .recipe import Recipe, RunMethod, TrainSettings, register_run_method
from .stages import (cap_steps, check_max_steps, drop_checkpoints, resolve_student, resume_point, run_stages,
                     stage_dir)
from .tables import GlueStageTable
from .teacher_outputs import teacher_cache_for

log = logging.getLogger("kronbit")


def validate(recipe: Recipe) -> None:
    for s in recipe.stages:
        if s.kron is not None or s.layerdrop is not None:
            raise ConfigError(f"stage '{s.name}': kron / layerdrop stages need method: kngpt2 (language-model "
                              "stages); GLUE stages fine-tune a student decomposed by one (init_from: student)")
        if s.quantized:
            recipe.quant_config(s)  # the bits against the chosen quantizers
        elif s.attention is not None:
            raise ConfigError(f"stage '{s.name}': attention applies to quantized stages (set w_bits / a_bits)")


def describe(recipe: Recipe, index: int) -> str:
    s = recipe.stages[index]
    bits = f"W{s.w_bits}, A{s.a_bits}" if s.quantized else "full precision"
    if s.quantized and quant_summary(recipe.quant_config(s))["attention"] == "binary":
        bits += ", binary attention"
    kd = recipe.resolve_distill(index)
    return (f"{s.name} ({bits}{', augmented data' if s.augment else ''}), from {recipe.resolve_init(index)}"
            + (f", distilling {kd}" if kd != "teacher" else ""))


def run(recipe: Recipe, *, model: str, task: str | None, data_dir: str, output_dir: str,
        max_steps: int | None = None, overwrite: bool = False, resume: bool = False,
        recipe_source: str | None = None, student: str | Path | None = None) -> dict[str, Any]:
    """Run every stage of a GLUE recipe on ``task``; returns the stage table."""
    student_dir = resolve_student(recipe, student)
    if not task:
        raise ConfigError(f"recipe '{recipe.name}' (method {recipe.method}) needs --task")
    check_max_steps(max_steps)
    t = get_task(task)
    model_path = resolve_model(model)
    train_ex, dev_ex = load_split(t, data_dir, "train"), load_split(t, data_dir, "dev")
    if compressed_dir(model_path) is not None:
        raise KronbitError(f"{model}: is a compressed model; the teacher must be full precision")
    if any(s.augment for s in recipe.stages):
        check_available(recipe.augment, model_path)  # fail before any training
    # Every check that can fail on the user's input is above: only now is the directory made.
    out = rundir.prepare(output_dir, {"command": "run", "recipe_source": recipe_source, "model": model,
                                      "student": student_dir and str(student_dir), "task": t.name,
                                      "data_dir": str(data_dir), "max_steps": max_steps,
                                      "recipe": recipe.to_dict()}, overwrite=overwrite, resume=resume)
    with rundir.discarded_if_unused(out, resume):  # e.g. a damaged teacher found while loading it
        teacher_dir = _teacher(recipe, model, model_path, t, data_dir, out, max_steps)
        table = GlueStageTable(out, t, read_meta(teacher_dir).get("dev_metrics", {}))
        caches: dict = {}  # stages on the same training set share the teacher's outputs

        def run_one(i: int, init_dir: Path, sdir: Path) -> dict[str, Any]:
            return run_stage(recipe, i, init_dir=init_dir, teacher_dir=teacher_dir, stage_out=sdir, task=t,
                             train_ex=train_ex, dev_ex=dev_ex, max_steps=max_steps, run_out=out,
                             teacher_caches=caches)

        run_stages(recipe, out, table, teacher_dir, run_one, student_dir)
    return table.as_dict()


def _teacher(recipe: Recipe, model: str, model_path: str, task, data_dir: str, out: Path,
             max_steps: int | None) -> Path:
    """The fine-tuned teacher: the given model if it is one for this task, else fine-tuned here
    first (as its own resumable step) with the recipe's ``teacher`` settings."""
    meta = read_meta(model_path) if Path(model_path).is_dir() else {}
    if meta.get("kind") == "teacher" and meta.get("task") == task.name:
        return Path(model_path)
    if not (out / "teacher" / "metrics.json").is_file():
        say(f"teacher: {model} is not yet fine-tuned on {task.name}; fine-tuning it first (recipe section 'teacher')")
        shared = set(FinetuneConfig.field_names()) & set(TrainSettings.field_names())
        settings = {k: v for k, v in recipe.teacher.to_dict().items() if k in shared}
        settings["max_steps"] = cap_steps(recipe.teacher.max_steps, max_steps)
        fcfg = FinetuneConfig(model=model, task=task.name, output_dir=str(out / "teacher"), data_dir=str(data_dir),
                              **settings)
        ckpt = rundir.latest_checkpoint(out / "teacher" / "checkpoints")
        finetune(fcfg, overwrite=ckpt is None, resume=ckpt is not None)
        rundir.attach_log_file(out / "train.log")
    return out / "teacher" / "model"


def _student(recipe: Recipe, index: int, init_dir: Path, task):
    """The stage's student: loaded from its init checkpoint, then quantized (or re-bitted)."""
    stage = recipe.stages[index]
    student = load_model(init_dir, task)  # a language model (a KnGPT2 student) gets a new head
    recorded = next((t["config"] for t in recorded_transforms(student) if t["kind"] == "quant"), None)
    if recorded is not None:
        # Same model, new bits: the progressive schedule lowers bits on the trained modules. It
        # keeps the options the student was quantized with, so they must be the recipe's.
        config = recipe.quant_config(stage)  # with the stage's own attention, if it sets one
        if recorded.get("attention", "full") != config.attention:
            # Attention, like the bits, is what this stage trains at (it acts only at a_bits 1), so
            # this stage's, its own or the recipe's, is set before the other options are checked:
            # a schedule that switches it (full-precision W1A1, then binary) needs that, and so
            # does a student from a run that differed only there (W1A1 both ways sharing stages).
            set_attention_(student, config.attention)
        check_quant_options(student, config, f"stage '{stage.name}'")
        set_bits_(student, w_bits=stage.w_bits, a_bits=stage.a_bits)
    elif stage.quantized:  # a full-precision stage (decoder GLUE fine-tuning): nothing to quantize
        quantize_(student, recipe.quant_config(stage))
    return student


def _train_set(recipe: Recipe, index: int, examples, task, tokenizer, settings, teacher_dir: Path, run_out: Path):
    stage = recipe.stages[index]
    examples = subsample(examples, settings.train_subset, settings.seed)
    if stage.augment:
        acfg = recipe.augment
        if acfg.cache_dir is None:  # cache beside the run, so a resumed run does not redo it
            acfg = acfg.replace(cache_dir=str(run_out / "augment-cache"))
        examples = augment_examples(examples, task, acfg, str(teacher_dir))
    return tokenize(examples, tokenizer, task, settings.max_seq_length).with_example_ids()


def run_stage(recipe: Recipe, index: int, *, init_dir: Path, teacher_dir: Path, stage_out: Path, task,
              train_ex, dev_ex, max_steps, run_out: Path, teacher_caches: dict | None = None) -> dict[str, Any]:
    stage = recipe.stages[index]
    settings = recipe.train_settings(stage, max_steps)
    set_seed(settings.seed)
    start = time.time()
    ckpt = resume_point(stage_out)

    tokenizer = load_tokenizer(teacher_dir)
    student = _student(recipe, index, init_dir, task)
    # A layer-dropped student learns each block from the teacher block it was copied from.
    kept = read_meta(init_dir).get("kept_layers")
    kd = recipe.kd_config(stage)
    kd = kd.replace(layer_map=kept_layer_map(kd.layer_map, kept))
    teacher, kd_dir = _kd_teacher(recipe, index, teacher_dir, run_out, task)
    train_ds = _train_set(recipe, index, train_ex, task, tokenizer, settings, teacher_dir, run_out)
    dev_ds = sorted_by_length(tokenize(dev_ex, tokenizer, task, settings.max_seq_length))
    args = training_arguments(settings, stage_out, len(train_ds), metric_for_best_model=task.primary_metric,
                              greater_is_better=True)
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=glue_compute_metrics(task),
        callbacks=build_callbacks(stage_out), teacher=teacher, kd=kd, regression=task.is_regression,
        lr_multipliers=_scale_multipliers(settings.scale_lr_multiplier))
    trainer.teacher_cache = teacher_cache_for(teacher_caches, kd_dir, trainer.teacher, train_ds,
                                              trainer.data_collator, kd, settings)
    attach_console(trainer, stage.name)
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    metrics = selected_metrics(trainer)
    meta = {"kind": "compressed", "task": task.name, "stage": stage.name, "method": recipe.method,
            "recipe": recipe.name, "dev_metrics": {m: metrics[m] for m in task.metrics},
            "eval": {"bf16": resolve_bf16(settings.bf16), "batch_size": settings.eval_batch_size,
                     "max_seq_length": settings.max_seq_length},
            **({"kept_layers": kept} if kept else {})}
    # What the student went through (replayed on load, then quantized or re-bitted here), as the
    # swap APIs recorded it: a rebuild from this list gives the same modules.
    distributed.on_main(_save_stage, trainer.model, tokenizer, stage_out, meta, recorded_transforms(trainer.model))
    size = estimate_size(trainer.model)
    return {"stage": stage.name, "w_bits": stage.w_bits, "a_bits": stage.a_bits, "attention": size["attention"],
            "augment": stage.augment, **({"distill_from": recipe.resolve_distill(index)} if kd_dir != teacher_dir else {}),
            **{m: metrics[m] for m in task.metrics}, "primary_metric": task.primary_metric,
            "size_mb": round(size["total_bytes"] / 1e6, 3), "size_note": size["note"],
            "train_examples": len(train_ds), "steps": trainer.state.global_step,
            "wall_time_s": round(time.time() - start, 1)}


def _kd_teacher(recipe: Recipe, index: int, teacher_dir: Path, run_out: Path, task):
    """The model stage ``index`` distils (``distill_from``) and its directory: the fine-tuned
    teacher, or an earlier stage's student as it finished (quantized as it was trained)."""
    source = recipe.resolve_distill(index)
    if source == "teacher":
        return load_classifier(teacher_dir), teacher_dir
    kd_dir = stage_dir(run_out, recipe.index_of(source), source) / "model"
    if not (kd_dir / KRONBIT_META).is_file():
        raise ConfigError(f"stage '{recipe.stages[index].name}': distill_from '{source}' has no finished model "
                          f"in {kd_dir.parent} (it runs earlier in the same run)")
    return load_model(kd_dir, task).eval(), kd_dir


def _save_stage(model, tokenizer, stage_out: Path, meta: dict[str, Any], transforms: list) -> None:
    save_compressed(model, tokenizer, stage_out / "model", meta, transforms)
    drop_checkpoints(stage_out)


def _scale_multipliers(mult: float) -> dict[str, float] | None:
    return None if mult == 1.0 else {suffix: mult for suffix in SCALE_PARAM_SUFFIXES}


GLUE = register_run_method(RunMethod(name="glue", aliases=("tspq",), validate=validate, run=run,
                                     describe=describe))
