"""TSPQ on GLUE: teacher, TSPQ W1A1 (with and without data augmentation), TSPQ ternary W2A8 without
augmentation, and the two one-stage baselines (direct binarization, direct ternarization), on CoLA,
SST-2, MRPC, RTE and STS-B, all distilled from the MiniLM-L6 teachers of `teacher_glue.py`.

    python benchmarks/teacher_glue.py            # first: the teachers
    python benchmarks/tspq_glue.py [--tasks rte mrpc] [--configs tspq_w1a1 direct_w1a1] [--redo]

Each (task, config) result is written to docs/results/tspq_glue.json as soon as it finishes; a
rerun skips finished ones and resumes an interrupted run's finished stages.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, WORK, Results, data_root, md_table  # noqa: E402
from teacher_glue import require_teacher  # noqa: E402

from kronbit.runner import load_recipe, run_recipe  # noqa: E402

CONFIGS = {
    "tspq_w1a1": "binary.yaml",
    "tspq_w1a1_da": "binary-da.yaml",
    "tspq_w2a8": "ternary.yaml",
    "direct_w1a1": "direct-binary.yaml",
    "direct_w2a8": "direct-ternary.yaml",
}
# The budget per task: a seeded subset of the training set and a sequence length, so that one
# task's five configurations fit in about 45 minutes on 2 CPU cores (bf16, length-grouped batches).
# The recipes train 6 epochs (binary) and 4 (ternary) in total, so the subsets hold roughly the same
# number of tokens per epoch (80-90k after grouping): the pair tasks' long examples get fewer of them.
# Every configuration of a task sees the same examples for the same number of epochs in total.
BUDGETS = {
    "rte": {"train.train_subset": 1200, "train.max_seq_length": 128},
    "mrpc": {"train.train_subset": 1600, "train.max_seq_length": 128},
    "stsb": {"train.train_subset": 2800, "train.max_seq_length": 128},
    "cola": {"train.train_subset": 4000, "train.max_seq_length": 64},
    "sst2": {"train.train_subset": 4000, "train.max_seq_length": 64},
}
# One augmented copy per example on the DA stages (budget; TinyBERT used 20): the DA row's binary
# stages see twice the examples of the row without DA.
AUGMENT_BUDGET = {"augment.n_copies": 1}
PAPER = {  # GLUE averages reported by the papers (dev), for orientation: different model and tasks
    "BiT W1A1 (BERT-base), no DA": 73.5, "BiT W1A1 (BERT-base), DA": 78.0, "BERT-base FP": 83.9,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--redo", action="store_true")
    ap.add_argument("--max-steps", type=int, help="cap every stage (smoke test of the script)")
    ap.add_argument("--render-only", action="store_true", help="rewrite the table from the JSON, run nothing")
    return ap.parse_args(argv)


def recipe_overrides(task: str, config: str) -> list[str]:
    """The task's budget; the augmentation budget only on the configurations with DA."""
    return [f"{k}={v}" for k, v in {**BUDGETS[task], **AUGMENT_BUDGET}.items()
            if not k.startswith("augment.") or "da" in config]


def planned_recipes(args: argparse.Namespace) -> list[tuple[str, Path, list[str]]]:
    """(row key, recipe file, overrides) of every run ``args`` asks for (checked by the tests)."""
    return [(f"{task}/{name}", REPO / "recipes" / "tspq" / CONFIGS[name], recipe_overrides(task, name))
            for task in args.tasks for name in args.configs]


def main() -> None:
    args = parse_args()
    res = Results("tspq_glue" if args.max_steps is None else "tspq_glue_smoke",
                  "TSPQ vs one-stage baselines on five GLUE tasks (MiniLM-L6 teachers, dev)")
    if args.render_only:
        res.save(render(res))
        return
    glue = data_root() / "glue"
    teachers = Results("teacher_glue", "")
    for task in args.tasks:
        tdir = require_teacher(task)
        for name in args.configs:
            key = f"{task}/{name}"
            if res.done(key) and not args.redo:
                print(f"[skip] {key}")
                continue
            overrides = recipe_overrides(task, name)
            recipe = load_recipe(REPO / "recipes" / "tspq" / CONFIGS[name], overrides)
            out = WORK / "tspq" / task / name
            table = run_recipe(recipe, model=str(tdir), task=task, data_dir=str(glue), output_dir=str(out),
                               max_steps=args.max_steps, resume=out.is_dir() and not args.redo,
                               overwrite=args.redo, recipe_source=f"recipes/tspq/{CONFIGS[name]}")
            last = table["stages"][-1]
            m = table["primary_metric"]
            res.add(key, {"task": task, "config": name, "recipe": f"recipes/tspq/{CONFIGS[name]}",
                          "overrides": overrides, "primary_metric": m, "score": last[m], "score_unit": "fraction",
                          "teacher_score": teachers.data["rows"].get(task, {}).get("metrics", {}).get(m),
                          "size_mb": last["size_mb"], "size_unit": "MB (estimated packed)",
                          "stages": table["stages"],
                          # the stages' own times: a resumed run that finds them finished adds ~0 s
                          "wall_time_s": round(sum(st["wall_time_s"] for st in table["stages"]), 1)})
            res.save(render(res))
    res.save(render(res))


def majority_scores(tasks: list[str]) -> dict[str, float]:
    """Each task's primary dev metric when every dev example gets the training split's most frequent
    label (STS-B: the training mean, a constant, so Pearson 0): the floor a collapsed student sits on."""
    from collections import Counter

    from kronbit.data.glue import get_task, load_split
    from kronbit.data.metrics import compute

    out = {}
    for name in tasks:
        task = get_task(name)
        train = [e.label for e in load_split(task, data_root() / "glue", "train")]
        dev = [e.label for e in load_split(task, data_root() / "glue", "dev")]
        guess = sum(train) / len(train) if task.is_regression else Counter(train).most_common(1)[0][0]
        out[name] = compute([task.primary_metric], [guess] * len(dev), dev)[task.primary_metric]
    return out


def render(res: Results) -> str:
    rows_by = res.data["rows"]
    tasks = [t for t in BUDGETS if any(k.startswith(t + "/") for k in rows_by)]
    headers = ["config", *tasks, "avg", "% of teacher"]
    out_rows = []
    teacher = {t: next((r["teacher_score"] for k, r in rows_by.items() if k.startswith(t + "/")), None)
               for t in tasks}
    out_rows.append(["teacher (FP)", *[100 * teacher[t] if teacher[t] is not None else None for t in tasks],
                     _avg([teacher[t] for t in tasks]), 100.0])
    # Read the GLUE files only for tasks not yet scored: render runs after every finished row.
    floor = res.data.setdefault("majority_class", {"unit": "fraction"})
    floor.update(majority_scores([t for t in tasks if t not in floor]))
    favg = _avg([floor[t] for t in tasks])
    out_rows.append(["majority class (floor)", *[100 * floor[t] for t in tasks], favg,
                     100 * favg / _avg([teacher[t] for t in tasks])])
    for name in CONFIGS:
        scores = [rows_by.get(f"{t}/{name}", {}).get("score") for t in tasks]
        if all(s is None for s in scores):
            continue
        avg = _avg(scores)
        tavg = _avg([teacher[t] for t, s in zip(tasks, scores) if s is not None])
        pct = 100 * avg / tavg if avg is not None and tavg else None
        out_rows.append([name, *[None if s is None else 100 * s for s in scores], avg, pct])
    head = ("# TSPQ on GLUE (MiniLM-L6 teachers; dev; primary metric ×100: CoLA MCC, MRPC F1, STS-B Pearson, "
            "accuracy elsewhere)\n\nProduced by `python benchmarks/tspq_glue.py`; budgets, commands, dates and "
            "machine in `tspq_glue.json`. The papers' numbers are for BERT-base on all of GLUE and are shown "
            "for orientation only: " + "; ".join(f"{k}: {v}" for k, v in PAPER.items()) + ".\n\n")
    schedules = sorted({" → ".join(st["stage"] for st in r["stages"]) for k, r in rows_by.items()
                        if r["config"].startswith("tspq")})
    def used(task: str) -> str:  # the budgets the task's rows actually ran with (from their overrides)
        seen = sorted({", ".join(o.split(".", 1)[1] for o in r["overrides"])
                       for k, r in rows_by.items() if k.startswith(task + "/")})
        return f"{task}: " + " | ".join(seen)

    out_rows.append(["wall min, all rows", *[sum(r["wall_time_s"] for k, r in rows_by.items()
                                                  if k.startswith(t + "/")) / 60 for t in tasks], None, None])
    budget = ("\nBudgets (a seeded subset of the training split, max sequence length, augmented copies on DA "
              "stages): " + "; ".join(used(t) for t in tasks) + ". Epochs: binary w2 1 → w1 1 → w1a1 4 (direct "
              "W1A1: 6 in one stage), ternary w4 1 → w2 2 → w2a8 1 (direct W2A8: 4), the schedules chosen in "
              "`tspq_schedule.md`; TSPQ schedules in these rows: " + "; ".join(schedules) + ".\n")
    floor_note = ("\nThe majority-class row predicts the training split's most frequent label for every dev "
                  "example (STS-B: a constant, Pearson 0): a student at that row has collapsed, whatever the "
                  "metric's scale suggests (MRPC F1 is 81 for always answering 'paraphrase').\n")
    return head + md_table(headers, out_rows) + budget + floor_note + targets(rows_by, tasks)


def targets(rows_by: dict, tasks: list[str]) -> str:
    """The issue's targets, each over the tasks where every row it compares has finished."""
    def scores(name):
        return {t: rows_by[f"{t}/{name}"]["score"] for t in tasks if f"{t}/{name}" in rows_by}

    teacher = {t: r["teacher_score"] for k, r in rows_by.items() for t in [k.split("/")[0]]}
    lines = []
    for name, goal in (("tspq_w1a1", 88), ("tspq_w1a1_da", 93), ("tspq_w2a8", 98)):
        got = scores(name)
        if got:
            pct = 100 * sum(got.values()) / sum(teacher[t] for t in got)
            lines.append(f"{name} keeps {pct:.1f}% of the teacher's average (target ≥ {goal}%; "
                         f"{len(got)} task(s): {', '.join(got)})")
    tspq, direct = scores("tspq_w1a1"), scores("direct_w1a1")
    both = [t for t in tspq if t in direct]
    if both:
        gap = 100 * sum(tspq[t] - direct[t] for t in both) / len(both)
        lines.append(f"tspq_w1a1 − direct_w1a1: {gap:+.2f} points on average (target ≥ +2; {', '.join(both)})")
    return "\nTargets, from the rows above:\n\n" + "".join(f"- {ln}\n" for ln in lines) if lines else ""


def _avg(values):
    vals = [100 * v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


if __name__ == "__main__":
    main()
