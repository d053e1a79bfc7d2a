"""KnGPT2 vs layer dropping at equal size and equal distillation tokens (perplexity part).

Teacher: SmolLM2-135M (the packaged GGUF, Llama architecture; real GPT-2 weights are not
available offline). Students, each distilled from the teacher with the same losses (embedding,
attention probabilities, hidden states, logits, LM loss) on the same token budget of
WikiText-2 valid + Tiny Shakespeare:
  * Kronecker: embedding and odd blocks decomposed at factor 2, NKP-initialised
    (recipes/kngpt2/kron-pretrain.yaml);
  * layer-drop: evenly spread blocks, as many as bring it closest to the Kronecker student's
    parameter count (recipes/kngpt2/layerdrop-pretrain.yaml with target_params).
Perplexity: sliding window (512, stride 256) on the first tokens of WikiText-2 test, before and
after distillation. Paper (GPT-2 teacher, far larger budget): KnGPT2 20.5 vs DistilGPT2 23.7 PPL.
Target (issue): the Kronecker student's perplexity ≥ 13% lower than the layer-drop student's.

    python benchmarks/kngpt2.py [--tokens 150000] [--ppl-tokens 40000] [--redo]

Results go to docs/results/kngpt2.{json,md} after each student; a rerun resumes (finished
students are skipped, a killed one restarts its stage).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, WORK, Results, data_root, md_table  # noqa: E402

from kronbit.recipe import load_recipe, run_recipe  # noqa: E402

TEACHER = "packaged:smollm2"
PAPER = {"KnGPT2 (GPT-2 teacher) PPL": 20.5, "DistilGPT2 PPL": 23.7, "GPT-2 PPL": 19.4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=150_000, help="distillation tokens per student")
    ap.add_argument("--ppl-tokens", type=int, default=40_000, help="WikiText-2 test tokens scored")
    ap.add_argument("--max-steps", type=int, help="cap training steps (smoke test of the script)")
    ap.add_argument("--redo", action="store_true")
    args = ap.parse_args()
    res = Results("kngpt2" if args.max_steps is None else "kngpt2_smoke",
                  "KnGPT2 Kronecker student vs layer-drop student at equal size and tokens (SmolLM2-135M teacher)")
    budget = [f"lm.max_tokens={args.tokens}", f"perplexity.max_tokens={args.ppl_tokens}"]
    kron_params = None
    for name, recipe_file in (("kronecker", "kron-pretrain.yaml"), ("layerdrop", "layerdrop-pretrain.yaml")):
        overrides = list(budget)
        if name == "layerdrop":
            kron_params = kron_params or res.data["rows"].get("kronecker", {}).get("params")
            if kron_params is None:
                sys.exit("the Kronecker student must finish first (its size sets the baseline's)")
            overrides += ["stages.0.layerdrop.keep=null", f"stages.0.layerdrop.target_params={kron_params}"]
        out = WORK / "kngpt2" / name
        # A finished row is skipped only while its student is still on disk: the GLUE step
        # fine-tunes that student (a fresh machine re-distils it, re-measuring the row).
        if res.done(name) and (out / "model").is_dir() and not args.redo:
            print(f"[skip] {name}")
            kron_params = res.data["rows"][name]["params"] if name == "kronecker" else kron_params
            continue
        recipe = load_recipe(REPO / "recipes" / "kngpt2" / recipe_file, overrides)
        t0 = time.time()
        table = run_recipe(recipe, model=TEACHER, task=None, data_dir=str(data_root()), output_dir=str(out),
                           max_steps=args.max_steps, resume=out.is_dir() and not args.redo, overwrite=args.redo,
                           recipe_source=f"recipes/kngpt2/{recipe_file}")
        row = table["stages"][-1]
        if name == "kronecker":
            kron_params = row["params"]
        res.data["teacher"] = table["teacher"]
        res.add(name, {"student": name, "recipe": f"recipes/kngpt2/{recipe_file}", "overrides": overrides,
                       "params": row["params"], "params_unit": "parameters (unique)",
                       "ppl_before": row["ppl_before"], "ppl": row["ppl"], "ppl_unit": "perplexity, WikiText-2 test",
                       "ppl_tokens": row["ppl_tokens"], "train_tokens": row["train_tokens"], "steps": row["steps"],
                       "wall_time_s": round(time.time() - t0, 1),
                       **{k: row[k] for k in ("kron_mean_rel_error", "layerdrop_plan", "kept_layers") if k in row}})
        res.save(render(res))
    res.save(render(res))


def render(res: Results) -> str:
    rows = res.data["rows"]
    t = res.data.get("teacher", {})
    table = []
    if t:
        table.append(["teacher (SmolLM2-135M)", t["params"] / 1e6, None, t["ppl"], None, None])
    for name in ("kronecker", "layerdrop"):
        r = rows.get(name)
        if r:
            table.append([name, r["params"] / 1e6, r["ppl_before"], r["ppl"], r["train_tokens"], r["wall_time_s"] / 60])
    out = ("# KnGPT2: Kronecker vs layer-drop student (WikiText-2 test perplexity)\n\n"
           "Produced by `python benchmarks/kngpt2.py`; budgets, commands, dates and machine in `kngpt2.json`. "
           "Paper (GPT-2 teacher, full pre-training budget): " + "; ".join(f"{k} {v}" for k, v in PAPER.items())
           + ".\n\n" + md_table(["model", "params (M)", "PPL before KD", "PPL after KD", "KD tokens", "wall (min)"], table))
    if "kronecker" in rows and "layerdrop" in rows:
        k, d = rows["kronecker"]["ppl"], rows["layerdrop"]["ppl"]
        gain = 100 * (d - k) / d
        verdict = f"{gain:.1f}% lower" if gain >= 0 else f"{-gain:.1f}% higher (layer-drop {100 * (k - d) / k:.1f}% lower)"
        out += (f"\nKronecker vs layer-drop perplexity: Kronecker {verdict} (target: Kronecker ≥ 13% lower); sizes "
                f"{rows['kronecker']['params'] / 1e6:.2f}M vs {rows['layerdrop']['params'] / 1e6:.2f}M, same "
                f"{rows['kronecker']['train_tokens']} distillation tokens.\n")
    return out


if __name__ == "__main__":
    main()
