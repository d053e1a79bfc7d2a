"""Where the Kronecker student loses: which decomposed part costs the most perplexity, and whether
another per-layer selection at the same size does better than KnGPT2's "embedding + odd blocks".

Part ``init`` (cheap, no training): for each selection, the parameter count, the mean relative
NKP reconstruction error and the WikiText-2 test perplexity of the SmolLM2-135M teacher right
after decomposition. Part ``distil``: the named selections go through the same light pre-training
as ``benchmarks/kngpt2.py`` (recipes/kngpt2/kron-pretrain.yaml with only ``stages.0.kron``
replaced; same tokens, same losses), so their rows compare with the layer-drop row there.

    python benchmarks/kngpt2_ablation.py [--parts init distil] [--variants NAME ...]
        [--tokens 100000] [--ppl-tokens 30000] [--redo]

Results: docs/results/kngpt2_ablation.{json,md}, a row per (part, variant) as it finishes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, WORK, Results, data_root, md_table, slug  # noqa: E402

from kronbit.runner import load_recipe, run_recipe  # noqa: E402

TEACHER = "packaged:smollm2"
# The equal-size selection that keeps the embedding dense is a shipped recipe; its stage is read
# from there so the ablation and the recipe cannot drift apart.
DENSE_EMBEDDING = load_recipe(REPO / "recipes" / "kngpt2" / "kron-pretrain-dense-embedding.yaml").stages[0].kron
VARIANTS = {
    "embedding + odd blocks (KnGPT2)": {"compression": 2, "layers": "odd", "embeddings": True,
                                        "embedding_factor": 2},
    "embedding only": {"target_modules": [], "embeddings": True, "embedding_factor": 2},
    "odd blocks only": {"compression": 2, "layers": "odd"},
    "23 blocks, embedding dense (equal size)": DENSE_EMBEDDING,
}
RECIPE = REPO / "recipes" / "kngpt2" / "kron-pretrain.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["init"], choices=["init", "distil"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--tokens", type=int, default=100_000, help="distillation tokens (part distil)")
    ap.add_argument("--ppl-tokens", type=int, default=30_000, help="WikiText-2 test tokens scored")
    ap.add_argument("--redo", action="store_true")
    return ap.parse_args(argv)


def kron_settings(name: str) -> dict:
    """The variant's ``stages.0.kron`` as a mapping (the dense-embedding one is a config read
    from its recipe)."""
    v = VARIANTS[name]
    return v if isinstance(v, dict) else v.to_dict()


def distil_overrides(args: argparse.Namespace, name: str) -> list[str]:
    return [f"lm.max_tokens={args.tokens}", f"perplexity.max_tokens={args.ppl_tokens}",
            "stages.0.kron=" + json.dumps(kron_settings(name))]


def planned_recipes(args: argparse.Namespace) -> list[tuple[str, Path, list[str]]]:
    """(row key, recipe file, overrides) of every recipe ``args`` loads (checked by the tests)."""
    plans = []
    if "init" in args.parts:
        plans.append(("init", RECIPE, [f"perplexity.max_tokens={args.ppl_tokens}"]))
    if "distil" in args.parts:
        plans += [(f"distil/{name}", RECIPE, distil_overrides(args, name)) for name in args.variants]
    return plans


def main() -> None:
    args = parse_args()
    res = Results("kngpt2_ablation", "Kronecker student ablation: which layers to decompose (SmolLM2-135M teacher)")
    if "init" in args.parts:
        init_part(args, res)
    if "distil" in args.parts:
        distil_part(args, res)
    res.save(render(res))


def init_part(args, res: Results) -> None:
    from kronbit.data.lm import read_text
    from kronbit.models.decoders import load_causal_lm, load_causal_tokenizer
    from kronbit.kron import KroneckerConfig, kroneckerize_
    from kronbit.runner.lm import PerplexityConfig, lm_root, score_perplexity
    from kronbit.core.swap import count_parameters

    recipe = load_recipe(RECIPE, [f"perplexity.max_tokens={args.ppl_tokens}"])
    ppl_cfg = PerplexityConfig.from_dict(recipe.perplexity, where="perplexity")
    tokenizer = load_causal_tokenizer(TEACHER)
    text = read_text(ppl_cfg.text, lm_root(str(data_root())))
    for name in args.variants:
        key = f"init/{name}"
        if res.done(key) and not args.redo:
            print(f"[skip] {key}")
            continue
        t0 = time.time()
        model = load_causal_lm(TEACHER)
        report = kroneckerize_(model, KroneckerConfig.from_dict(kron_settings(name)))
        errors = [r.relative_error for r in report.layers if r.relative_error is not None]
        ppl = score_perplexity(model, tokenizer, text, ppl_cfg)
        res.add(key, {"part": "init", "variant": name, "kron": kron_settings(name), "params": count_parameters(model),
                      "params_unit": "parameters (unique)", "kron_layers": len(report.layers),
                      "kron_mean_rel_error": round(sum(errors) / len(errors), 4) if errors else None,
                      "ppl_before": ppl["ppl"], "ppl_tokens": ppl["ppl_tokens"],
                      "ppl_unit": "perplexity, WikiText-2 test", "wall_time_s": round(time.time() - t0, 1)})
        res.save(render(res))
        del model


def distil_part(args, res: Results) -> None:
    for name in args.variants:
        key = f"distil/{name}"
        if res.done(key) and not args.redo:
            print(f"[skip] {key}")
            continue
        overrides = distil_overrides(args, name)
        recipe = load_recipe(RECIPE, overrides)
        out = WORK / "kngpt2_ablation" / slug(name)
        table = run_recipe(recipe, model=TEACHER, task=None, data_dir=str(data_root()), output_dir=str(out),
                           resume=out.is_dir() and not args.redo, overwrite=args.redo,
                           recipe_source="recipes/kngpt2/kron-pretrain.yaml")
        row = table["stages"][-1]
        res.add(key, {"part": "distil", "variant": name, "kron": kron_settings(name), "overrides": overrides,
                      "params": row["params"], "params_unit": "parameters (unique)",
                      "kron_mean_rel_error": row.get("kron_mean_rel_error"), "ppl_before": row["ppl_before"],
                      "ppl": row["ppl"], "ppl_tokens": row["ppl_tokens"], "ppl_unit": "perplexity, WikiText-2 test",
                      "train_tokens": row["train_tokens"], "steps": row["steps"], "wall_time_s": row["wall_time_s"]})
        res.save(render(res))


def render(res: Results) -> str:
    rows = res.data["rows"]
    init = [[r["variant"], r["params"] / 1e6, r["kron_layers"], r["kron_mean_rel_error"], r["ppl_before"]]
            for k, r in rows.items() if k.startswith("init/")]
    out = ("# KnGPT2 ablation: which layers to decompose (SmolLM2-135M teacher, WikiText-2 test perplexity)\n\n"
           "Produced by `python benchmarks/kngpt2_ablation.py`; commands, dates and machine in "
           "`kngpt2_ablation.json`. Factor 2 everywhere (each decomposed matrix keeps about half its "
           "parameters); the teacher has 134.52M parameters and perplexity 19.79 "
           "(docs/results/kngpt2.md).\n\n## Right after decomposition (no training)\n\n"
           + md_table(["selection", "params (M)", "decomposed layers", "mean rel. NKP error", "PPL"], init))
    dist = [[r["variant"], r["params"] / 1e6, r["ppl_before"], r["ppl"], r["train_tokens"], r["wall_time_s"] / 60]
            for k, r in rows.items() if k.startswith("distil/")]
    if dist:
        kn = json.loads((REPO / "docs" / "results" / "kngpt2.json").read_text())["rows"]
        ld = kn.get("layerdrop")
        if ld:
            dist.append([f"layer-drop baseline (docs/results/kngpt2.md, {len(ld['kept_layers'])} blocks kept)",
                         ld["params"] / 1e6, ld["ppl_before"], ld["ppl"], ld["train_tokens"], ld["wall_time_s"] / 60])
        out += ("\n## After the same light pre-training (recipes/kngpt2/kron-pretrain.yaml)\n\n"
                + md_table(["student", "params (M)", "PPL before KD", "PPL after KD", "KD tokens", "wall (min)"], dist))
    return out


if __name__ == "__main__":
    main()
