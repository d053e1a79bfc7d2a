"""Ablation of the TSPQ bit schedule: which weight-bit steps, how many epochs at each and which
learning rates, at an equal total number of epochs, on one task.

Every variant is a full staged run from the same fine-tuned teacher (``teacher_glue.py``) on the
same examples (the task's budget in ``tspq_glue.BUDGETS``); only the stage list differs. The stage
lists are written out here, not read from ``recipes/tspq/``, so a row keeps meaning what it meant
when the recipes change; the base settings (KD weights, quantizers) come from the recipe named.

    python benchmarks/tspq_schedule.py [--task sst2] [--variants NAME ...] [--redo]

Results: docs/results/tspq_schedule.{json,md}, one row per variant with every stage's dev score.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, WORK, Results, data_root, md_table, slug  # noqa: E402
from teacher_glue import require_teacher  # noqa: E402
from tspq_glue import BUDGETS  # noqa: E402

from kronbit.runner import load_recipe, run_recipe  # noqa: E402

NO_ATTN = "kd: {attention: 0}"
# name -> (base recipe, stage list as YAML flow). Binary variants total 6 epochs, ternary 4, as in
# the recipes and their one-stage baselines (direct-binary 6 epochs, direct-ternary 4).
VARIANTS = {
    # The first binary recipe: one epoch per weight step at the fine-tuning learning rate.
    "binary 8-4-2-1, lr 5e-5, then W1A1": ("binary.yaml", [
        "{name: w8, w_bits: 8, init_from: teacher}", "{name: w4, w_bits: 4}", "{name: w2, w_bits: 2}",
        "{name: w1, w_bits: 1}", f"{{name: w1a1, w_bits: 1, a_bits: 1, epochs: 2, learning_rate: 2.0e-4, {NO_ATTN}}}"]),
    # Why the learning rate rises as the bits fall: a binary weight changes only when its latent
    # value crosses zero; at 5e-5 Adam moves a latent weight at most ~0.006 in 125 steps, against
    # a mean |W| of ~0.05 in MiniLM's linear layers, so few signs flip and the stage mostly retunes
    # scales, biases and LayerNorms.
    "binary 4-2-1, lr rising, then W1A1": ("binary.yaml", [
        "{name: w4, w_bits: 4, init_from: teacher}", "{name: w2, w_bits: 2, learning_rate: 1.0e-4}",
        "{name: w1, w_bits: 1, epochs: 2, learning_rate: 2.0e-4}",
        f"{{name: w1a1, w_bits: 1, a_bits: 1, epochs: 2, learning_rate: 2.0e-4, {NO_ATTN}}}"]),
    # Binarizing the activations is the step that costs most (83.8 → 77.9 above, in 2 epochs): the
    # same progression, shorter, so that stage gets 4 of the 6 epochs.
    "binary 2-1, lr rising, then W1A1 x4": ("binary.yaml", [
        "{name: w2, w_bits: 2, init_from: teacher, learning_rate: 1.0e-4}",
        "{name: w1, w_bits: 1, learning_rate: 2.0e-4}",
        f"{{name: w1a1, w_bits: 1, a_bits: 1, epochs: 4, learning_rate: 2.0e-4, {NO_ATTN}}}"]),
    # Two stages without the progressive weight steps: teacher → W1 → W1A1.
    "binary 1 only, then W1A1": ("binary.yaml", [
        "{name: w1, w_bits: 1, init_from: teacher, epochs: 2, learning_rate: 2.0e-4}",
        f"{{name: w1a1, w_bits: 1, a_bits: 1, epochs: 4, learning_rate: 2.0e-4, {NO_ATTN}}}"]),
    # The one-stage baselines, as recipes/tspq/direct-*.yaml, so they share this run's teacher.
    "direct W1A1 (baseline)": ("direct-binary.yaml", [
        f"{{name: w1a1, w_bits: 1, a_bits: 1, init_from: teacher, learning_rate: 2.0e-4, {NO_ATTN}}}"]),
    "direct W2A8 (baseline)": ("direct-ternary.yaml", ["{name: w2a8, w_bits: 2, a_bits: 8, init_from: teacher}"]),
    "ternary 8-4-2, lr 5e-5, then W2A8": ("ternary.yaml", [
        "{name: w8, w_bits: 8, init_from: teacher}", "{name: w4, w_bits: 4}", "{name: w2, w_bits: 2}",
        "{name: w2a8, w_bits: 2, a_bits: 8}"]),
    "ternary 4-2, lr rising, then W2A8": ("ternary.yaml", [
        "{name: w4, w_bits: 4, init_from: teacher}", "{name: w2, w_bits: 2, epochs: 2, learning_rate: 1.0e-4}",
        "{name: w2a8, w_bits: 2, a_bits: 8, learning_rate: 1.0e-4}"]),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="sst2", choices=list(BUDGETS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--redo", action="store_true")
    return ap.parse_args(argv)


def recipe_overrides(task: str, variant: str) -> list[str]:
    return [f"{k}={v}" for k, v in BUDGETS[task].items()] + ["stages=[" + ", ".join(VARIANTS[variant][1]) + "]"]


def planned_recipes(args: argparse.Namespace) -> list[tuple[str, Path, list[str]]]:
    """(row key, recipe file, overrides) of every run ``args`` asks for (checked by the tests)."""
    return [(f"{args.task}/{name}", REPO / "recipes" / "tspq" / VARIANTS[name][0], recipe_overrides(args.task, name))
            for name in args.variants]


def main() -> None:
    args = parse_args()
    res = Results("tspq_schedule", "TSPQ bit-schedule ablation at equal total epochs (MiniLM-L6 teacher, dev)")
    tdir = require_teacher(args.task)
    for name in args.variants:
        key = f"{args.task}/{name}"
        if res.done(key) and not args.redo:
            print(f"[skip] {key}")
            continue
        base = VARIANTS[name][0]
        overrides = recipe_overrides(args.task, name)
        recipe = load_recipe(REPO / "recipes" / "tspq" / base, overrides)
        out = WORK / "tspq_schedule" / args.task / slug(name)
        t0 = time.time()
        table = run_recipe(recipe, model=str(tdir), task=args.task, data_dir=str(data_root() / "glue"),
                           output_dir=str(out), resume=out.is_dir() and not args.redo, overwrite=args.redo,
                           recipe_source=f"recipes/tspq/{base} + stage list of benchmarks/tspq_schedule.py")
        m = table["primary_metric"]
        res.add(key, {"task": args.task, "variant": name, "recipe": f"recipes/tspq/{base}", "overrides": overrides,
                      "primary_metric": m, "score": table["stages"][-1][m], "score_unit": "fraction (dev)",
                      "teacher_score": table["teacher"].get(m),
                      "stages": [{"stage": s["stage"], "w_bits": s["w_bits"], "a_bits": s["a_bits"], "score": s[m],
                                  "steps": s["steps"], "wall_time_s": s["wall_time_s"]} for s in table["stages"]],
                      "epochs_total": sum(recipe.train_settings(s).epochs for s in recipe.stages),
                      "wall_time_s": round(time.time() - t0, 1)})
        res.save(render(res))
    res.save(render(res))


def render(res: Results) -> str:
    rows = []
    for r in res.data["rows"].values():
        steps = " → ".join(f"{s['stage']} {100 * s['score']:.1f}" for s in r["stages"])
        rows.append([r["task"], r["variant"], r["epochs_total"], steps, 100 * r["score"], r["wall_time_s"] / 60])
    return ("# TSPQ bit-schedule ablation (equal total epochs; dev metric ×100)\n\n"
            "Produced by `python benchmarks/tspq_schedule.py`; each variant is a full staged run from the same "
            "teacher on the same examples (budget of `tspq_glue.py`); commands, dates and machine in "
            "`tspq_schedule.json`. Stage column: dev score after each stage.\n\n"
            + md_table(["task", "variant", "epochs", "stages (dev after each)", "final", "wall min"], rows))


if __name__ == "__main__":
    main()
