"""What quantizing the activations costs before any training: a finished TSPQ run's last weight-only
student (binary: its w1 stage; ternary: its w2 stage) evaluated with k-bit activations (the recipe's quantizers, their scales
set from one calibration batch of training examples), beside what that run's activation stages
reached after training. A trained stage below its untrained start means the stage's training
made it worse (e.g. a learning rate that flips too many binary weights).

    python benchmarks/tspq_fair.py --configs tspq_w1a1 --seeds 42 --tasks stsb   # first
    python benchmarks/tspq_act_bits.py [--task stsb] [--config tspq_w1a1] [--seed 42]
    python benchmarks/tspq_act_bits.py --config tspq_w2a8 --bits 32 8     # the ternary student at A8

Results in docs/results/tspq_act_bits.{json,md}; forward passes only (a minute or two a task).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import WORK, Results, data_root, md_table  # noqa: E402
from tspq_fair import run_dir_of  # noqa: E402
from tspq_fair_configs import BUDGETS  # noqa: E402

BITS = (32, 8, 4, 2, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="stsb")
    ap.add_argument("--config", default="tspq_w1a1", help="a tspq_fair.py config (its last stage with "
                    "full-precision activations is the student)")
    ap.add_argument("--bits", nargs="+", type=int, default=list(BITS), choices=list(BITS),
                    help="activation bit-widths to evaluate")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--calibration", type=int, default=64, help="training examples in the calibration batch")
    return ap.parse_args(argv)


def run_dir(args: argparse.Namespace) -> Path:
    """The row's run directory as tspq_fair.json records it (a renamed config keeps the directory
    it trained in), else where tspq_fair.py would put it."""
    fair = common.RESULTS / "tspq_fair.json"
    row = json.loads(fair.read_text())["rows"].get(f"{args.task}/{args.config}/seed{args.seed}") if fair.is_file() else None
    if row is not None and "same_run_as" not in row:
        return run_dir_of(row)
    return WORK / "tspq_fair" / args.task / args.config / f"seed{args.seed}"


def untrained_scores(w1_model: Path, task_name: str, calibration: int, w_bits: int = 1,
                     bits_list: tuple[int, ...] = BITS) -> dict[int, dict]:
    """Dev metrics of the weight-only student at each activation bit-width, no training."""
    import torch
    from transformers import AutoTokenizer

    from kronbit.data.glue import get_task, load_split
    from kronbit.formats import load_model
    from kronbit.quant import set_bits_
    from kronbit.workflows.evaluate import score

    task = get_task(task_name)
    tok = AutoTokenizer.from_pretrained(w1_model)
    data = data_root() / "glue"
    dev, train = load_split(task, data, "dev"), load_split(task, data, "train")[:calibration]
    # the length the run trained and evaluated with (tspq_fair.py's budget for the task)
    settings = {"batch_size": calibration, "max_seq_length": BUDGETS[task_name]["train.max_seq_length"], "bf16": True}
    out = {}
    for bits in bits_list:
        torch.manual_seed(0)
        model = load_model(w1_model, task).eval()
        if bits < 32:
            set_bits_(model, w_bits, bits)
            score(model, tok, task, train, settings)  # one batch: the elastic scales initialise from it
        out[bits] = score(model, tok, task, dev, settings, desc=f"a{bits}")
    return out


def student_stage(table: dict) -> dict:
    """The run's last stage with full-precision activations: the student the probe quantizes."""
    return [s for s in table["stages"] if s["a_bits"] == 32][-1]


def trained_scores(table: dict) -> dict[int, tuple[str, float]]:
    """A run's stage table (stages.json), its stages at the student's weight bits: activation
    bits -> (stage, best dev score)."""
    m, w = table["primary_metric"], student_stage(table)["w_bits"]
    return {s["a_bits"]: (s["stage"], s[m]) for s in table["stages"] if s["w_bits"] == w}


def render(res: Results) -> str:
    lines = []
    for row in res.data["rows"].values():
        for bits in [b for b in BITS if str(b) in row["untrained"]]:
            stage, got = row["trained"].get(str(bits), ("", None))
            lines.append([row["task"], row["config"], row["seed"], row.get("w_bits", 1), bits,
                          f"{100 * row['untrained'][str(bits)]:.1f}",
                          f"{100 * got:.1f}" if got is not None else "", stage])
    return ("# Activation bits before and after training (binary and ternary weights; dev, primary metric ×100)\n\n"
            "Produced by `python benchmarks/tspq_act_bits.py`; commands, dates and machine in `tspq_act_bits.json`. "
            "Untrained: the run's last weight-only student (W1 or W2, full-precision activations) with its linear "
            "layers' inputs at k bits (1 bit: binary attention too, as the recipe has it), the quantizers' scales set "
            "from one batch of training examples, no training. Trained: the best dev evaluation of the run's "
            "stage at those bits (32: the weight-only stage itself).\n\n"
            + md_table(["task", "config", "seed", "weight bits", "activation bits", "untrained", "trained", "stage"], lines))


def main() -> None:
    args = parse_args()
    rdir = run_dir(args)
    if not (rdir / "stages.json").is_file():
        sys.exit(f"no finished run at {rdir}; run `python benchmarks/tspq_fair.py --configs {args.config} "
                 f"--seeds {args.seed} --tasks {args.task}` first")
    table = json.loads((rdir / "stages.json").read_text())
    student = student_stage(table)
    model = next(iter(sorted(rdir.glob(f"stages/*-{student['stage']}/model"))), None)
    if model is None:
        sys.exit(f"{rdir} has no saved model for its stage {student['stage']!r}")
    res = Results("tspq_act_bits", "Activation bits before and after training (binary and ternary weights)")
    untrained = untrained_scores(model, args.task, args.calibration, student["w_bits"], tuple(args.bits))
    trained, metric = trained_scores(table), table["primary_metric"]
    res.add(f"{args.task}/{args.config}/seed{args.seed}",
            {"task": args.task, "config": args.config, "seed": args.seed, "primary_metric": metric,
             "w_bits": student["w_bits"], "student_stage": student["stage"],
             "untrained": {str(b): v[metric] for b, v in untrained.items()},
             "trained": {str(b): list(v) for b, v in trained.items()}, "calibration_examples": args.calibration,
             "unit": "fraction (dev)"})
    res.save(render(res))
    print(render(res))


if __name__ == "__main__":
    main()
