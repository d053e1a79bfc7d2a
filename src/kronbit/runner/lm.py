"""Language-model stages (``method: kngpt2``): KnGPT2's light pre-training with intermediate-layer
distillation, and its layer-drop (DistilGPT2-style) baseline.

Same stage loop as GLUE recipes (``stages.run_stages``); one stage does:

    start from the teacher or an earlier stage → apply this stage's transform (``kron``:
    ``kroneckerize_`` with nearest-Kronecker-product initialisation; ``layerdrop``: keep a subset of
    the blocks, sized to a parameter budget) → perplexity before training → distil on packed text
    blocks (embedding / attention / hidden-state / logits KD plus the LM loss, weights from the
    recipe) → perplexity after → save (a Kronecker student as a compressed checkpoint, rebuilt from
    its transforms; a layer-dropped student as a plain Hugging Face directory).

The teacher is any causal LM ``models.decoders.load_causal_lm`` reads (hub id, directory, GGUF,
``packaged:smollm2``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from transformers import set_seed

from ..core import distributed, rundir
from ..core.errors import ConfigError
from ..core.io import write_json
from ..core.swap import count_parameters
from ..core.transforms import recorded_transforms
from ..data.lm import build_lm_dataset, read_text
from ..distill.mapping import kept_layer_map
from ..distill.trainer import DistillationTrainer
from ..formats.compressed import compressed_dir, load_compressed, save_compressed
from ..formats.meta import read_meta
from ..kron import kroneckerize_
from ..layerdrop import decoder_layers, drop_layers, plan_for_params, resolve_keep
from ..models.decoders import load_causal_lm, load_causal_tokenizer
from ..workflows.console import attach_console
from ..workflows.perplexity import score_perplexity
from ..workflows.ppl_curve import PerplexityAtTokens
from ..workflows.training import build_callbacks, save_model, training_arguments
from .recipe import Recipe, RunMethod, register_run_method
from .stages import check_max_steps, drop_checkpoints, resolve_student, resume_point, run_stages
from .tables import LMStageTable

log = logging.getLogger("kronbit")


def validate(recipe: Recipe) -> None:
    for s in recipe.stages:
        if s.quantized:
            raise ConfigError(f"stage '{s.name}': quantization (w_bits/a_bits) in kngpt2 recipes is not supported; "
                              "use a tspq recipe")
        if s.augment:
            raise ConfigError(f"stage '{s.name}': augment applies to GLUE stages only")
        if s.attention is not None:
            raise ConfigError(f"stage '{s.name}': attention applies to quantized GLUE stages only")
        if s.distill_from != "teacher":
            raise ConfigError(f"stage '{s.name}': distill_from applies to GLUE stages only (language-model "
                              "stages distil the teacher)")
        if s.kron is not None and s.layerdrop is not None:
            raise ConfigError(f"stage '{s.name}': choose kron or layerdrop, not both")


def describe(recipe: Recipe, index: int) -> str:
    s = recipe.stages[index]
    what = ("Kronecker decomposition" if s.kron is not None else "layer drop" if s.layerdrop is not None
            else "distillation")
    return f"{s.name} ({what}), from {recipe.resolve_init(index)}"


def load_student(init: str | Path):
    """A causal LM from the teacher reference or an earlier stage (compressed or plain)."""
    cdir = compressed_dir(init)
    return load_compressed(cdir) if cdir is not None else load_causal_lm(init)


def lm_root(data_dir: str | None) -> Path | None:
    """The data root holding ``lm/``: ``data_dir`` itself, or its parent when it is the GLUE folder
    beside it (the CLI's --data-dir default); None → the default data root."""
    if data_dir in (None, "hub"):
        return None
    d = Path(data_dir)
    for cand in (d, d.parent):
        if (cand / "lm").is_dir():
            return cand
    return d


def run(recipe: Recipe, *, model: str, task: str | None = None, data_dir: str | None, output_dir: str,
        max_steps: int | None = None, overwrite: bool = False, resume: bool = False,
        recipe_source: str | None = None, student: str | Path | None = None) -> dict[str, Any]:
    """Run a ``method: kngpt2`` recipe; returns the stage table. ``student``: where stages with
    ``init_from: student`` start (e.g. more pre-training of an earlier run's student)."""
    if task:
        raise ConfigError(f"recipe '{recipe.name}' (method {recipe.method}) trains on text, not on a GLUE task; "
                          "drop --task")
    student_dir = resolve_student(recipe, student)
    check_max_steps(max_steps)
    root = lm_root(data_dir)
    tokenizer = load_causal_tokenizer(model)
    eval_text = read_text(recipe.perplexity.text, root)  # fail on a missing file before any work
    train_ds = build_lm_dataset(recipe.lm, tokenizer, root=root)
    check_curve_marks(recipe, len(train_ds), train_ds.block_size, max_steps)
    teacher = load_causal_lm(model, attn_implementation="eager" if recipe.kd.needs_attention else None)
    out = rundir.prepare(output_dir, {"command": "run", "recipe_source": recipe_source, "model": model,
                                      "student": student_dir and str(student_dir), "data_dir": str(data_dir),
                                      "max_steps": max_steps, "recipe": recipe.to_dict()},
                         overwrite=overwrite, resume=resume)
    table = LMStageTable(out)
    teacher_row = out / "teacher.json"
    if teacher_row.is_file():
        table.teacher = json.loads(teacher_row.read_text())
    else:
        table.teacher = {"params": count_parameters(teacher),
                         **score_perplexity(teacher, tokenizer, eval_text, recipe.perplexity)}
        distributed.on_main(write_json, teacher_row, table.teacher)

    def run_one(i: int, init_dir, sdir: Path) -> dict[str, Any]:
        return run_lm_stage(recipe, i, init=init_dir, teacher=teacher, tokenizer=tokenizer, train_ds=train_ds,
                            eval_text=eval_text, stage_out=sdir, max_steps=max_steps, source=model)

    run_stages(recipe, out, table, model, run_one, student_dir)
    return table.as_dict()


def _transform(recipe: Recipe, index: int, student, kept_before: list[int] | None) -> tuple[Any, dict[str, Any]]:
    """This stage's transform on its starting model: (student, facts for the stage row)."""
    stage = recipe.stages[index]
    info: dict[str, Any] = {}
    if stage.kron is not None:
        report = kroneckerize_(student, stage.kron)
        info["kron_layers"] = len(report.layers)
        errors = [r.relative_error for r in report.layers if r.relative_error is not None]
        if errors:
            info["kron_mean_rel_error"] = round(sum(errors) / len(errors), 4)
    if stage.layerdrop is not None:
        ld = stage.layerdrop
        keep = ld.keep
        if ld.target_params is not None:
            plan = plan_for_params(student, ld.target_params, ld.tolerance)
            keep = plan.keep
            info["layerdrop_plan"] = plan.describe()
            if not plan.within_tolerance:
                log.warning("stage %s: %s", stage.name, plan.describe())
        # Indices into the starting model's blocks; for a start that was itself layer-dropped,
        # into the teacher's blocks through its own kept list.
        keep = resolve_keep(keep, len(decoder_layers(student)[1]))
        student = drop_layers(student, keep)
        info["kept_layers"] = [kept_before[k] for k in keep] if kept_before else keep
    elif kept_before:
        info["kept_layers"] = kept_before
    return student, info


def run_lm_stage(recipe: Recipe, index: int, *, init, teacher, tokenizer, train_ds, eval_text: str,
                 stage_out: Path, max_steps: int | None, source: str) -> dict[str, Any]:
    stage = recipe.stages[index]
    settings = recipe.train_settings(stage, max_steps)
    kd = recipe.kd_config(stage)
    set_seed(settings.seed)
    start = time.time()
    ckpt = resume_point(stage_out)

    # A start that was itself layer-dropped: its blocks' indices in the teacher.
    kept_before = read_meta(init).get("kept_layers") if Path(init).is_dir() else None
    student, info = _transform(recipe, index, load_student(init), kept_before)
    if "kept_layers" in info:
        kd = kd.replace(layer_map=kept_layer_map(kd.layer_map, info["kept_layers"]))
    if kd.needs_attention:
        student.set_attn_implementation("eager")
    params = count_parameters(student)
    before = score_perplexity(student, tokenizer, eval_text, recipe.perplexity)
    student.train()
    args = training_arguments(settings, stage_out, len(train_ds), evaluate=False)
    callbacks = build_callbacks(stage_out, evaluate=False)
    curve = _curve_callback(recipe, settings, train_ds, tokenizer, eval_text, stage_out)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=train_ds,
                                  callbacks=callbacks + ([curve] if curve else []), teacher=teacher, kd=kd)
    attach_console(trainer, stage.name)
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    after = score_perplexity(trainer.model, tokenizer, eval_text, recipe.perplexity)
    meta = {"kind": "student", "stage": stage.name, "method": recipe.method, "recipe": recipe.name,
            "source": str(source), "ppl": after["ppl"]}
    if "kept_layers" in info:
        # Which teacher block each student block came from: later stages (more distillation,
        # GLUE fine-tuning) map their layer losses with it.
        meta["kept_layers"] = info["kept_layers"]
    distributed.on_main(_save_student, trainer.model, tokenizer, stage_out, meta)
    return {"stage": stage.name, "kind": "kron" if stage.kron is not None else
            "layerdrop" if stage.layerdrop is not None else "distill", "params": params,
            "ppl_before": before["ppl"], "ppl": after["ppl"], "ppl_tokens": after["ppl_tokens"],
            "train_tokens": int(trainer.state.global_step * settings.batch_size * train_ds.block_size),
            "steps": trainer.state.global_step, "wall_time_s": round(time.time() - start, 1),
            **({"ppl_curve": curve.curve()} if curve else {}), **info}


def tokens_per_step(batch_size: int, block_size: int) -> int:
    return batch_size * block_size * distributed.world_size()


def check_curve_marks(recipe: Recipe, n_blocks: int, block_size: int, max_steps: int | None) -> None:
    """A perplexity mark some stage never reaches is the user's mistake: said before any work."""
    marks = recipe.perplexity.at_tokens or []
    for stage in recipe.stages:
        settings = recipe.train_settings(stage, max_steps)
        per_step = tokens_per_step(settings.batch_size, block_size)
        steps = settings.max_steps or math.ceil(math.ceil(n_blocks / (per_step // block_size)) * settings.epochs)
        beyond = [m for m in marks if m > steps * per_step]
        if beyond:
            raise ConfigError(f"stage '{stage.name}': perplexity.at_tokens {beyond} lie beyond the stage's "
                              f"{steps * per_step} training tokens ({steps} steps × {per_step}); raise the stage's "
                              "max_steps or epochs, or drop those marks")


def _curve_callback(recipe: Recipe, settings, train_ds, tokenizer, eval_text: str,
                    stage_out: Path) -> PerplexityAtTokens | None:
    """The perplexity-at-marks callback when the recipe asks for it (marks checked by ``run``)."""
    if not recipe.perplexity.at_tokens:
        return None
    return PerplexityAtTokens(recipe.perplexity.at_tokens, tokens_per_step(settings.batch_size, train_ds.block_size),
                              lambda m: score_perplexity(m, tokenizer, eval_text, recipe.perplexity),
                              stage_out, distributed.on_main)


def _save_student(model, tokenizer, stage_out: Path, meta: dict[str, Any]) -> None:
    transforms = recorded_transforms(model)
    if transforms:
        save_compressed(model, tokenizer, stage_out / "model", meta, transforms)
    else:
        save_model(model, tokenizer, stage_out / "model", meta)
    drop_checkpoints(stage_out)


LM = register_run_method(RunMethod(name="kngpt2", validate=validate, run=run, describe=describe, needs_task=False))
