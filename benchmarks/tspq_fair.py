"""TSPQ on GLUE at a fair budget, beyond noise: full training sets (SST-2: the teacher's 20k), two
seeds for every TSPQ and direct row, and the table the accuracy issue asks for: five tasks ×
teacher, majority floor, TSPQ W1A1, TSPQ W1A1 + DA, TSPQ W2A8, direct W1A1, direct W2A8, as mean
and spread over seeds, the progressive-minus-direct difference with its spread, and the papers'
figures beside it.

    python benchmarks/teacher_glue.py                 # first: the teachers
    python benchmarks/tspq_da_copies.py               # then: how many augmented copies (DA rows)
    python benchmarks/tspq_fair.py [--tasks rte] [--configs tspq_w1a1 direct_w1a1] [--seeds 42 43]

Every (task, config, seed) row is written to docs/results/tspq_fair.json as soon as it finishes;
a rerun skips finished rows and resumes an interrupted row's finished stages and checkpoints
(run directories under benchmarks/_work/tspq_fair/). Rows run in the order given, so the cheapest
tasks come first by default.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, WORK, Results, data_root  # noqa: E402
from teacher_glue import require_teacher  # noqa: E402
from tspq_fair_configs import BUDGETS, CONFIGS, DA_COPIES, SEEDED, fingerprint, overrides_for  # noqa: E402
from tspq_fair_report import curve_of, render  # noqa: E402

from kronbit.runner import load_recipe, run_recipe  # noqa: E402
from kronbit.runner.stages import finished_stages, stage_dir  # noqa: E402


def run_dir_of(row: dict) -> Path:
    """Where a row trained (rows renamed since keep their first config's directory)."""
    if "run_dir" in row:
        return REPO / row["run_dir"]
    return WORK / "tspq_fair" / row["task"] / row.get("renamed_from", row["config"]) / f"seed{row['seed']}"


def final_stage_curve(run_dir: Path, metric: str) -> list[float] | None:
    """The last stage's dev score after each of its evaluations (epochs), in order, or None if the
    run directory is gone. A row's ``score`` is the best of these (each stage keeps its best
    epoch), so a one-stage baseline that trains 6 epochs picks from 6 evaluations where TSPQ's
    1-epoch last stage has one; the last entry is the score with no pick on the dev set."""
    stages = sorted((run_dir / "stages").glob("[0-9][0-9]-*"))
    files = sorted((stages[-1] / "metrics").glob("eval-step*.json")) if stages else []
    if not files:
        return None
    return [json.loads(f.read_text())[f"eval_{metric}"] for f in files]


def backfill_curves(res: Results) -> int:
    """Give every row whose run directory is still here its ``final_stage_curve`` (rows that ran
    before the curve was recorded), and drop a curve that is not the row's own (``curve_of``);
    returns how many rows changed."""
    n = 0
    rows = res.data["rows"]
    for row in sorted(rows.values(), key=lambda r: "same_run_as" in r):  # a twin's run first
        if curve_of(row):
            continue
        if "same_run_as" in row:
            curve = rows.get(row["same_run_as"], {}).get("final_stage_curve")
        else:
            curve = final_stage_curve(run_dir_of(row), row["primary_metric"])
        if not curve_of({**row, "final_stage_curve": curve}):
            curve = None
        if curve != row.get("final_stage_curve"):
            n += 1
            if curve:
                row["final_stage_curve"] = curve
            else:
                del row["final_stage_curve"]
    return n


def _stage_is_the_rows(row: dict, k: int, path: Path) -> bool:
    """Is the finished stage in ``path`` the one the row recorded as its stage ``k``? (A renamed
    row's directory may since hold a newer recipe's run.)"""
    result = path / "result.json"
    if not result.is_file():
        return False
    got, m = json.loads(result.read_text()), row["primary_metric"]
    recorded = row.get("stages", [])
    return k < len(recorded) and abs(got.get(m, float("nan")) - recorded[k][m]) < 1e-9


def reuse_stages(res: Results, recipe, task: str, seed: int, out: Path, more_than: int = 0) -> dict | None:
    """Before a new run: copy the finished leading stages of another row's run (same task and
    seed) that trained them with exactly this recipe's settings (``fingerprint`` cut after those
    stages: same data, seed, quant, KD and train sections), so lever rows that differ only in a
    late stage do not retrain the early ones. The run then resumes after them. Only when more
    than ``more_than`` stages can be copied (what ``out`` has finished itself). Returns
    {"from": row key, "stages": n} or None."""
    n = len(recipe.stages)
    best = None
    for key, row in res.data["rows"].items():
        if row["task"] != task or row["seed"] != seed or "same_run_as" in row:
            continue
        other = load_recipe(REPO / row["recipe"], row["overrides"])
        if fingerprint(other) != row.get("recipe_fingerprint"):  # trained with an earlier recipe
            continue
        src = run_dir_of(row)
        if src.resolve() == out.resolve():
            continue
        k = 0
        while (k < min(n - 1, len(other.stages)) and fingerprint(recipe, k + 1) == fingerprint(other, k + 1)
               and _stage_is_the_rows(row, k, stage_dir(src, k, other.stages[k].name))):
            k += 1
        if k and (best is None or k > best[1]):
            best = (key, k, src)
    if best is None or best[1] <= more_than:
        return None
    key, k, src = best
    if out.is_dir():  # a stale or interrupted run of this row, behind the copied stages: replaced
        shutil.rmtree(out)
    for i in range(k):
        name = recipe.stages[i].name
        shutil.copytree(stage_dir(src, i, name), stage_dir(out, i, name),
                        ignore=shutil.ignore_patterns("checkpoints"))
    return {"from": key, "stages": k}


def run_row(res: Results, task: str, name: str, seed: int, da_copies: int, max_steps: int | None,
            redo: bool) -> None:
    key = f"{task}/{name}/seed{seed}"
    recipe_file, _ = CONFIGS[name]
    overrides = overrides_for(task, name, seed, da_copies)
    recipe = load_recipe(REPO / "recipes" / "tspq" / recipe_file, overrides)
    fp = fingerprint(recipe)
    stale = res.done(key) and res.data["rows"][key].get("recipe_fingerprint") != fp
    if res.done(key) and not redo and not stale:
        print(f"[skip] {key}")
        return
    if stale:  # the recipe changed since this row ran: keep the old row for the record, rerun it
        print(f"[stale] {key}: trained with an earlier recipe, running it again")
        old = res.data["rows"].pop(key)
        res.data.setdefault("superseded", {})[f"{key}@{old['date']}"] = old
    twin = next((k for k, r in res.data["rows"].items() if k != key and r["task"] == task and r["seed"] == seed
                 and r.get("recipe_fingerprint") == fp and "same_run_as" not in r), None)
    if twin and not redo:  # e.g. a lever config that a recipe file has since adopted: no need to train it twice
        print(f"[same run] {key}: {twin} trained exactly this recipe; its row is reused")
        res.data["rows"][key] = {**res.data["rows"][twin], "config": name, "recipe": f"recipes/tspq/{recipe_file}",
                                 "overrides": overrides, "same_run_as": twin}
        res.save(render(res))
        return
    # a smoke run (--max-steps) keeps its capped stages apart from the real rows' run directories
    out = WORK / ("tspq_fair" if max_steps is None else "tspq_fair_smoke") / task / name / f"seed{seed}"
    fresh = redo or stale
    reused = None
    # A stale row's directory would be overwritten anyway: when a recipe changed only its late
    # stages, the leading ones another current row trained with the same settings are copied in
    # its place instead of trained again (a recipe that adopted a last-stage lever). So is an
    # interrupted run's directory when another row has finished more of the same stages.
    if not redo and max_steps is None:
        have = 0 if stale else finished_stages(recipe, out)  # 0 for no directory
        reused = reuse_stages(res, recipe, task, seed, out, more_than=have)
        if reused:
            fresh = False
            print(f"[reuse] {key}: its first {reused['stages']} stage(s) as trained by {reused['from']}")
    table = run_recipe(recipe, model=str(require_teacher(task)), task=task, data_dir=str(data_root() / "glue"),
                       output_dir=str(out), max_steps=max_steps, resume=out.is_dir() and not fresh,
                       overwrite=fresh, recipe_source=f"recipes/tspq/{recipe_file}")
    last, m = table["stages"][-1], table["primary_metric"]
    res.add(key, {"task": task, "config": name, "seed": seed, "recipe": f"recipes/tspq/{recipe_file}",
                  "overrides": overrides, "recipe_fingerprint": fp, "primary_metric": m, "score": last[m], "score_unit": "fraction",
                  "teacher_score": table["teacher"].get(m), "size_mb": last["size_mb"],
                  "run_dir": str(out.relative_to(REPO)), **({"stages_reused_from": reused} if reused else {}),
                  "final_stage_curve": final_stage_curve(out, m),
                  "size_unit": "MB (estimated packed)", "train_examples": last["train_examples"],
                  "stages": table["stages"], "wall_time_s": round(sum(s["wall_time_s"] for s in table["stages"]), 1),
                  "wall_time_unit": "s"})
    res.save(render(res))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    ap.add_argument("--da-copies", type=int, default=DA_COPIES, help="augmented copies per example (DA rows)")
    ap.add_argument("--redo", action="store_true")
    ap.add_argument("--max-steps", type=int, help="cap every stage (smoke test of the script)")
    ap.add_argument("--render-only", action="store_true", help="rewrite the table from the JSON, run nothing")
    return ap.parse_args(argv)


def planned_rows(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(task, config, seed) of every row ``args`` asks for, in run order."""
    return [(task, name, seed) for task in args.tasks for name in args.configs
            for seed in (args.seeds if name in SEEDED else args.seeds[:1])]


def planned_recipes(args: argparse.Namespace) -> list[tuple[str, Path, list[str]]]:
    """(row key, recipe file, overrides) of every row ``args`` asks for (checked by the tests)."""
    return [(f"{task}/{name}/seed{seed}", REPO / "recipes" / "tspq" / CONFIGS[name][0],
             overrides_for(task, name, seed, args.da_copies)) for task, name, seed in planned_rows(args)]


def main() -> None:
    args = parse_args()
    res = Results("tspq_fair" if args.max_steps is None else "tspq_fair_smoke",
                  "TSPQ vs one-stage baselines at full training sets, two seeds (MiniLM-L6 teachers, dev)")
    if backfill_curves(res) or args.render_only:
        res.save(render(res))
    if args.render_only:
        return
    for task, name, seed in planned_rows(args):
        run_row(res, task, name, seed, args.da_copies, args.max_steps, args.redo)


if __name__ == "__main__":
    main()
