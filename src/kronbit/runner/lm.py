"""Language-model stages of the stage runner: KnGPT2's light pre-training with intermediate-layer
distillation, and its layer-drop (DistilGPT2-style) baseline.

A ``method: kngpt2`` recipe runs through the same stage loop as TSPQ (``recipe.run_stages``); only
what one stage does differs:

    start from the teacher or an earlier stage → apply this stage's transform (``kron``:
    ``kroneckerize_`` with nearest-Kronecker-product initialisation; ``layerdrop``: keep a subset of
    the blocks, sized to a parameter budget) → perplexity before training → distil on packed text
    blocks (embedding / attention / hidden-state / logits KD plus the LM loss, weights from the
    recipe) → perplexity after → save (a Kronecker student as a compressed checkpoint, rebuilt from
    its transforms; a layer-dropped student as a plain Hugging Face directory).

The teacher is any causal LM ``kronbit.decoders.load_causal_lm`` reads (hub id, directory, GGUF,
``packaged:smollm2``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import rundir
from .config import Config
from .errors import ConfigError
from .recipe import StageRows

log = logging.getLogger("kronbit")


@dataclass
class LayerDropConfig(Config):
    """Which blocks a layer-dropped student keeps: an explicit ``keep`` list, a number of blocks
    (spread evenly), or ``target_params`` (the evenly spread count closest to that many
    parameters — e.g. the Kronecker student's, for an equal-size baseline)."""

    keep: list[int] | int | None = None
    target_params: int | None = None
    tolerance: float = 0.02  # reported (and warned about) when the closest count misses it

    def validate(self) -> None:
        if (self.keep is None) == (self.target_params is None):
            raise ConfigError("layerdrop: give exactly one of keep (a list or a count) or target_params")
        if self.target_params is not None and self.target_params <= 0:
            raise ConfigError(f"layerdrop.target_params must be positive, got {self.target_params}")


@dataclass
class PerplexityConfig(Config):
    """How stages are scored: sliding-window perplexity on a text (a budget of its first tokens)."""

    text: str = "wikitext2-test"
    max_length: int = 512
    stride: int = 256
    max_tokens: int | None = 40_000
    batch_size: int = 4
    bf16: bool = True

    def validate(self) -> None:
        if self.max_length < 2 or not 0 < self.stride <= self.max_length:
            raise ConfigError(f"perplexity: need max_length ≥ 2 and 0 < stride ≤ max_length "
                              f"(got {self.max_length}, {self.stride})")


def validate_lm_recipe(recipe) -> None:
    from .data.lm import LMDataConfig
    from .kron import KroneckerConfig

    if not recipe.stages:
        raise ConfigError("a recipe needs at least one stage")
    LMDataConfig.from_dict({"files": ["wikitext2-valid", "tinyshakespeare"], **recipe.lm}, where="lm")
    PerplexityConfig.from_dict(recipe.perplexity, where="perplexity")
    seen: list[str] = []
    for s in recipe.stages:
        recipe.check_stage_order(s, seen)
        if s.w_bits != 32 or s.a_bits != 32:
            raise ConfigError(f"stage '{s.name}': quantization (w_bits/a_bits) in kngpt2 recipes is not supported; "
                              "use a tspq recipe")
        if s.augment:
            raise ConfigError(f"stage '{s.name}': augment applies to GLUE stages only")
        if s.kron is not None and s.layerdrop is not None:
            raise ConfigError(f"stage '{s.name}': choose kron or layerdrop, not both")
        if s.kron is not None:
            KroneckerConfig.from_dict(s.kron, where=f"stage '{s.name}' kron")
        if s.layerdrop is not None:
            LayerDropConfig.from_dict(s.layerdrop, where=f"stage '{s.name}' layerdrop")
        if s.kd:
            recipe.kd_config(s)
        seen.append(s.name)


def _lm_data_config(recipe):
    from .data.lm import LMDataConfig

    return LMDataConfig.from_dict({"files": ["wikitext2-valid", "tinyshakespeare"], "block_size": 256, **recipe.lm},
                                  where="lm")


def load_student(init: str | Path):
    """A causal LM from the teacher reference or an earlier stage (compressed or plain)."""
    from .checkpoint import compressed_dir, load_compressed
    from .decoders import load_causal_lm

    cdir = compressed_dir(init)
    if cdir is not None:
        return load_compressed(cdir)
    return load_causal_lm(init)


def run_lm_recipe(recipe, *, model: str, data_dir: str | None, output_dir: str, max_steps: int | None = None,
                  overwrite: bool = False, resume: bool = False, recipe_source: str | None = None,
                  student: Path | None = None) -> dict[str, Any]:
    """Run a ``method: kngpt2`` recipe; returns the stage table. ``student``: where stages with
    ``init_from: student`` start (e.g. more pre-training of an earlier run's student)."""
    from .data.lm import build_lm_dataset, read_text
    from .decoders import load_causal_lm, load_causal_tokenizer
    from .recipe import run_stages

    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--max-steps must be ≥ 1, got {max_steps}")
    lm_cfg = _lm_data_config(recipe)
    ppl_cfg = PerplexityConfig.from_dict(recipe.perplexity, where="perplexity")
    root = lm_root(data_dir)
    tokenizer = load_causal_tokenizer(model)
    eval_text = read_text(ppl_cfg.text, root)  # fail on a missing file before any work
    teacher = load_causal_lm(model, attn_implementation="eager" if recipe.kd.needs_attention else None)
    train_ds = build_lm_dataset(lm_cfg, tokenizer, root=root)

    out = rundir.prepare(output_dir, {"command": "run", "recipe_source": recipe_source, "model": model,
                                      "student": student and str(student), "data_dir": str(data_dir),
                                      "max_steps": max_steps,
                                      "recipe": recipe.to_dict()}, overwrite=overwrite, resume=resume)
    table = LMStageTable(out)
    teacher_row = out / "teacher.json"
    if teacher_row.is_file():
        table.teacher = json.loads(teacher_row.read_text())
    else:
        from .modules import count_parameters

        table.teacher = {"params": count_parameters(teacher),
                         **score_perplexity(teacher, tokenizer, eval_text, ppl_cfg)}
        from . import distributed
        from .io import write_json

        distributed.on_main(write_json, teacher_row, table.teacher)

    def run_one(i: int, init_dir, sdir: Path) -> dict[str, Any]:
        return run_lm_stage(recipe, i, init=init_dir, teacher=teacher, tokenizer=tokenizer, train_ds=train_ds,
                            eval_text=eval_text, ppl_cfg=ppl_cfg, stage_out=sdir, max_steps=max_steps,
                            source=model)

    run_stages(recipe, out, table, model, run_one, student)
    return table.as_dict()


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


def score_perplexity(model, tokenizer, text: str, cfg: PerplexityConfig) -> dict[str, Any]:
    from .perplexity import perplexity

    r = perplexity(model.eval(), tokenizer, text, max_length=cfg.max_length, stride=cfg.stride,
                   batch_size=cfg.batch_size, bf16=cfg.bf16, max_tokens=cfg.max_tokens, progress=False)
    return {"ppl": r["ppl"], "ppl_tokens": r["tokens_scored"]}


def run_lm_stage(recipe, index: int, *, init, teacher, tokenizer, train_ds, eval_text: str,
                 ppl_cfg: PerplexityConfig, stage_out: Path, max_steps: int | None, source: str) -> dict[str, Any]:
    from transformers import set_seed

    from .checkpoint import save_compressed
    from .distill.trainer import DistillationTrainer
    from .finetune import build_callbacks, save_model, training_arguments
    from .distill.mapping import kept_layer_map
    from .kron import KroneckerConfig, kroneckerize_
    from .layerdrop import drop_layers, plan_for_params
    from .models import read_meta
    from .modules import count_parameters, recorded_transforms
    from .recipe import resume_point

    stage = recipe.stages[index]
    settings = recipe.train_settings(stage, max_steps)
    kd = recipe.kd_config(stage)
    set_seed(settings.seed)
    start = time.time()
    ckpt = resume_point(stage_out)

    student = load_student(init)
    # A start that was itself layer-dropped: its blocks' indices in the teacher.
    kept_before = read_meta(init).get("kept_layers") if Path(init).is_dir() else None
    info: dict[str, Any] = {}
    if stage.kron is not None:
        report = kroneckerize_(student, KroneckerConfig.from_dict(stage.kron, where=f"stage '{stage.name}' kron"))
        info["kron_layers"] = len(report.layers)
        errors = [r.relative_error for r in report.layers if r.relative_error is not None]
        if errors:
            info["kron_mean_rel_error"] = round(sum(errors) / len(errors), 4)
    if stage.layerdrop is not None:
        ld = LayerDropConfig.from_dict(stage.layerdrop, where=f"stage '{stage.name}' layerdrop")
        keep = ld.keep
        if ld.target_params is not None:
            plan = plan_for_params(student, ld.target_params, ld.tolerance)
            keep = plan.keep
            info["layerdrop_plan"] = plan.describe()
            if not plan.within_tolerance:
                log.warning("stage %s: %s", stage.name, plan.describe())
        from .layerdrop import decoder_layers, resolve_keep

        # Indices into the starting model's blocks; for a start that was itself layer-dropped,
        # into the teacher's blocks through its own kept list.
        keep = resolve_keep(keep, len(decoder_layers(student)[1]))
        student = drop_layers(student, keep)
        info["kept_layers"] = [kept_before[k] for k in keep] if kept_before else keep
    elif kept_before:
        info["kept_layers"] = kept_before
    if "kept_layers" in info:
        kd = kd.replace(layer_map=kept_layer_map(kd.layer_map, info["kept_layers"]))
    if kd.needs_attention:
        student.set_attn_implementation("eager")
    params = count_parameters(student)
    before = score_perplexity(student, tokenizer, eval_text, ppl_cfg)
    student.train()
    args = training_arguments(settings, stage_out, len(train_ds), evaluate=False)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=train_ds, callbacks=build_callbacks(stage_out, evaluate=False),
                                  teacher=teacher, kd=kd)
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    after = score_perplexity(trainer.model, tokenizer, eval_text, ppl_cfg)
    meta = {"kind": "student", "stage": stage.name, "method": recipe.method, "recipe": recipe.name,
            "source": str(source), "ppl": after["ppl"]}
    if "kept_layers" in info:
        # Which teacher block each student block came from: later stages (more distillation,
        # GLUE fine-tuning) map their layer losses with it.
        meta["kept_layers"] = info["kept_layers"]
    transforms = recorded_transforms(trainer.model)

    def save() -> None:
        if transforms:
            save_compressed(trainer.model, tokenizer, stage_out / "model", meta, transforms)
        else:
            save_model(trainer.model, tokenizer, stage_out / "model", meta)
        shutil.rmtree(stage_out / "checkpoints", ignore_errors=True)

    from . import distributed

    distributed.on_main(save)
    return {"stage": stage.name, "kind": "kron" if stage.kron is not None else
            "layerdrop" if stage.layerdrop is not None else "distill", "params": params,
            "ppl_before": before["ppl"], "ppl": after["ppl"], "ppl_tokens": after["ppl_tokens"],
            "train_tokens": int(trainer.state.global_step * settings.batch_size * train_ds.block_size),
            "steps": trainer.state.global_step, "wall_time_s": round(time.time() - start, 1), **info}


class LMStageTable(StageRows):
    """The stage table of a language-model recipe: parameters, perplexity before/after, tokens."""

    def __init__(self, out: Path):
        super().__init__(out)
        self.teacher: dict[str, Any] = {}

    def as_dict(self) -> dict[str, Any]:
        return {"metric": "ppl", "teacher": self.teacher, "stages": self.rows}

    def write(self) -> None:
        from .io import write_json, write_text

        write_json(self.out / "stages.json", self.as_dict())
        lines = ["# Stage table (perplexity, lower is better)", "",
                 "| stage | kind | params (M) | ppl before | ppl after | train tokens | steps | wall s |",
                 "|---|---|---|---|---|---|---|---|"]
        if self.teacher:
            lines.append(f"| teacher |  | {self.teacher['params'] / 1e6:.1f} |  | {self.teacher['ppl']:.2f} |  |  |  |")
        for r in self.rows:
            lines.append(f"| {r['stage']} | {r['kind']} | {r['params'] / 1e6:.1f} | {r['ppl_before']:.2f} | "
                         f"{r['ppl']:.2f} | {r['train_tokens']} | {r['steps']} | {r['wall_time_s']:.0f} |")
        write_text(self.out / "stages.md", "\n".join(lines) + "\n")
