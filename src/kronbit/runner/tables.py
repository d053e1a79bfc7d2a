"""Stage tables: what each method shows for a run, as ``stages.json``, ``stages.md`` and (GLUE) a
plot, rewritten after every finished stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training machine
import matplotlib.pyplot as plt  # noqa: E402

from ..core.io import atomic_path, write_json, write_text  # noqa: E402
from .stages import StageTable  # noqa: E402


class GlueStageTable(StageTable):
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
                 "| stage | W bits | A bits | attention | DA | dev " + m + " | size MB | steps | wall s |",
                 "|---|---|---|---|---|---|---|---|---|"]
        if m in self.teacher:
            lines.append(f"| teacher | 32 | 32 | full |  | {100 * self.teacher[m]:.2f} |  |  |  |")
        for r in self.rows:  # rows of older runs have no "attention": theirs was full precision
            lines.append(f"| {r['stage']} | {r['w_bits']} | {r['a_bits']} | {r.get('attention', 'full')} | "
                         f"{'yes' if r['augment'] else ''} | "
                         f"{100 * r[m]:.2f} | {r['size_mb']:.2f} | {r['steps']} | {r['wall_time_s']:.0f} |")
        write_text(self.out / "stages.md", "\n".join(lines) + "\n")
        self._plot()

    def _plot(self) -> None:
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


class LMStageTable(StageTable):
    """The stage table of a language-model recipe: parameters, perplexity before/after, tokens."""

    def __init__(self, out: Path):
        super().__init__(out)
        self.teacher: dict[str, Any] = {}

    def as_dict(self) -> dict[str, Any]:
        return {"metric": "ppl", "teacher": self.teacher, "stages": self.rows}

    def write(self) -> None:
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
