"""The ONE stage runner: a recipe is a list of stages, run in order, each resumable.

A stage = build the student from a named earlier checkpoint (the teacher, the previous stage, or
any earlier stage by name) → apply this stage's transform (quantize, or change bits of an already
quantized model without rebuilding it) → distil from the full-precision teacher → evaluate → save
a checkpoint and add a row to the stage table. A finished stage leaves ``result.json``; a rerun
with ``--resume`` skips finished stages, so a run killed in stage 5 keeps stages 1-4.

Two-stage progressive quantization (TSPQ) is a recipe of this runner: stage 1 lowers weight bits
(8 → 4 → 2 → 1) with full-precision activations; stage 2 quantizes activations too. KnGPT2's GLUE
fine-tuning is another (``method: glue``): its first stage starts from a student given on the
command line (``init_from: student``, e.g. a Kronecker decoder after language-model pre-training),
stays at full precision (32 bits) and distils from the fine-tuned teacher.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import rundir
from .config import Config, apply_overrides, load_yaml
from .distill.losses import KDConfig
from .errors import ConfigError, KronbitError
from .finetune import TrainingOptions
from .io import atomic_dir, write_json, write_text

log = logging.getLogger("kronbit")

# init_from keywords: the fine-tuned teacher, the stage before, the model given as ``--student``.
RESERVED = ("teacher", "previous", "student")


@dataclass(kw_only=True)
class TrainSettings(TrainingOptions):
    """How one stage trains (each stage may override epochs / learning_rate / max_steps)."""

    epochs: float = 1.0
    bf16: bool = True
    scale_lr_multiplier: float = 1.0  # learning-rate multiplier for learnable quantizer scales
    # Memory (GiB) the teacher's outputs for the training set may take: computed once and reused by
    # every epoch and by later stages on the same examples, so a KD step skips the teacher's
    # forward. Larger training sets distil live; 0 turns the cache off.
    teacher_cache_gb: float = 4.0

    def validate(self) -> None:
        super().validate()
        if self.scale_lr_multiplier <= 0:
            raise ConfigError(f"scale_lr_multiplier must be > 0, got {self.scale_lr_multiplier}")
        if self.teacher_cache_gb < 0:
            raise ConfigError(f"teacher_cache_gb must be ≥ 0 (0 = off), got {self.teacher_cache_gb}")


@dataclass
class StageConfig(Config):
    name: str
    init_from: str = "previous"      # teacher | previous | student | the name of an earlier stage
    w_bits: int = 32                 # 32 = full-precision weights
    a_bits: int = 32                 # 32 = full-precision activations
    augment: bool = False            # train on the augmented training set
    epochs: float | None = None      # None: the recipe's train.epochs
    learning_rate: float | None = None
    max_steps: int | None = None
    kd: dict[str, Any] | None = None  # per-stage KD weight overrides (merged onto the recipe's kd)
    kron: dict[str, Any] | None = None       # kngpt2: KroneckerConfig keys (decompose this stage's start)
    layerdrop: dict[str, Any] | None = None  # kngpt2: LayerDropConfig keys (keep / target_params)

    def validate(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"stage name {self.name!r} must be letters, digits, '-' or '_'")
        if self.name in RESERVED:
            raise ConfigError(f"stage name '{self.name}' is reserved (it is an init_from keyword)")


@dataclass
class Recipe(Config):
    name: str
    # tspq / glue: GLUE distillation stages (glue: the neutral name, used for decoder students);
    # kngpt2: language-model stages
    method: Literal["tspq", "glue", "kngpt2"] = "tspq"
    description: str = ""
    recipe_version: int = 1
    teacher: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=3.0))
    train: TrainSettings = field(default_factory=TrainSettings)
    kd: KDConfig = field(default_factory=KDConfig)
    quant: dict[str, Any] = field(default_factory=dict)    # QuantConfig keys except the bits
    augment: dict[str, Any] = field(default_factory=dict)  # AugmentConfig keys
    stages: list[StageConfig] = field(default_factory=list)
    lm: dict[str, Any] = field(default_factory=dict)          # kngpt2: LMDataConfig keys (training text)
    perplexity: dict[str, Any] = field(default_factory=dict)  # kngpt2: PerplexityConfig keys (evaluation)

    def validate(self) -> None:
        if self.method == "kngpt2":
            from .lm_stage import validate_lm_recipe

            validate_lm_recipe(self)
            return
        for s in self.stages:
            if s.kron is not None or s.layerdrop is not None:
                raise ConfigError(f"stage '{s.name}': kron / layerdrop stages need method: kngpt2 (language-model "
                                  "stages); GLUE stages fine-tune a student decomposed by one "
                                  "(init_from: student)")
        if self.recipe_version != 1:
            raise ConfigError(f"recipe_version {self.recipe_version} is not supported (this kronbit reads 1)")
        if not self.stages:
            raise ConfigError("a recipe needs at least one stage")
        seen: list[str] = []
        for s in self.stages:
            self.check_stage_order(s, seen)
            for key in ("quant",):
                if "w_bits" in getattr(self, key) or "a_bits" in getattr(self, key):
                    raise ConfigError("quant: set w_bits / a_bits per stage, not in the quant section")
            self.quant_config(s)  # validates the bits against the chosen quantizers
            if s.kd:
                self.kd_config(s)
            seen.append(s.name)
        if any(s.augment for s in self.stages):
            self.augment_config()

    def check_stage_order(self, s: StageConfig, seen: list[str]) -> None:
        """Unique names; ``init_from`` names the teacher, the previous stage or an earlier one."""
        if s.name in seen:
            raise ConfigError(f"stage name '{s.name}' is used twice")
        if s.init_from not in RESERVED and s.init_from not in seen:
            if s.init_from in [x.name for x in self.stages]:
                raise ConfigError(f"stage '{s.name}': init_from '{s.init_from}' names a later stage; "
                                  f"a stage can start only from teacher, previous, or an earlier stage")
            choices = ", ".join([*RESERVED, *seen])
            raise ConfigError(f"stage '{s.name}': init_from '{s.init_from}' names no earlier stage; "
                              f"choose one of: {choices}")

    # Validated sub-configs, built from the recipe's sections (one place for the merge rules).
    def quant_config(self, stage: StageConfig):
        from .quant import QuantConfig

        where = f"stage '{stage.name}' quant"
        try:
            return QuantConfig.from_dict({**self.quant, "w_bits": stage.w_bits, "a_bits": stage.a_bits}, where=where)
        except ConfigError as e:
            raise ConfigError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None

    def kd_config(self, stage: StageConfig) -> KDConfig:
        if not stage.kd:
            return self.kd
        return KDConfig.from_dict({**self.kd.to_dict(), **stage.kd}, where=f"stage '{stage.name}' kd")

    def augment_config(self):
        from .data.augment import AugmentConfig

        return AugmentConfig.from_dict(self.augment, where="augment")

    def train_settings(self, stage: StageConfig, max_steps_cap: int | None = None) -> TrainSettings:
        t = dataclasses.replace(self.train)
        if stage.epochs is not None:
            t.epochs = stage.epochs
        if stage.learning_rate is not None:
            t.learning_rate = stage.learning_rate
        if stage.max_steps is not None:
            t.max_steps = stage.max_steps
        if max_steps_cap is not None:
            t.max_steps = min(t.max_steps or max_steps_cap, max_steps_cap)
        return t

    @property
    def needs_student(self) -> bool:
        return any(s.init_from == "student" for s in self.stages)

    def resolve_init(self, index: int) -> str:
        """The stage name (or 'teacher') that stage ``index`` starts from."""
        s = self.stages[index]
        if s.init_from == "previous":
            return "teacher" if index == 0 else self.stages[index - 1].name
        return s.init_from


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    data = load_yaml(path)
    return Recipe.from_dict(apply_overrides(data, list(overrides)), where=Path(path).name)


# ----------------------------------------------------------------------------------------------
# Running


def stage_dir(out: Path, index: int, name: str) -> Path:
    return out / "stages" / f"{index + 1:02d}-{name}"


def resolve_student(recipe: Recipe, student: str | Path | None) -> Path | None:
    """The ``--student`` model (a run or model directory) when a stage starts from it; one line
    when it is missing or given to a recipe that never uses it."""
    if not recipe.needs_student:
        if student is not None:
            raise ConfigError(f"--student given, but no stage of recipe '{recipe.name}' starts from it "
                              "(init_from: student)")
        return None
    if student is None:
        first = next(s.name for s in recipe.stages if s.init_from == "student")
        raise ConfigError(f"stage '{first}' starts from the student (init_from: student): pass --student DIR "
                          "(e.g. the run directory of a kngpt2 pre-training recipe)")
    from .checkpoint import compressed_dir
    from .models import resolve_model

    p = Path(student)
    if not p.is_dir():
        raise ConfigError(f"--student {student}: no such directory")
    return compressed_dir(p) or Path(resolve_model(p))


def run_recipe(recipe: Recipe, *, model: str, task: str | None, data_dir: str, output_dir: str,
               max_steps: int | None = None, overwrite: bool = False, resume: bool = False,
               recipe_source: str | None = None, student: str | Path | None = None) -> dict[str, Any]:
    """Run every stage of ``recipe``; returns the stage table. ``student``: the model stages with
    ``init_from: student`` start from."""
    student_dir = resolve_student(recipe, student)
    if recipe.method == "kngpt2":
        from .lm_stage import run_lm_recipe

        return run_lm_recipe(recipe, model=model, data_dir=data_dir, output_dir=output_dir, max_steps=max_steps,
                             overwrite=overwrite, resume=resume, recipe_source=recipe_source, student=student_dir)
    if not task:
        raise ConfigError(f"recipe '{recipe.name}' (method {recipe.method}) needs --task")
    from .checkpoint import compressed_dir, load_model
    from .data.glue import get_task, load_split
    from .finetune import FinetuneConfig, finetune
    from .models import read_meta, resolve_model

    t = get_task(task)
    model_path = resolve_model(model)
    train_ex = load_split(t, data_dir, "train")
    dev_ex = load_split(t, data_dir, "dev")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--max-steps must be ≥ 1, got {max_steps}")
    meta = read_meta(model_path) if Path(model_path).is_dir() else {}
    has_teacher = meta.get("kind") == "teacher" and meta.get("task") == t.name
    if compressed_dir(model_path) is not None:
        raise KronbitError(f"{model}: is a compressed model; the teacher must be full precision")
    if any(s.augment for s in recipe.stages):
        from .data.augment import check_available

        check_available(recipe.augment_config(), model_path)  # fail before any training

    out = rundir.prepare(output_dir, {"command": "run", "recipe_source": recipe_source, "model": model,
                                      "student": student_dir and str(student_dir), "task": t.name,
                                      "data_dir": str(data_dir), "max_steps": max_steps,
                                      "recipe": recipe.to_dict()}, overwrite=overwrite, resume=resume)
    # 1. The teacher: given, or fine-tuned here first (as its own resumable step).
    if has_teacher:
        teacher_dir = Path(model_path)
    else:
        teacher_dir = out / "teacher" / "model"
        if not (out / "teacher" / "metrics.json").is_file():
            shared = set(FinetuneConfig.field_names()) & set(TrainSettings.field_names())
            settings = {k: v for k, v in recipe.teacher.to_dict().items() if k in shared}
            settings["max_steps"] = _cap(recipe.teacher.max_steps, max_steps)
            fcfg = FinetuneConfig(model=model, task=t.name, output_dir=str(out / "teacher"), data_dir=str(data_dir),
                                  **settings)
            teacher_ckpt = rundir.latest_checkpoint(out / "teacher" / "checkpoints")
            finetune(fcfg, overwrite=teacher_ckpt is None, resume=teacher_ckpt is not None)
            rundir.attach_log_file(out / "train.log")
    teacher_scores = read_meta(teacher_dir).get("dev_metrics", {})

    table = StageTable(out, t, teacher_scores)
    teacher_caches: dict = {}  # stages on the same training set share the teacher's outputs

    def run_one(i: int, init_dir: Path, sdir: Path) -> dict[str, Any]:
        return run_stage(recipe, i, init_dir=init_dir, teacher_dir=teacher_dir, stage_out=sdir, task=t,
                         train_ex=train_ex, dev_ex=dev_ex, max_steps=max_steps, load_model=load_model, run_out=out,
                         teacher_caches=teacher_caches)

    run_stages(recipe, out, table, teacher_dir, run_one, student_dir)
    return table.as_dict()


def run_stages(recipe: "Recipe", out: Path, table: "StageTable", teacher_ref: Path,
               run_one, student_ref: Path | None = None) -> None:
    """The stage loop every method shares: skip finished stages (their ``result.json``), start
    each stage from the checkpoint its ``init_from`` names, record its row, and finally copy the
    last stage's model to ``OUT/model``. ``run_one(index, init_dir, stage_dir) -> row``. Under a
    multi-process launch every process trains; files are written by the main one."""
    from . import distributed

    for i, stage in enumerate(recipe.stages):
        sdir = stage_dir(out, i, stage.name)
        if (sdir / "result.json").is_file():
            table.load(sdir / "result.json")
            log.info("stage %s already finished; skipping", stage.name)
            continue
        init = recipe.resolve_init(i)
        init_dir = (teacher_ref if init == "teacher" else student_ref if init == "student"
                    else stage_dir(out, _index(recipe, init), init) / "model")
        row = run_one(i, init_dir, sdir)
        row["init_from"] = init
        table.add(row)
        distributed.on_main(_record_stage, sdir, row, table)  # written once under torchrun
    final = stage_dir(out, len(recipe.stages) - 1, recipe.stages[-1].name) / "model"
    distributed.on_main(_finish_run, final, out, table)


def _record_stage(sdir: Path, row: dict[str, Any], table: "StageRows") -> None:
    write_json(sdir / "result.json", row)
    table.write()


def _finish_run(final: Path, out: Path, table: "StageRows") -> None:
    with atomic_dir(out / "model") as tmp:
        shutil.copytree(final, tmp, dirs_exist_ok=True)
    table.write()


def _save_stage(model, tokenizer, stage_out: Path, meta: dict[str, Any], transforms: list) -> None:
    from .checkpoint import save_compressed

    save_compressed(model, tokenizer, stage_out / "model", meta, transforms)
    shutil.rmtree(stage_out / "checkpoints", ignore_errors=True)


def resume_point(stage_out: Path) -> Path | None:
    """Where an interrupted stage continues: its newest complete Trainer checkpoint (weights,
    learned quantizer scales, optimizer, scheduler, RNG states and data position), or None — then
    the stage starts again from its init checkpoint in a clean directory."""
    from . import distributed

    return distributed.on_main(_resume_point, stage_out)


def _resume_point(stage_out: Path) -> Path | None:
    ckpt = rundir.latest_checkpoint(stage_out / "checkpoints")
    if ckpt is not None:
        log.info("stage %s: resuming from %s", stage_out.name, ckpt.name)
        return ckpt
    if stage_out.exists():
        shutil.rmtree(stage_out)
    stage_out.mkdir(parents=True)
    return None


def _cap(a: int | None, cap: int | None) -> int | None:
    if cap is None:
        return a
    return min(a or cap, cap)


def _index(recipe: Recipe, name: str) -> int:
    return [s.name for s in recipe.stages].index(name)


def run_stage(recipe: Recipe, index: int, *, init_dir: Path, teacher_dir: Path, stage_out: Path, task,
              train_ex, dev_ex, max_steps, load_model, run_out: Path,
              teacher_caches: dict | None = None) -> dict[str, Any]:
    from transformers import DataCollatorWithPadding, set_seed

    from .data.features import sorted_by_length, subsample, tokenize
    from .distill.mapping import kept_layer_map
    from .distill.trainer import DistillationTrainer
    from .finetune import build_callbacks, glue_compute_metrics, selected_metrics, training_arguments
    from .models import load_classifier, load_tokenizer, read_meta
    from .modules import recorded_transforms
    from .quant import quantize_, set_bits_

    stage = recipe.stages[index]
    settings = recipe.train_settings(stage, max_steps)
    kd = recipe.kd_config(stage)
    qcfg = recipe.quant_config(stage)
    set_seed(settings.seed)
    start = time.time()
    ckpt = resume_point(stage_out)

    tokenizer = load_tokenizer(teacher_dir)
    student = load_model(init_dir, task)  # a language model (a KnGPT2 student) gets a new head
    init_meta = read_meta(init_dir)
    # A layer-dropped student learns each block from the teacher block it was copied from.
    kept = init_meta.get("kept_layers")
    kd = kd.replace(layer_map=kept_layer_map(kd.layer_map, kept))
    already_quantized = any(t["kind"] == "quant" for t in recorded_transforms(student))
    if already_quantized:
        # Same model, new bits: the progressive schedule lowers bits on the trained modules.
        set_bits_(student, w_bits=stage.w_bits, a_bits=stage.a_bits)
    elif not stage.w_bits == stage.a_bits == 32:  # 32/32 (decoder GLUE fine-tuning): nothing to quantize
        quantize_(student, qcfg)
    teacher = load_classifier(teacher_dir)

    examples = subsample(train_ex, settings.train_subset, settings.seed)
    if stage.augment:
        from .data.augment import augment_examples

        acfg = recipe.augment_config()
        if acfg.cache_dir is None:  # cache beside the run, so a resumed run does not redo it
            acfg = acfg.replace(cache_dir=str(run_out / "augment-cache"))
        examples = augment_examples(examples, task, acfg, str(teacher_dir))
    train_ds = tokenize(examples, tokenizer, task, settings.max_seq_length).with_example_ids()
    dev_ds = sorted_by_length(tokenize(dev_ex, tokenizer, task, settings.max_seq_length))
    args = training_arguments(settings, stage_out, len(train_ds), metric_for_best_model=task.primary_metric,
                              greater_is_better=True)
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=glue_compute_metrics(task),
        callbacks=build_callbacks(stage_out), teacher=teacher, kd=kd, regression=task.is_regression,
        lr_multipliers=_scale_multipliers(settings.scale_lr_multiplier))
    trainer.teacher_cache = _teacher_cache(teacher_caches, teacher_dir, trainer.teacher, train_ds, trainer.data_collator,
                                           kd, settings)
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    metrics = selected_metrics(trainer)
    meta = {"kind": "compressed", "task": task.name, "stage": stage.name, "method": recipe.method,
            "recipe": recipe.name, "dev_metrics": {m: metrics[m] for m in task.metrics},
            **({"kept_layers": kept} if kept else {})}
    from . import distributed

    # What the student went through (replayed on load, then quantized or re-bitted here), as the
    # swap APIs recorded it: a rebuild from this list gives the same modules.
    transforms = recorded_transforms(trainer.model)
    distributed.on_main(_save_stage, trainer.model, tokenizer, stage_out, meta, transforms)
    from .quant.size import estimate_size

    size = estimate_size(trainer.model)
    return {"stage": stage.name, "w_bits": stage.w_bits, "a_bits": stage.a_bits, "augment": stage.augment,
            **{m: metrics[m] for m in task.metrics}, "primary_metric": task.primary_metric,
            "size_mb": round(size["total_bytes"] / 1e6, 3), "size_note": size["note"],
            "train_examples": len(train_ds), "steps": trainer.state.global_step,
            "wall_time_s": round(time.time() - start, 1)}


def _teacher_cache(caches: dict | None, teacher_dir: Path, teacher, train_ds, collator, kd, settings):
    """The teacher's outputs for ``train_ds``: reused from an earlier stage on the same examples
    when it holds what this stage's KD needs, else built (or None: cache off, too large, no KD)."""
    if caches is None or settings.teacher_cache_gb == 0 or not (kd.logits or kd.needs_hidden or kd.needs_attention):
        return None
    from .distill.teacher_cache import TeacherCache, dataset_fingerprint

    key = (str(teacher_dir), dataset_fingerprint(train_ds.features))
    cache = caches.get(key)
    if cache is not None and cache.covers(hidden=kd.needs_hidden, attention=kd.needs_attention):
        log.info("teacher outputs: reusing the cache of an earlier stage (%.2f GB)", cache.nbytes / 1e9)
        return cache
    caches.clear()  # one training set's cache at a time: the memory goes to the new one
    t0 = time.time()
    cache = TeacherCache.build(teacher, train_ds.features, collator, hidden=kd.needs_hidden,
                               attention=kd.needs_attention, batch_size=settings.eval_batch_size,
                               bf16=settings.bf16, max_bytes=settings.teacher_cache_gb * 2**30)
    if cache is None:
        log.info("teacher outputs would exceed teacher_cache_gb=%g; the teacher runs on every step",
                 settings.teacher_cache_gb)
        return None
    log.info("teacher outputs cached for %d examples in %.1f s (%.2f GB)", len(cache), time.time() - t0,
             cache.nbytes / 1e9)
    caches[key] = cache
    return cache


def _scale_multipliers(mult: float) -> dict[str, float] | None:
    if mult == 1.0:
        return None
    from .quant import SCALE_PARAM_SUFFIXES

    return {suffix: mult for suffix in SCALE_PARAM_SUFFIXES}


class StageRows:
    """Rows of finished stages (loaded from ``result.json`` or added as stages finish); each
    method's table renders them (``write``)."""

    def __init__(self, out: Path):
        self.out = out
        self.rows: list[dict[str, Any]] = []

    def load(self, path: Path) -> None:
        import json

        self.rows.append(json.loads(path.read_text()))

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def write(self) -> None:
        raise NotImplementedError


class StageTable(StageRows):
    """The TSPQ stage table (bits, size, dev metric, wall time) as JSON, markdown and a plot."""

    def __init__(self, out: Path, task, teacher_scores: dict[str, float]):
        super().__init__(out)
        self.task, self.teacher = task, teacher_scores

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task.name, "primary_metric": self.task.primary_metric,
                "teacher": self.teacher, "stages": self.rows}

    def write(self) -> None:
        write_json(self.out / "stages.json", self.as_dict())
        m = self.task.primary_metric
        lines = [f"# Stage table: {self.task.name} (dev {m} ×100)", "",
                 "| stage | W bits | A bits | DA | dev " + m + " | size MB | steps | wall s |",
                 "|---|---|---|---|---|---|---|---|"]
        if m in self.teacher:
            lines.append(f"| teacher | 32 | 32 |  | {100 * self.teacher[m]:.2f} |  |  |  |")
        for r in self.rows:
            lines.append(f"| {r['stage']} | {r['w_bits']} | {r['a_bits']} | {'yes' if r['augment'] else ''} | "
                         f"{100 * r[m]:.2f} | {r['size_mb']:.2f} | {r['steps']} | {r['wall_time_s']:.0f} |")
        write_text(self.out / "stages.md", "\n".join(lines) + "\n")
        self._plot()

    def _plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from .io import atomic_path

        m = self.task.primary_metric
        names = [r["stage"] for r in self.rows]
        values = [100 * r[m] for r in self.rows]
        fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(names) + 2), 3.2))
        ax.plot(names, values, marker="o", label="student")
        if m in self.teacher:
            ax.axhline(100 * self.teacher[m], color="grey", linestyle="--", label="teacher")
        ax.set_ylabel(f"dev {m} ×100")
        ax.set_title(f"{self.task.name}: {m} by stage")
        ax.legend(loc="best")
        fig.tight_layout()
        with atomic_path(self.out / "stages.png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
