"""The stage loop every method shares, and how an interrupted stage resumes.

A stage = build the student from a named earlier checkpoint (the teacher, the previous stage, the
``--student`` model, or any earlier stage by name) → the method's transform → distil → evaluate →
save a checkpoint and add a row to the stage table. A finished stage leaves ``result.json``; a
rerun with ``--resume`` skips finished stages, so a run killed in stage 5 keeps stages 1-4, and an
interrupted stage continues from its newest complete Trainer checkpoint.

Under a multi-process launch every process trains; files are written by the main one.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

from ..core import distributed, rundir
from ..core.errors import ConfigError
from ..core.io import atomic_dir, write_json
from ..formats.compressed import compressed_dir
from ..models.resolve import resolve_model
from ..workflows.console import say
from .recipe import Recipe

log = logging.getLogger("kronbit")


class StageTable:
    """Rows of finished stages (loaded from ``result.json`` or added as stages finish); each
    method's table renders them (``write``) and says what a run returns (``as_dict``)."""

    def __init__(self, out: Path):
        self.out = out
        self.rows: list[dict[str, Any]] = []

    def load(self, path: Path) -> None:
        self.rows.append(json.loads(path.read_text()))

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def as_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def write(self) -> None:
        raise NotImplementedError


def stage_dir(out: Path, index: int, name: str) -> Path:
    return out / "stages" / f"{index + 1:02d}-{name}"


def is_finished(sdir: Path) -> bool:
    """A stage is finished once its ``result.json`` is written (the last thing it does)."""
    return (sdir / "result.json").is_file()


def finished_stages(recipe: Recipe, out: Path) -> int:
    """How many of the recipe's leading stages the run directory ``out`` has finished."""
    k = 0
    while k < len(recipe.stages) and is_finished(stage_dir(out, k, recipe.stages[k].name)):
        k += 1
    return k


def check_max_steps(max_steps: int | None) -> None:
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--max-steps must be ≥ 1, got {max_steps}")


def cap_steps(a: int | None, cap: int | None) -> int | None:
    return a if cap is None else min(a or cap, cap)


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
    p = Path(student)
    if not p.is_dir():
        raise ConfigError(f"--student {student}: no such directory")
    return compressed_dir(p) or Path(resolve_model(p))


RunOne = Callable[[int, Path, Path], dict[str, Any]]


def run_stages(recipe: Recipe, out: Path, table: StageTable, teacher_ref: Path | str, run_one: RunOne,
               student_ref: Path | None = None) -> None:
    """Skip finished stages (their ``result.json``), start each stage from the checkpoint its
    ``init_from`` names, record its row, and finally copy the last stage's model to ``OUT/model``.
    ``run_one(index, init_dir, stage_dir) -> row``."""
    n = len(recipe.stages)
    for i, stage in enumerate(recipe.stages):
        sdir = stage_dir(out, i, stage.name)
        header = f"stage {i + 1}/{n}: {recipe.run_method.describe(recipe, i)}"
        if is_finished(sdir):
            table.load(sdir / "result.json")
            say(f"{header} — already finished; skipping")
            continue
        say(header)
        init = recipe.resolve_init(i)
        init_dir = (Path(teacher_ref) if init == "teacher" else student_ref if init == "student"
                    else stage_dir(out, recipe.index_of(init), init) / "model")
        row = run_one(i, init_dir, sdir)
        row["init_from"] = init
        table.add(row)
        distributed.on_main(_record_stage, sdir, row, table)  # written once under torchrun
    final = stage_dir(out, n - 1, recipe.stages[-1].name) / "model"
    distributed.on_main(_finish_run, final, out, table)


def _record_stage(sdir: Path, row: dict[str, Any], table: StageTable) -> None:
    write_json(sdir / "result.json", row)
    table.write()


def _finish_run(final: Path, out: Path, table: StageTable) -> None:
    with atomic_dir(out / "model") as tmp:
        shutil.copytree(final, tmp, dirs_exist_ok=True)
    table.write()


def resume_point(stage_out: Path) -> Path | None:
    """Where an interrupted stage continues: its newest complete Trainer checkpoint (weights,
    learned quantizer scales, optimizer, scheduler, RNG states and data position), or None — then
    the stage starts again from its init checkpoint in a clean directory."""
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


def drop_checkpoints(stage_out: Path) -> None:
    """A stage's Trainer checkpoints, once its model is saved (they exist only for resuming)."""
    shutil.rmtree(stage_out / "checkpoints", ignore_errors=True)
