"""How much of the ternary weights' error a better threshold could remove: the relative L2 error
||Q(W) - W||² / ||W||² of the teacher's weights under the recipes' ternary quantizer (TWN,
Δ = 0.7·mean|w| per row), under TernaryBERT's per-tensor TWN, and under the best any per-row
ternary code can do (the L2-optimal threshold and scale, found exactly by sorting each row), beside
the 4-bit uniform quantizer of the W4 stage that keeps ~98.6% of the teacher. The same for the
latent weights of the trained W2 students (tspq_fair.py's tspq_w2a8 rows, seed 42, their W2
stage), where training has had 4 epochs to fit the weights to TWN's codes.

The accuracy issue names the ternary quantizer's definition as a lever on the W2 step. If the
optimal per-row ternary code is barely closer to the weights than TWN's rule, no threshold rule
can close the W4 → W2 gap; the gap is what three levels per row cost.

    python benchmarks/ternary_threshold.py [--tasks stsb cola ...]

Needs the teachers (python benchmarks/teacher_glue.py); a task whose W2 student has not run is
reported for its teacher only. Weights only, seconds a task. Results in
docs/results/ternary_threshold.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Results, md_table  # noqa: E402
from teacher_glue import require_teacher  # noqa: E402
from tspq_fair import run_dir_of  # noqa: E402
from tspq_fair_configs import BUDGETS  # noqa: E402

from kronbit.quant.registry import build_weight_quantizer  # noqa: E402
from kronbit.runner.stages import stage_dir  # noqa: E402

STUDENT = ("tspq_w2a8", 42, 1, "w2")  # config, seed, stage index, stage name

# the matrices the TSPQ recipes quantize: every linear layer of the encoder blocks and the word
# embeddings (per row)
KINDS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
         "intermediate.dense", "output.dense", "word_embeddings")


def optimal_ternary(w: torch.Tensor) -> torch.Tensor:
    """The per-row ternary code α·t, t ∈ {-1, 0, 1}, closest to w in L2. For a row keeping its k
    largest |w| the best α is their mean and the error is ||w||² - S_k²/k (S_k their sum), so the
    optimum is the k maximising S_k²/k: exact, not TWN's Gaussian approximation."""
    a, _ = w.abs().sort(dim=1, descending=True)
    s = a.cumsum(dim=1)
    k = (s * s / torch.arange(1, w.shape[1] + 1, dtype=w.dtype)).argmax(dim=1, keepdim=True)  # k - 1
    alpha = s.gather(1, k) / (k + 1)
    threshold = a.gather(1, k)
    keep = w.abs() >= threshold  # ties at the threshold: measure zero in float weights
    return torch.sign(w) * keep * alpha


QUANTIZERS = {  # name -> w -> Q(w)
    "uniform 4-bit per row (W4 stage)": build_weight_quantizer(4, "auto", granularity="row"),
    "TWN per row (the recipes')": build_weight_quantizer(2, "twn", granularity="row"),
    "TWN per tensor (TernaryBERT)": build_weight_quantizer(2, "twn", granularity="tensor"),
    "optimal ternary per row (bound)": optimal_ternary,
}


def kind_of(name: str) -> str | None:
    if not name.endswith(".weight"):
        return None
    if "word_embeddings" in name:
        return "word_embeddings"
    if ".encoder.layer." not in name:
        return None
    return next((k for k in KINDS if name.endswith(f".{k}.weight")), None)


def errors(weights: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Relative L2 error per quantizer, per matrix kind and over all quantized matrices ("all")."""
    err: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    norm: dict[str, float] = defaultdict(float)
    for name, w in weights.items():
        kind = kind_of(name)
        if kind is None or w.dim() != 2:
            continue
        w = w.float()
        n = float((w * w).sum())
        for group in (kind, "all"):
            norm[group] += n
        with torch.no_grad():
            for q, fn in QUANTIZERS.items():
                e = float(((fn(w) - w) ** 2).sum())
                for group in (kind, "all"):
                    err[q][group] += e
    if not norm:
        raise SystemExit("no quantizable matrices found: is this a BERT-style encoder?")
    return {q: {g: e / norm[g] for g, e in groups.items()} for q, groups in err.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    return ap.parse_args(argv)


def render(res: Results) -> str:
    rows = res.data["rows"]
    qs = list(QUANTIZERS)
    table = [[r["task"], r["weights"], *(f"{r['relative_error'][q]['all']:.4f}" for q in qs)] for r in rows.values()]
    first_key = next(iter(rows))
    first = rows[first_key]
    kinds = [k for k in KINDS if k in first["relative_error"][qs[0]]]
    by_kind = [[k, *(f"{first['relative_error'][q][k]:.4f}" for q in qs)] for k in kinds]
    twn, best = qs[1], qs[3]
    gains = {w: [1 - r["relative_error"][best]["all"] / r["relative_error"][twn]["all"]
                 for r in rows.values() if r["weights"] == w] for w in ("teacher", "W2 student")}
    said = "; ".join(f"{w}s: {100 * min(g):.1f}-{100 * max(g):.1f}%" for w, g in gains.items() if g)
    return ("# Ternary weights: how close TWN's threshold comes to the best ternary code\n\n"
            "Produced by `python benchmarks/ternary_threshold.py`; commands, dates and machine in "
            "`ternary_threshold.json`. Relative L2 error ||Q(W) − W||² / ||W||² over the matrices the TSPQ "
            "recipes quantize (every linear layer of the encoder blocks and the word embeddings), for each "
            "task's full-precision teacher (MiniLM-L6) and for the latent weights of its trained W2 student "
            f"({STUDENT[0]}, seed {STUDENT[1]}, after its {STUDENT[3]} stage). The last column is a bound: the "
            "per-row ternary code closest to the weights, found exactly.\n\n"
            + md_table(["task", "weights", *qs], table)
            + f"\nBy matrix kind ({first['task']} {first['weights']}):\n\n" + md_table(["matrix", *qs], by_kind)
            + f"\nShare of TWN's error that the optimal per-row ternary code removes: {said}. In weight error no "
            "threshold rule comes near the 4-bit quantizer (about a tenth of the ternary error): that is what "
            "three levels per row cost, whatever the threshold.\n")


def _weights(files: list[Path]) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(str(f)))
    return weights


def main() -> None:
    args = parse_args()
    res = Results("ternary_threshold", "relative L2 error of ternary and 4-bit weight quantizers on the teachers")
    fair = Results("tspq_fair", "")  # read only: where the W2 students trained
    for task in args.tasks:
        model = require_teacher(task)
        sources = {"teacher": sorted(Path(model).glob("*.safetensors"))}
        config, seed, k, name = STUDENT
        row = fair.data["rows"].get(f"{task}/{config}/seed{seed}")
        if row is not None:
            sources["W2 student"] = sorted((stage_dir(run_dir_of(row), k, name) / "model").glob("*.safetensors"))
        for weights, files in sources.items():
            if not files:
                print(f"{task}: no {weights} weights found; skipped")
                continue
            res.add(f"{task}/{weights}", {"task": task, "weights": weights, "files": [str(f.name) for f in files],
                                          "relative_error": errors(_weights(files)), "unit": "fraction of ||W||² (L2)"})
            print(f"{task} {weights}: " + ", ".join(
                f"{q} {e['all']:.4f}" for q, e in res.data["rows"][f"{task}/{weights}"]["relative_error"].items()))
    res.save(render(res))


if __name__ == "__main__":
    main()
