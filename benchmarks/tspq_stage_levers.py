"""Where the binary steps lose: the levers of the w1 and w1a1 stages, one at a time.

With the ternary step fixed (tspq_w2_levers.py), the fair rows (tspq_fair.py) lose at the binary
steps: on STS-B the w2 stage ends at 79.5, binary weights (w1) at 48.7 and W1A1 at 22.5, and W1A1
falls to the majority floor on RTE and MRPC. This script studies one stage at a time, as
tspq_w2_levers.py did for w2:

  * a *base* run trains the shipped recipe's stages before the studied one, once per task (seed 42),
    so every variant starts from the same student;
  * each variant runs the studied stage alone from that student (``init_from: student``), on the full
    training set, with a dev evaluation every half epoch (the curve shows whether it still moves),
    changing exactly one thing against the shipped stage.

    python benchmarks/tspq_stage_levers.py --stage w1 [--task stsb] [--variants NAME ...] [--redo]
    python benchmarks/tspq_stage_levers.py --stage w1a1 --task rte

Results: docs/results/tspq_stage_levers.{json,md}, one row per (stage, task, variant), written as
each finishes; a rerun skips finished rows and resumes interrupted ones from their checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, WORK, Results, data_root, md_table, slug  # noqa: E402
from teacher_glue import require_teacher  # noqa: E402
from tspq_fair_configs import BUDGETS  # noqa: E402
from tspq_glue import majority_scores  # noqa: E402
from tspq_w2_levers import EVALS_PER_EPOCH, _curve, _flow, _steps_per_epoch  # noqa: E402

from kronbit.runner import load_recipe, run_recipe  # noqa: E402

RECIPE = "binary.yaml"
SEED = 42
# The studied stage as the recipe had it when the study ran, run from the base student. The w1
# study ran before its results changed the recipe (BiT's mean-centred BWN, a binary embedding
# table, 1 epoch at 2e-4): STUDY_QUANT pins those options so its rows stay reproducible; the w1a1
# study starts from the revised recipe.
SHIPPED = {
    "w1": {"name": "w1", "w_bits": 1, "learning_rate": 2.0e-4, "epochs": 1},
    "w1a1": {"name": "w1a1", "w_bits": 1, "a_bits": 1, "epochs": 4, "learning_rate": 2.0e-4, "kd": {"attention": 0}},
}
W1A2 = {"name": "w1a2", "w_bits": 1, "a_bits": 2, "epochs": 2, "learning_rate": 2.0e-4, "kd": {"attention": 0}}
# The w1a1 study ran before the recipe adopted its W1A2 rung (a lever found here): its base stays
# the W1 student and its 2-bit variants keep the min-max quantizer they name.
STUDY_QUANT = {"w1": ["quant.mean_centering=true", "quant.embedding_bits=null"], "w1a1": ["quant.act_quantizer=auto"]}
BASE_BEFORE = {"w1": "w1", "w1a1": "w1a2"}  # the base student: the shipped stages before this one
# stage -> variant -> (what changes in the stage, top-level overrides). The first is the shipped stage.
VARIANTS: dict[str, dict[str, tuple[dict, list[str]]]] = {
    "w1": {
        "recipe (bwn per row, lr 2e-4, 1 epoch)": ({}, []),
        # A binary weight moves only when its latent value crosses its row mean; with Adam a step
        # moves a weight by about the learning rate, against |w| ~ 0.04 in MiniLM's matrices.
        "lr 5e-4": ({"learning_rate": 5.0e-4}, []),
        "lr 1e-3": ({"learning_rate": 1.0e-3}, []),
        "lr 2e-4, 3 epochs": ({"epochs": 3}, []),
        "lr 5e-4, 3 epochs": ({"learning_rate": 5.0e-4, "epochs": 3}, []),
        # What binarizing the 384-wide word embeddings costs on its own, and a ternary table.
        "embeddings full precision": ({}, ["quant.quantize_embeddings=false"]),
        "embeddings 2-bit": ({}, ["quant.embedding_bits=2"]),
        "bwn without mean centring (BinaryBERT)": ({}, ["quant.mean_centering=false"]),
        "bwn per tensor": ({}, ["quant.granularity=tensor"]),
        "no attention-score KD": ({"kd": {"attention": 0}}, []),
        # The single levers that helped, together (the 2-bit table and BinaryBERT's BWN from the
        # first stage on, as the variants that change a quant option).
        "combined: lr 5e-4, 3 epochs, no centring, 2-bit embeddings":
            ({"learning_rate": 5.0e-4, "epochs": 3}, ["quant.mean_centering=false", "quant.embedding_bits=2"]),
    },
    "w1a1": {
        "recipe (lr 2e-4, 4 epochs, no score KD)": ({}, []),
        "lr 5e-4": ({"learning_rate": 5.0e-4}, []),
        "lr 1e-4": ({"learning_rate": 1.0e-4}, []),
        "lr 2e-4, 8 epochs": ({"epochs": 8}, []),
        # BiT's true W1A1 (binary attention) against full-precision attention matmuls.
        "attention full precision": ({}, ["quant.attention=full"]),
        "ffn input signed elastic": ({}, ["quant.ffn_act_quantizer=elastic"]),
        "attention KD as probability KL": ({"kd": {"attention": 1.0, "attention_loss": "prob_kl"}}, []),
        "logits KD only": ({"kd": {"attention": 0, "hidden": 0, "embedding": 0}}, []),
        "+ gold-label loss (kd.task 1)": ({"kd": {"attention": 0, "task": 1.0}}, []),
        # BiT's multi-step distillation: an intermediate activation stage (binary weights, 2-bit
        # linear inputs, attention matmuls full precision) before W1A1. The stage table reports
        # it as the first of the row's stages; the curve and score are the W1A1 stage's.
        "W1A2 stage first (2 epochs, min-max 2-bit)": ({"before": [W1A2]}, []),
        "W1A2 stage first (2 epochs, elastic 2-bit)": ({"before": [W1A2]}, ["quant.act_quantizer=elastic"]),
        # ... and BiT's multi-distillation: the W1A1 stage distils the W1A2 student, not the teacher
        "W1A2 stage first, W1A1 distils it (min-max 2-bit)": ({"before": [W1A2], "distill_from": "previous"}, []),
        "W1A2 stage first, W1A1 distils it (elastic 2-bit)":
            ({"before": [W1A2], "distill_from": "previous"}, ["quant.act_quantizer=elastic"]),
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", default="w1", choices=list(VARIANTS))
    ap.add_argument("--task", default="stsb", choices=list(BUDGETS))
    ap.add_argument("--variants", nargs="+", help="variant names (default: all of the stage's)")
    ap.add_argument("--max-steps", type=int, help="cap every stage (smoke test of the script)")
    ap.add_argument("--redo", action="store_true")
    args = ap.parse_args(argv)
    args.variants = args.variants or list(VARIANTS[args.stage])
    unknown = [v for v in args.variants if v not in VARIANTS[args.stage]]
    if unknown:
        ap.error(f"unknown {args.stage} variant(s) {unknown}; choose from {list(VARIANTS[args.stage])}")
    return args


def stage_of(stage: str, variant: str) -> dict:
    change, _ = VARIANTS[stage][variant]
    change = {k: v for k, v in change.items() if k != "before"}
    kd = {**SHIPPED[stage].get("kd", {}), **change.get("kd", {})}
    out = {**SHIPPED[stage], **change, "init_from": "student"}
    if kd:
        out["kd"] = kd
    return out


def stages_of(stage: str, variant: str) -> list[dict]:
    """The variant's stages: any stages it puts before the studied one (the first starts from
    the base student), then the studied stage."""
    before = VARIANTS[stage][variant][0].get("before", [])
    if not before:
        return [stage_of(stage, variant)]
    studied = {**stage_of(stage, variant), "init_from": "previous"}
    return [{**before[0], "init_from": "student"}, *before[1:], studied]


def _common(task: str, stage: str) -> list[str]:
    return [f"{k}={v}" for k, v in BUDGETS[task].items()] + [f"train.seed={SEED}", *STUDY_QUANT[stage]]


def base_overrides(task: str, stage: str, extra: list[str] = ()) -> list[str]:
    """The shipped recipe truncated before ``stage``: the student every variant starts from. A
    variant that changes a quant option (``extra``) needs a base quantized with it too (a stage
    re-bits its student with the options it was quantized with), so that option holds from the
    first stage on."""
    recipe = load_recipe(REPO / "recipes" / "tspq" / RECIPE)
    names = [s.name for s in recipe.stages]
    keep = [{k: v for k, v in asdict(s).items() if v is not None}
            for s in recipe.stages[:names.index(BASE_BEFORE[stage])]]
    return _common(task, stage) + list(extra) + [f"stages={_flow(keep)}"]


def base_dir(task: str, stage: str, extra: list[str] = ()) -> Path:
    tail = f"-{slug(' '.join(extra))}" if extra else ""
    return WORK / "tspq_stage_levers" / task / f"base-before-{stage}{tail}"


def variant_overrides(task: str, stage: str, variant: str, steps_per_epoch: int) -> list[str]:
    _, extra = VARIANTS[stage][variant]
    every = max(1, steps_per_epoch // EVALS_PER_EPOCH)
    return _common(task, stage) + [f"train.eval_every={every}", *extra, f"stages={_flow(stages_of(stage, variant))}"]


def planned_recipes(args: argparse.Namespace, steps_per_epoch: int = 78) -> list[tuple[str, Path, list[str]]]:
    """(row key, recipe file, overrides) of every variant run ``args`` asks for (checked by the tests)."""
    return [(f"{args.stage}/{args.task}/{name}", REPO / "recipes" / "tspq" / RECIPE,
             variant_overrides(args.task, args.stage, name, steps_per_epoch)) for name in args.variants]


def main() -> None:
    args = parse_args()
    res = Results("tspq_stage_levers", "Levers of the TSPQ binary stages (w1, w1a1), one at a time (MiniLM-L6 teacher, dev)")
    tdir = require_teacher(args.task)
    data = str(data_root() / "glue")
    recipe_file = REPO / "recipes" / "tspq" / RECIPE
    bases: dict[tuple[str, ...], float] = {}

    def ensure_base(extra: list[str]) -> Path:
        # Shared by every variant with the same quant options; an interrupted one resumes.
        bdir = base_dir(args.task, args.stage, extra)
        if tuple(extra) not in bases:
            table = run_recipe(load_recipe(recipe_file, base_overrides(args.task, args.stage, extra)), model=str(tdir),
                               task=args.task, data_dir=data, output_dir=str(bdir), max_steps=args.max_steps,
                               resume=bdir.is_dir(), recipe_source=f"recipes/tspq/{RECIPE}, the stages before {args.stage}")
            bases[tuple(extra)] = table["stages"][-1][table["primary_metric"]]
        return bdir

    spe = _steps_per_epoch(args.task, load_recipe(recipe_file, _common(args.task, args.stage)).train.batch_size)
    for key, rfile, overrides in planned_recipes(args, spe):
        name = key.split("/", 2)[2]
        out = WORK / "tspq_stage_levers" / args.task / args.stage / slug(name)
        if res.done(key) and not args.redo:
            row = res.data["rows"][key]
            if "stage_scores" not in row and (out / "stages.json").is_file():
                row["stage_scores"] = _stage_scores(json.loads((out / "stages.json").read_text()))
                res.save(render(res))
            print(f"[skip] {key}")
            continue
        recipe = load_recipe(rfile, overrides)
        extra = VARIANTS[args.stage][name][1]
        bdir = ensure_base(extra)
        t0 = time.time()
        table = run_recipe(recipe, model=str(tdir), task=args.task, data_dir=data, output_dir=str(out),
                           max_steps=args.max_steps, resume=out.is_dir() and not args.redo, overwrite=args.redo,
                           student=bdir / "model",
                           recipe_source=f"recipes/tspq/{RECIPE} + one {args.stage} stage of benchmarks/tspq_stage_levers.py")
        m, last = table["primary_metric"], table["stages"][-1]
        stage_dir = next(d for d in sorted((out / "stages").iterdir()) if d.name.endswith(f"-{args.stage}"))
        res.add(key, {"stage": args.stage, "task": args.task, "variant": name, "recipe": f"recipes/tspq/{RECIPE}",
                      "overrides": overrides, "base_overrides": base_overrides(args.task, args.stage, extra),
                      "base_score": bases[tuple(extra)], "primary_metric": m, "score": last[m],
                      "score_unit": "fraction (dev, best evaluation)", "teacher_score": table["teacher"].get(m),
                      "steps": last["steps"], "train_examples": last["train_examples"],
                      "stage_scores": _stage_scores(table),
                      "curve": [{"step": s, "score": v, "eval_loss": loss} for s, v, loss in _curve(stage_dir, m)],
                      "wall_time_s": round(time.time() - t0, 1), "wall_time_unit": "s"})
        res.save(render(res))
    res.save(render(res))


def _stage_scores(table: dict) -> dict[str, float]:
    """Each stage's best dev score in a variant's run (its own stages before the studied one too)."""
    return {r["stage"]: r[table["primary_metric"]] for r in table["stages"]}


def render(res: Results) -> str:
    groups: dict[tuple[str, str], list] = {}
    for r in res.data["rows"].values():
        curve = " → ".join(f"{100 * c['score']:.1f}" for c in r["curve"])
        groups.setdefault((r["stage"], r["task"]), []).append(
            [r["variant"] + "".join(f"; {st} stage {100 * v:.1f}" for st, v in list(r.get("stage_scores", {}).items())[:-1]),
             f"{100 * r['base_score']:.2f}", curve, f"{100 * r['score']:.2f}", r["steps"],
             f"{r['wall_time_s'] / 60:.1f}"])
    floors = res.data.setdefault("majority_class", {"unit": "fraction"})
    floors.update(majority_scores(sorted({t for _, t in groups if t not in floors})))
    parts = ["# Levers of the TSPQ binary stages (dev metric ×100)\n\n"
             "Produced by `python benchmarks/tspq_stage_levers.py --stage STAGE --task TASK`: the shipped "
             "recipes/tspq/binary.yaml stages before STAGE run once (seed 42, the base); each variant then runs "
             "STAGE alone from that base student, full training set, a dev evaluation every 1/"
             f"{EVALS_PER_EPOCH} epoch, changing one thing. Curve: the dev score at each evaluation; best: the "
             "checkpoint the next stage would start from. Base: the dev score the variant starts from (a variant "
             "that changes a quant option has its own base, quantized with that option from the first stage on). "
             "A variant named \"... stage first\" trains an intermediate stage between the base and STAGE (its "
             "best score follows the name; the curve is STAGE's); \"distils it\": STAGE's KD targets come from that "
             "intermediate student instead of the teacher (`distill_from`, BiT's multi-distillation). Commands, "
             "dates and machine in `tspq_stage_levers.json`. "
             "Wall minutes are elapsed time on a shared machine, no measure of speed.\n"]
    for (stage, task), rows in groups.items():
        any_row = next(r for r in res.data["rows"].values() if r["task"] == task and r["stage"] == stage)
        parts.append(f"\n## {stage} on {task}: teacher {100 * any_row['teacher_score']:.2f}, majority class "
                     f"{100 * floors[task]:.2f}\n\n"
                     + md_table(["variant", "base", "dev curve", "best", "steps", "wall min"], rows))
    return "".join(parts)


if __name__ == "__main__":
    main()
