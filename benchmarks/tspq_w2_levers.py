"""Where the ternary weight step loses: the levers of the w2 stage, one at a time.

In the fair-budget rows (tspq_fair.py) the first TSPQ stage, ternary weights with full-precision
activations, is where the student falls: on RTE it ends at 51.99 (majority floor 52.71, teacher
59.57), and the binary stages after it never recover. The accuracy issue names the places to look:
the quantizer's definition and granularity, scale initialisation, the learning rate and the KD
weights of that stage. Each variant below is the shipped recipe's w2 stage run alone from the
teacher, on the full training set, for the recipe's one epoch with a dev evaluation every half epoch
(so the curve shows whether a variant is still moving), changing exactly one thing. A 4-bit row says how
much any weight quantization costs on the task.

    python benchmarks/tspq_w2_levers.py [--task rte] [--variants NAME ...] [--redo]

Results: docs/results/tspq_w2_levers.{json,md}, one row per variant, written as each finishes; a
rerun skips finished rows and resumes an interrupted one from its checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, WORK, Results, data_root, md_table, slug  # noqa: E402
from teacher_glue import require_teacher  # noqa: E402
from tspq_fair_configs import BUDGETS  # noqa: E402
from tspq_glue import majority_scores  # noqa: E402

from kronbit.data.glue import load_split  # noqa: E402
from kronbit.runner import load_recipe, run_recipe  # noqa: E402

RECIPE = "binary.yaml"
EPOCHS = 1  # the recipe's own stage length; the half-epoch evaluation shows whether it still moves
EVALS_PER_EPOCH = 2
BASE_STAGE = {"name": "w2", "w_bits": 2, "init_from": "teacher", "learning_rate": 1.0e-4}
# name -> (what changes in the stage, top-level overrides). The first is the recipe's stage as shipped.
VARIANTS = {
    "recipe (twn per row, lr 1e-4, all KD)": ({}, []),
    # The teacher is barely above the floor on RTE, so its soft labels carry little margin; the
    # gold labels add the margin the argmax needs.
    "+ gold-label loss (kd.task 1)": ({"kd": {"task": 1.0}}, []),
    "lr 5e-5": ({"learning_rate": 5.0e-5}, []),
    "lr 2e-4": ({"learning_rate": 2.0e-4}, []),
    "lr 4e-4": ({"learning_rate": 4.0e-4}, []),
    # Still rising after one epoch at 2e-4 on STS-B: does a second epoch flatten it?
    "lr 2e-4, 2 epochs": ({"learning_rate": 2.0e-4, "epochs": 2}, []),
    # Score MSE can dwarf the other losses (it did at W1A1, docs/results/tspq_ablation.md).
    "no attention-score KD": ({"kd": {"attention": 0}}, []),
    "embeddings full precision": ({}, ["quant.quantize_embeddings=false"]),
    "twn per tensor (TernaryBERT)": ({}, ["quant.granularity=tensor"]),
    "lsq 2-bit (learned step)": ({}, ["quant.weight_quantizer=lsq"]),
    "4-bit weights (reference)": ({"name": "w4", "w_bits": 4}, []),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="rte", choices=list(BUDGETS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--max-steps", type=int, help="cap the stage (smoke test of the script)")
    ap.add_argument("--redo", action="store_true")
    return ap.parse_args(argv)


def _flow(d: dict) -> str:
    # The stage list goes in as one YAML flow override; JSON is valid YAML flow syntax.
    return json.dumps(d)


def stage_of(variant: str) -> dict:
    change, _ = VARIANTS[variant]
    return {**BASE_STAGE, **change}


def recipe_overrides(task: str, variant: str, steps_per_epoch: int) -> list[str]:
    _, extra = VARIANTS[variant]
    budget = [f"{k}={v}" for k, v in BUDGETS[task].items()]
    every = max(1, steps_per_epoch // EVALS_PER_EPOCH)
    return budget + [f"train.epochs={EPOCHS}", f"train.eval_every={every}", *extra,
                     f"stages=[{_flow(stage_of(variant))}]"]


def planned_recipes(args: argparse.Namespace, steps_per_epoch: int = 78) -> list[tuple[str, Path, list[str]]]:
    """(row key, recipe file, overrides) of every run ``args`` asks for (checked by the tests)."""
    return [(f"{args.task}/{name}", REPO / "recipes" / "tspq" / RECIPE, recipe_overrides(args.task, name, steps_per_epoch))
            for name in args.variants]


def _steps_per_epoch(task: str, batch_size: int) -> int:
    n = BUDGETS[task].get("train.train_subset")
    if n is None:
        n = len(load_split(task, data_root() / "glue", "train"))  # the full training set
    return -(-int(n) // batch_size)


def _curve(stage_dir: Path, metric: str) -> list[tuple[int, float, float]]:
    out = []
    for line in (stage_dir / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        if f"eval_{metric}" in row:
            out.append((row["step"], row[f"eval_{metric}"], row.get("eval_loss")))
    return out


def main() -> None:
    args = parse_args()
    res = Results("tspq_w2_levers", "Levers of the TSPQ ternary-weight stage, one at a time (MiniLM-L6 teacher, dev)")
    tdir = require_teacher(args.task)
    base = load_recipe(REPO / "recipes" / "tspq" / RECIPE, [f"{k}={v}" for k, v in BUDGETS[args.task].items()])
    spe = _steps_per_epoch(args.task, base.train.batch_size)
    for key, recipe_file, overrides in planned_recipes(args, spe):
        name = key.split("/", 1)[1]
        if res.done(key) and not args.redo:
            print(f"[skip] {key}")
            continue
        recipe = load_recipe(recipe_file, overrides)
        out = WORK / "tspq_w2_levers" / args.task / slug(name)
        t0 = time.time()
        table = run_recipe(recipe, model=str(tdir), task=args.task, data_dir=str(data_root() / "glue"),
                           output_dir=str(out), max_steps=args.max_steps, resume=out.is_dir() and not args.redo,
                           overwrite=args.redo, recipe_source=f"recipes/tspq/{RECIPE} + one w2 stage of benchmarks/tspq_w2_levers.py")
        m, last = table["primary_metric"], table["stages"][-1]
        stage_dir = next((out / "stages").iterdir())
        res.add(key, {"task": args.task, "variant": name, "recipe": f"recipes/tspq/{RECIPE}", "overrides": overrides,
                      "primary_metric": m, "score": last[m], "score_unit": "fraction (dev, best evaluation)",
                      "teacher_score": table["teacher"].get(m), "steps": last["steps"],
                      "train_examples": last["train_examples"],
                      "curve": [{"step": s, "score": v, "eval_loss": loss} for s, v, loss in _curve(stage_dir, m)],
                      "wall_time_s": round(time.time() - t0, 1), "wall_time_unit": "s"})
        res.save(render(res))
    res.save(render(res))


def render(res: Results) -> str:
    rows_by_task: dict[str, list] = {}
    for r in res.data["rows"].values():
        curve = " → ".join(f"{100 * c['score']:.1f}" for c in r["curve"])
        rows_by_task.setdefault(r["task"], []).append(
            [r["variant"], curve, f"{100 * r['score']:.2f}", r["steps"], f"{r['wall_time_s'] / 60:.1f}"])
    floors = res.data.setdefault("majority_class", {"unit": "fraction"})
    floors.update(majority_scores([t for t in rows_by_task if t not in floors]))
    parts = ["# Levers of the TSPQ ternary-weight stage (dev metric ×100)\n\n"
             "Produced by `python benchmarks/tspq_w2_levers.py`: the w2 stage of recipes/tspq/binary.yaml run "
             f"alone from the teacher, full training set, {EPOCHS} epochs, a dev evaluation every 1/{EVALS_PER_EPOCH} "
             "epoch; each variant changes one thing. Curve: the dev score at each evaluation; final: the best "
             "evaluation (the checkpoint the next stage would start from). Commands, dates and machine in "
             "`tspq_w2_levers.json`. Wall minutes are elapsed time on a shared machine: they include the pauses "
             "while timed benchmarks ran and are no measure of speed.\n"]
    for task, rows in rows_by_task.items():
        teacher = next(r["teacher_score"] for r in res.data["rows"].values() if r["task"] == task)
        parts.append(f"\n## {task}: teacher {100 * teacher:.2f}, majority class {100 * floors[task]:.2f}\n\n"
                     + md_table(["variant", "dev curve", "best", "steps", "wall min"], rows))
    return "".join(parts)


if __name__ == "__main__":
    main()
