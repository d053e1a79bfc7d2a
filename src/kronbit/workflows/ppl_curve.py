"""Perplexity at token marks during a language-model stage: the perplexity-vs-tokens curve of one
run (``perplexity.at_tokens`` in a recipe).

Why inside one run: three separate runs to 0.1M, 0.3M and 1M tokens cost 1.4M tokens of training
where one run to 1M costs 1M, and the students compared share the same schedule either way. The
points are the student as it stands at that step (mid-schedule learning rate), not the end of a
shorter run; the last mark is the stage's end when it equals the stage's token budget.

Each point is written to ``ppl_curve.json`` in the stage directory as soon as it is measured, so a
run killed and resumed keeps the points it had; a mark the resumed run passes again (it restarted
from a checkpoint before that mark) is measured again and replaces the old point.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from ..core.io import write_json

CURVE_FILE = "ppl_curve.json"


def read_curve(stage_out: Path) -> list[dict[str, Any]]:
    path = Path(stage_out) / CURVE_FILE
    return json.loads(path.read_text())["points"] if path.is_file() else []


class PerplexityAtTokens(TrainerCallback):
    """Scores ``score(model) -> {"ppl", "ppl_tokens"}`` when the tokens trained so far first reach
    each mark (tokens per step = ``tokens_per_step``: batch size × block size)."""

    def __init__(self, marks: list[int], tokens_per_step: int, score: Callable[[Any], dict[str, Any]],
                 stage_out: Path, on_main: Callable[..., Any] = lambda f, *a: f(*a)):
        self.marks = sorted(set(marks))
        self.tokens_per_step = tokens_per_step
        self.score = score
        self.path = Path(stage_out) / CURVE_FILE
        self.on_main = on_main
        self.points = {p["tokens_mark"]: p for p in read_curve(stage_out)}

    def due(self, step: int) -> list[int]:
        """The marks first reached at ``step`` (tokens after step-1 < mark ≤ tokens after step)."""
        lo, hi = (step - 1) * self.tokens_per_step, step * self.tokens_per_step
        return [m for m in self.marks if lo < m <= hi]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        marks = self.due(state.global_step)
        if not marks or model is None:
            return control
        was_training = model.training
        result = self.score(model)
        if was_training:
            model.train()
        for m in marks:
            self.points[m] = {"tokens_mark": m, "train_tokens": state.global_step * self.tokens_per_step,
                              "step": state.global_step, **result}
        self.on_main(write_json, self.path, {"points": self.curve()})
        return control

    def curve(self) -> list[dict[str, Any]]:
        return [self.points[m] for m in sorted(self.points)]
