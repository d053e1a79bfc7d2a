"""How many augmented copies are worth their cost: TSPQ W1A1 with data augmentation on one small
task, with 1, 4 and 8 augmented copies per example on the binary stages (and 0: the recipe
without DA, same examples), so the DA rows of `tspq_fair.py` use a count picked by the curve.

    python benchmarks/tspq_da_copies.py [--task stsb] [--subset 800] [--copies 0 1 4 8]

The task is STS-B: its Pearson moves with every example, where RTE's 277-example dev accuracy
sits at the majority floor for every binary student (tspq_fair.md) and would pick by noise.

Each point: dev score after the full recipe, training examples, wall time. Results in
docs/results/tspq_da_copies.{json,md}; a rerun skips finished points and resumes an interrupted
one (run directories under benchmarks/_work/tspq_da_copies/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, WORK, Results, data_root, md_table  # noqa: E402
from teacher_glue import require_teacher  # noqa: E402
from tspq_fair_configs import DA_COPIES  # noqa: E402

from kronbit.runner import load_recipe, run_recipe  # noqa: E402


def overrides_for(copies: int, subset: int | None, seq: int) -> tuple[str, list[str]]:
    """(recipe file, overrides) of one point: 0 copies is the same schedule without DA."""
    base = [f"train.max_seq_length={seq}", *([f"train.train_subset={subset}"] if subset else [])]
    if copies == 0:
        return "binary.yaml", base
    return "binary-da.yaml", [*base, f"augment.n_copies={copies}"]


def render(res: Results) -> str:
    rows = sorted(res.data["rows"].values(), key=lambda r: r["copies"])
    table = [[r["copies"], 100 * r["score"], r["train_examples"], r["wall_time_s"] / 60,
              " → ".join(f"{s['stage']} {100 * s[r['primary_metric']]:.1f}" for s in r["stages"])] for r in rows]
    task = rows[0]["task"] if rows else ""
    return ("# Augmented copies per example: TSPQ W1A1 + DA on " + task + " (dev, ×100)\n\n"
            "Produced by `python benchmarks/tspq_da_copies.py`; commands, dates, machine and load in "
            "`tspq_da_copies.json`. 0 copies = the binary recipe without DA on the same examples. Training "
            f"examples: the last stage's (originals + copies), from a {rows[0]['train_examples'] if rows else ''}-example "
            "subset; one seed, so a step of a point or two is within noise.\n\n"
            + md_table(["copies", "dev score", "train examples", "wall min", "dev after each stage"], table)
            + ("\nSome points ran with an earlier schedule than the binary recipes have today (the stage column "
               "shows each point's); a rerun skips finished points, so `--copies` with new counts adds points of "
               "today's schedule beside them.\n" if any(_schedule(r) != _schedule_today() for r in rows) else "")
            + _pick(rows))


def _schedule(row: dict) -> list[str]:
    return [s["stage"] for s in row["stages"]]


def _schedule_today() -> list[str]:
    return [s.name for s in load_recipe(REPO / "recipes" / "tspq" / "binary.yaml").stages]


def _pick(rows: list[dict]) -> str:
    """The gain of each step of the curve per extra 1000 training examples (the cost of DA grows
    with them), and the count the DA rows use (``tspq_fair_configs.DA_COPIES``)."""
    if len(rows) < 2:
        return ""
    steps = [f"{a['copies']} → {b['copies']}: {100 * (b['score'] - a['score']):+.1f} points, "
             f"{100 * (b['score'] - a['score']) / ((b['train_examples'] - a['train_examples']) / 1000):+.2f} per "
             "1000 more examples" for a, b in zip(rows, rows[1:])]
    return ("\nEach step of the curve: " + "; ".join(steps) + f". The DA rows of tspq_fair.py use {DA_COPIES} "
            "copies (`DA_COPIES`): the last step whose gain per added example stays within a factor of about two "
            "of the step before it; beyond it a copy buys far less than it costs.\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="stsb")
    ap.add_argument("--subset", type=int, default=800, help="training examples before augmentation")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--copies", nargs="+", type=int, default=[0, 1, 4, 8])
    ap.add_argument("--max-steps", type=int, help="cap every stage (smoke test of the script)")
    return ap.parse_args(argv)


def planned_recipes(args: argparse.Namespace) -> list[tuple[str, Path, list[str]]]:
    """(row key, recipe file, overrides) of every point ``args`` asks for (checked by the tests)."""
    plans = []
    for copies in args.copies:
        recipe_file, overrides = overrides_for(copies, args.subset, args.seq)
        plans.append((f"{args.task}/copies{copies}", REPO / "recipes" / "tspq" / recipe_file, overrides))
    return plans


def main() -> None:
    args = parse_args()
    res = Results("tspq_da_copies" if args.max_steps is None else "tspq_da_copies_smoke",
                  "TSPQ W1A1 + DA: dev score against augmented copies per example")
    teacher = require_teacher(args.task)
    for copies in args.copies:
        key = f"{args.task}/copies{copies}"
        if res.done(key):
            print(f"[skip] {key}")
            continue
        recipe_file, overrides = overrides_for(copies, args.subset, args.seq)
        out = WORK / "tspq_da_copies" / args.task / f"copies{copies}"
        table = run_recipe(load_recipe(REPO / "recipes" / "tspq" / recipe_file, overrides), model=str(teacher),
                           task=args.task, data_dir=str(data_root() / "glue"), output_dir=str(out),
                           max_steps=args.max_steps, resume=out.is_dir(), recipe_source=f"recipes/tspq/{recipe_file}")
        last, m = table["stages"][-1], table["primary_metric"]
        res.add(key, {"task": args.task, "copies": copies, "recipe": f"recipes/tspq/{recipe_file}",
                      "overrides": overrides, "primary_metric": m, "score": last[m], "score_unit": "fraction",
                      "train_examples": last["train_examples"], "stages": table["stages"],
                      "wall_time_s": round(sum(s["wall_time_s"] for s in table["stages"]), 1), "wall_time_unit": "s"})
        res.save(render(res))


if __name__ == "__main__":
    main()
