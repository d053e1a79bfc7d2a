"""Staged runs: a typed recipe (``recipe``), the stage loop and resume (``stages``), and one module
per kind of recipe — GLUE distillation stages (``glue``, TSPQ among them) and language-model stages
(``lm``, KnGPT2) — each registered once in ``RUN_METHODS`` with its validation and its run."""

from pathlib import Path
from typing import Any

from . import glue, lm  # noqa: F401  (register the "glue"/"tspq" and "kngpt2" run methods)
from .recipe import RUN_METHODS, Recipe, StageConfig, TrainSettings, load_recipe


def run_recipe(recipe: Recipe, *, model: str, task: str | None = None, data_dir: str | None = None,
               output_dir: str, max_steps: int | None = None, overwrite: bool = False, resume: bool = False,
               recipe_source: str | None = None, student: str | Path | None = None) -> dict[str, Any]:
    """Run every stage of ``recipe`` with the method it names; returns the stage table.
    ``student``: the model stages with ``init_from: student`` start from."""
    return recipe.run_method.run(recipe, model=model, task=task, data_dir=data_dir, output_dir=output_dir,
                                 max_steps=max_steps, overwrite=overwrite, resume=resume,
                                 recipe_source=recipe_source, student=student)


__all__ = ["RUN_METHODS", "Recipe", "StageConfig", "TrainSettings", "load_recipe", "run_recipe"]
