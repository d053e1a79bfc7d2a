"""KnGPT2: WikiText-2 test perplexity against distillation tokens, for the KnGPT2 selection
(embedding + odd blocks at factor 2), the equal-size selection that keeps the embedding dense, and
the equal-size layer-drop student: same teacher (SmolLM2-135M), same text, same losses, same
schedule.

Each student is one run to the last mark (default 1M tokens, ~2 passes over WikiText-2 valid +
Tiny Shakespeare) with the recipe's ``perplexity.at_tokens`` set to every mark, so the points are
that run's student as its tokens reach 0.1M, 0.3M and 1M (workflows/ppl_curve.py). Checkpoints
every 25 steps (51k tokens) keep a killed run's loss small; a rerun resumes it and keeps the points
already measured. The layer-drop student is sized to the KnGPT2 student's parameters, so that one
runs first.

    python benchmarks/kngpt2_curve.py [--students kronecker dense_embedding layerdrop]
                                      [--marks 100000 300000 1000000] [--redo]

Cost on 2 CPU cores with bf16 units (the recipes' bf16: auto): ~7 s per 2048-token step for the
KnGPT2 student with the teacher, so 1M tokens is ~68 min with its three perplexity points; the
layer-drop student ~6.6 s a step. Without bf16 units expect about 2.5x that (kngpt2_speed.md,
distillation in fp32 against bf16). Run it in the background under nice, on both threads: split
between two one-thread jobs, a step took twice as long. Results: docs/results/kngpt2_curve.{json,md}
and kngpt2_curve.png, rewritten as each student finishes; ``--render-only`` adds the points an
unfinished run has written so far (its stage directory's ppl_curve.json), marked in progress.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import REPO, RESULTS, WORK, Results, command, data_root, machine, md_table, now  # noqa: E402

from kronbit.runner import load_recipe, run_recipe  # noqa: E402
from kronbit.workflows.ppl_curve import read_curve  # noqa: E402

TEACHER = "packaged:smollm2"
RECIPES = {"kronecker": "kron-pretrain.yaml", "dense_embedding": "kron-pretrain-dense-embedding.yaml",
           "layerdrop": "layerdrop-pretrain.yaml"}
LABELS = {"kronecker": "KnGPT2 (embedding + odd blocks)", "dense_embedding": "Kronecker, embedding dense (23 blocks)",
          "layerdrop": "layer-drop (equal size)"}
MARKS = [100_000, 300_000, 1_000_000]
TOKENS_PER_STEP = 8 * 256  # the recipes' batch size × block size
CHECKPOINT_EVERY = 25      # steps
TARGET = 13.0              # % below layer-drop at the last mark (the paper's margin)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--marks", nargs="+", type=int, default=MARKS, help="token counts to score perplexity at")
    ap.add_argument("--ppl-tokens", type=int, default=40_000, help="WikiText-2 test tokens scored per point")
    ap.add_argument("--redo", action="store_true")
    ap.add_argument("--render-only", action="store_true",
                    help="run nothing: rewrite the page, with the points of unfinished runs read from their directories")
    return ap.parse_args(argv)


def refresh_in_progress(res: Results) -> None:
    """The points an unfinished student's run has written so far (its stage directory's
    ppl_curve.json), kept apart from the finished rows under ``in_progress``."""
    running = {}
    for name in RECIPES:
        if res.data["rows"].get(name, {}).get("finished"):
            continue
        files = sorted((WORK / "kngpt2_curve" / name / "stages").glob("*/ppl_curve.json"))
        points = read_curve(files[-1].parent) if files else []
        if points:
            running[name] = {"student": name, "curve": points, "finished": False, "command": command(),
                             "date": now(), "machine": machine()}
    res.data["in_progress"] = running


def overrides(args: argparse.Namespace, name: str, kron_params: int | None) -> list[str]:
    steps = math.ceil(max(args.marks) / TOKENS_PER_STEP)
    out = ["lm.max_tokens=null", f"stages.0.max_steps={steps}",
           f"train.eval_every={CHECKPOINT_EVERY}", f"perplexity.max_tokens={args.ppl_tokens}",
           "perplexity.at_tokens=[" + ", ".join(map(str, sorted(args.marks))) + "]"]
    if name == "layerdrop":
        out += ["stages.0.layerdrop.keep=null", f"stages.0.layerdrop.target_params={kron_params or 1}"]
    return out


def planned_recipes(args: argparse.Namespace, kron_params: int = 1) -> list[tuple[str, Path, list[str]]]:
    """(row key, recipe file, overrides) of every run ``args`` asks for (checked by the tests)."""
    return [(name, REPO / "recipes" / "kngpt2" / RECIPES[name], overrides(args, name, kron_params))
            for name in args.students]


def main() -> None:
    args = parse_args()
    res = Results("kngpt2_curve", "KnGPT2 students: WikiText-2 test perplexity vs distillation tokens")
    if args.render_only:
        refresh_in_progress(res)
        res.save(render(res))
        return
    for name, path, _ in planned_recipes(args):
        kron = res.data["rows"].get("kronecker", {}).get("params")
        if name == "layerdrop" and kron is None:
            sys.exit("the KnGPT2 (kronecker) student must run first: its size sets the layer-drop student's")
        if res.done(name) and res.data["rows"][name].get("finished") and not args.redo:
            print(f"[skip] {name}")
            continue
        ov = overrides(args, name, kron)
        out = WORK / "kngpt2_curve" / name
        t0 = time.time()
        table = run_recipe(load_recipe(path, ov), model=TEACHER, task=None, data_dir=str(data_root()),
                           output_dir=str(out), resume=out.is_dir() and not args.redo, overwrite=args.redo,
                           recipe_source=f"recipes/kngpt2/{RECIPES[name]}")
        row = table["stages"][-1]
        res.data["teacher"] = table["teacher"]
        res.add(name, {"student": name, "recipe": f"recipes/kngpt2/{RECIPES[name]}", "overrides": ov,
                       "params": row["params"], "params_unit": "parameters (unique)", "ppl_before": row["ppl_before"],
                       "curve": row["ppl_curve"], "ppl_unit": "perplexity, WikiText-2 test",
                       "ppl_tokens": row["ppl_tokens"], "steps": row["steps"], "finished": True,
                       "wall_time_s": round(time.time() - t0, 1), "wall_time_unit": "s (this invocation)"})
        refresh_in_progress(res)
        res.save(render(res))
    refresh_in_progress(res)
    res.save(render(res))


def render(res: Results) -> str:
    # finished rows, then the points of runs still going (marked: their later marks are not in yet)
    rows = {**res.data.get("in_progress", {}), **res.data["rows"]}
    marks = sorted({p["tokens_mark"] for r in rows.values() for p in r["curve"]})
    ppl = {(n, p["tokens_mark"]): p["ppl"] for n, r in rows.items() for p in r["curve"]}
    table = [[LABELS[n] + ("" if r.get("finished") else " (run in progress)"),
              r["params"] / 1e6 if r.get("params") else "", *[ppl.get((n, m)) for m in marks]]
             for n, r in rows.items()]
    t = res.data.get("teacher")
    teacher = f" Teacher (SmolLM2-135M): {t['ppl']:.2f}." if t else ""
    head = ("# KnGPT2 students: WikiText-2 test perplexity vs distillation tokens\n\nProduced by "
            "`python benchmarks/kngpt2_curve.py`: one run per student to the last mark, perplexity scored as its "
            "training tokens reach each mark (sliding window 512 / stride 256 on the first WikiText-2 test tokens); "
            "same teacher, text, losses and schedule for every student. Commands, dates, machine and load in "
            f"`kngpt2_curve.json`; plot: kngpt2_curve.png.{teacher}\n\n")
    md = head + md_table(["student", "params (M)", *[f"PPL at {m / 1e6:g}M tokens" for m in marks]], table)
    gaps = []
    for m in marks:
        if ("layerdrop", m) in ppl:
            for n in ("kronecker", "dense_embedding"):
                if (n, m) in ppl:
                    g = 100 * (1 - ppl[(n, m)] / ppl[("layerdrop", m)])
                    gaps.append(f"- {m / 1e6:g}M tokens: {LABELS[n]}: perplexity {abs(g):.1f}% "
                                f"{'below' if g >= 0 else 'above'} layer-drop's")
    if gaps:
        md += f"\nGap to layer-drop (target at the last mark: the best Kronecker student ≥ {TARGET:g}% below):\n\n" + "\n".join(gaps) + "\n"
    if res.data.get("in_progress"):
        md += ("\nRows marked in progress come from runs not yet finished (`--render-only` reads the points they "
               "have written); a resumed run adds the rest.\n")
    _plot(rows, marks)
    return md


def _plot(rows: dict, marks: list[int]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, r in rows.items():
        pts = sorted((p["tokens_mark"], p["ppl"]) for p in r["curve"])
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=LABELS[n])
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("distillation tokens"), ax.set_ylabel("WikiText-2 test perplexity"), ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "kngpt2_curve.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
