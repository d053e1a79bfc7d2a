"""Ablation of the TSPQ binary-activation stage (W1 → W1A1): which distillation losses and learning
rate recover most of the accuracy binarizing the activations costs.

Each variant trains only the last stage of recipes/tspq/binary.yaml (``w1a1``), starting from the
same finished ``w1`` stage of a ``benchmarks/tspq_glue.py`` run, with the same examples and steps;
only the recipe overrides differ. Dev accuracy after the stage.

    python benchmarks/tspq_ablation.py [--task sst2] [--epochs 1] [--variants NAME ...] [--redo]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, WORK, Results, data_root, md_table  # noqa: E402
from tspq_glue import BUDGETS  # noqa: E402
from teacher_glue import teacher_dir  # noqa: E402

from kronbit.formats import load_model  # noqa: E402
from kronbit.data.glue import get_task, load_split  # noqa: E402
from kronbit.runner import load_recipe
from kronbit.runner.glue import run_stage  # noqa: E402

VARIANTS = {  # name -> overrides of the w1a1 stage (index 4)
    "recipe (score MSE, lr 5e-5)": [],
    "attention prob KL": ["kd.attention_loss=prob_kl"],
    "lr 2e-4": ["stages.4.learning_rate=2e-4"],
    "prob KL + lr 2e-4": ["kd.attention_loss=prob_kl", "stages.4.learning_rate=2e-4"],
    "no attention KD + lr 2e-4": ["kd.attention=0", "stages.4.learning_rate=2e-4"],
    "no attention KD": ["kd.attention=0"],
    "logits KD only + lr 2e-4": ["kd.attention=0", "kd.hidden=0", "kd.embedding=0", "stages.4.learning_rate=2e-4"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="sst2", choices=list(BUDGETS))
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--redo", action="store_true")
    args = ap.parse_args()
    res = Results("tspq_ablation", "TSPQ binary-activation stage: KD losses and learning rate")
    task = get_task(args.task)
    glue = data_root() / "glue"
    train_ex, dev_ex = load_split(task, glue, "train"), load_split(task, glue, "dev")
    init = WORK / "tspq" / args.task / "tspq_w1a1" / "stages" / "04-w1" / "model"
    if not init.is_dir():
        sys.exit(f"no finished w1 stage at {init}: run benchmarks/tspq_glue.py --tasks {args.task} --configs tspq_w1a1")
    budget = [f"{k}={v}" for k, v in BUDGETS[args.task].items()]
    for name in args.variants:
        key = f"{args.task}/{name}/ep{args.epochs:g}"
        if res.done(key) and not args.redo:
            print(f"[skip] {key}")
            continue
        overrides = [*budget, f"stages.4.epochs={args.epochs}", *VARIANTS[name]]
        recipe = load_recipe(REPO / "recipes" / "tspq" / "binary.yaml", overrides)
        out = WORK / "tspq_ablation" / args.task / name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        t0 = time.time()
        row = run_stage(recipe, 4, init_dir=init, teacher_dir=teacher_dir(args.task) / "model", stage_out=out,
                        task=task, train_ex=train_ex, dev_ex=dev_ex, max_steps=None, load_model=load_model, run_out=out)
        res.add(key, {"task": args.task, "variant": name, "overrides": overrides, "epochs": args.epochs,
                      "score": row[task.primary_metric], "metric": task.primary_metric, "unit": "fraction",
                      "steps": row["steps"], "wall_time_s": round(time.time() - t0, 1)})
        res.save(render(res))
    res.save(render(res))


def render(res: Results) -> str:
    rows = [[r["task"], r["variant"], r["epochs"], r["steps"], 100 * r["score"]] for r in res.data["rows"].values()]
    return ("# TSPQ ablation: the binary-activation stage (W1 → W1A1)\n\nProduced by `python benchmarks/tspq_ablation.py`; "
            "each variant starts from the same finished W1 stage and sees the same examples.\n\n"
            + md_table(["task", "variant", "epochs", "steps", "dev metric ×100"], rows))


if __name__ == "__main__":
    main()
