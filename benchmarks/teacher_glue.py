"""Teacher dev scores: fine-tune the packaged MiniLM-L6 (full precision) on the five local GLUE
tasks. These teachers are what every TSPQ benchmark distils from.

    python benchmarks/teacher_glue.py [--tasks cola sst2 mrpc rte stsb] [--redo]

Results: docs/results/teacher_glue.{json,md}; run directories under benchmarks/_work/teachers/.
A rerun skips tasks already in the results file (use --redo to run them again).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WORK, Results, data_root, md_table  # noqa: E402

from kronbit.core.hardware import resolve_bf16  # noqa: E402
from kronbit.workflows.finetune import FinetuneConfig, finetune  # noqa: E402

# The budget per task: sized so each task finishes well inside 45 minutes on 2 CPU cores with bf16 units
# (bf16 autocast where the CPU has them; fp32 elsewhere, several times slower).
# Sequence length 64 for the single-sentence tasks (their sentences are short), 128 for pairs.
BUDGETS = {
    "cola": dict(epochs=3, max_seq_length=64, learning_rate=5e-5),
    "sst2": dict(epochs=2, max_seq_length=64, learning_rate=5e-5, train_subset=20000),
    "mrpc": dict(epochs=5, max_seq_length=128, learning_rate=8e-5),
    "rte": dict(epochs=5, max_seq_length=128, learning_rate=8e-5),
    "stsb": dict(epochs=4, max_seq_length=128, learning_rate=8e-5),
}
ORIENTATION = {"cola": ("mcc", 25), "sst2": ("accuracy", 88), "mrpc": ("f1", 85), "rte": ("accuracy", 60),
               "stsb": ("pearson", 85)}


NOTES = ("Wall times include tokenisation, every per-epoch evaluation and saving, and vary with other load on "
         "the machine (the same CoLA budget has taken 2.7 to 6.9 min). "
         "The teachers live outside git (benchmarks/_work/), so a fresh machine retrains them before the TSPQ "
         "benchmarks can distil from them; same seed and budget give the same scores to the third decimal "
         "(STS-B Pearson 0.86274 here, 0.86271 in the run the TSPQ STS-B rows distilled from; bf16 reductions "
         "on 2 threads are not bit-for-bit repeatable). Dates per row in the JSON.")


def teacher_dir(task: str) -> Path:
    return WORK / "teachers" / task


def require_teacher(task: str) -> Path:
    """The fine-tuned teacher's model directory, or exit saying how to make it."""
    model = teacher_dir(task) / "model"
    if not model.is_dir():
        sys.exit(f"no teacher for {task} at {model}: run benchmarks/teacher_glue.py --tasks {task} first")
    return model


def render(res: Results) -> str:
    rows = []
    for task in BUDGETS:
        r = res.data["rows"].get(task)
        if not r:
            continue
        metric, ref = ORIENTATION[task]
        scores = ", ".join(f"{m} {100 * r['metrics'][m]:.1f}" for m in r["metrics"])
        b = r["budget"]
        budget = (f"{b['epochs']} ep × {b.get('train_subset') or r['train_examples']} ex, seq {b['max_seq_length']}, "
                  f"lr {b['learning_rate']:g}")
        rows.append([task, scores, f"{metric} ≥ {ref}", budget, r["steps"], f"{r['wall_time_s'] / 60:.1f}",
                     "on" if r["bf16"] else "off"])
    head = ("# Teacher dev scores: MiniLM-L6-H384 (packaged `all-MiniLM-L6-v2`) fine-tuned per task\n\n"
            "Dev split of the local GLUE files; scores ×100. Produced by `python benchmarks/teacher_glue.py`; "
            "dates, exact commands and machine in `teacher_glue.json`.\n\n")
    notes = res.data.get("notes")
    return head + md_table(["task", "dev scores", "orientation", "budget", "steps", "wall min", "bf16"], rows) + (
        f"\n{notes}\n" if notes else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    ap.add_argument("--redo", action="store_true")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--render-only", action="store_true", help="rewrite the table from the JSON, run nothing")
    args = ap.parse_args()
    res = Results("teacher_glue", "Full-precision MiniLM-L6 teachers on five GLUE tasks (dev)")
    res.data["notes"] = NOTES
    if args.render_only:
        res.save(render(res))
        return
    glue = data_root() / "glue"
    for task in args.tasks:
        # Skipped only while the teacher is still on disk: every TSPQ benchmark distils from it, so
        # a fresh machine retrains it (and re-measures its row) rather than leaving nothing to load.
        if res.done(task) and (teacher_dir(task) / "model").is_dir() and not args.redo:
            print(f"[skip] {task}: already in {res.json_path.name}")
            continue
        budget = BUDGETS[task]
        cfg = FinetuneConfig(model="packaged:minilm", task=task, data_dir=str(glue),
                             output_dir=str(teacher_dir(task)), bf16="auto", seed=args.seed, **budget)
        # A teacher cut short (session end, kill) continues from its last checkpoint; the row's wall
        # time then covers only this process's part and says so.
        resume = (teacher_dir(task) / "checkpoints").is_dir() and not args.redo
        t0 = time.time()
        out = finetune(cfg, overwrite=not resume, resume=resume)
        res.add(task, {
            "metrics": {m: out[m] for m in ("mcc", "accuracy", "f1", "pearson", "spearman") if m in out},
            "metrics_unit": "fraction (×100 in tables)", "primary_metric": out["primary_metric"],
            "budget": budget, "train_examples": out["train_examples"], "steps": out["steps"],
            "wall_time_s": round(time.time() - t0, 1), "wall_time_unit": "s", "bf16": resolve_bf16("auto"),
            "resumed": resume, "seed": args.seed, "model_dir": str(teacher_dir(task).relative_to(WORK.parent.parent) / "model"),
        })
        res.save(render(res))
        print(f"[done] {task}: {out}")
    res.save(render(res))


if __name__ == "__main__":
    main()
