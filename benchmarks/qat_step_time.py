"""Step time of QAT + distillation vs a plain fine-tuning step, measured side by side.

MiniLM-L6 (packaged), batch 32 × seq 128 (real SST-2 sentences padded to 128 tokens), bf16
autocast, AdamW. Variants, each timed over the same batches after warm-up, interleaved in rounds so
that machine noise hits all of them alike:
  * finetune: the plain fine-tuning step as ``kronbit finetune`` runs it (forward + backward +
    optimizer; the model's default SDPA attention) — the reference;
  * qat_w1a1: the W1A1 student alone (no teacher), SDPA attention (activation quantization sits at
    the linears' inputs, the attention matmuls stay as they are);
  * kd_logits: W1A1 student + live teacher forward, logits KD only;
  * kd_full: W1A1 student + live teacher, logits + embedding + hidden + attention-score KD (the
    TSPQ recipes' weight-only stages); attention KD needs the recording eager attention on both;
  * kd_full_cached: kd_full with the teacher's outputs from a ``TeacherCache`` (what the recipes
    run by default); the cache's one-off build is reported too, amortized over one epoch of the
    timed batches (the recipes reuse it for every epoch and stage on the same examples);
  * kd_w1a1_cached: the binary recipes' W1A1 stage (logits + embedding + hidden, no attention KD)
    from the cache, SDPA attention.
Every KD variant computes its loss through ``DistillationTrainer.compute_loss``, the recipes' code.
Target (issue): QAT+KD ≤ 1.3× finetune.

    python benchmarks/qat_step_time.py [--steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from transformers import DataCollatorWithPadding, TrainingArguments  # noqa: E402

from common import Results, data_root, md_table  # noqa: E402

from kronbit.data.features import TokenizedDataset  # noqa: E402
from kronbit.data.glue import get_task, load_split  # noqa: E402
from kronbit.distill import KDConfig  # noqa: E402
from kronbit.distill.teacher_cache import TeacherCache  # noqa: E402
from kronbit.distill.trainer import DistillationTrainer  # noqa: E402
from kronbit.models.encoders import load_classifier, load_tokenizer  # noqa: E402
from kronbit.quant import QuantConfig, quantize_  # noqa: E402

FULL = KDConfig(logits=1, embedding=1, hidden=1, attention=1, layer_map="identity")
KD = {"kd_logits": KDConfig(logits=1), "kd_full": FULL, "kd_full_cached": FULL,
      "kd_w1a1_cached": FULL.replace(attention=0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    task = get_task("sst2")
    tok = load_tokenizer("packaged:minilm")
    ex = load_split(task, data_root() / "glue", "train")[: args.batch * args.steps]
    enc = tok([e.text_a for e in ex], truncation=True, max_length=args.seq)
    features = TokenizedDataset([{**{k: v[i] for k, v in enc.items()}, "labels": e.label}
                                 for i, e in enumerate(ex)]).with_example_ids()
    collator = DataCollatorWithPadding(tok, padding="max_length", max_length=args.seq)
    batches = [dict(collator(features.features[i * args.batch:(i + 1) * args.batch])) for i in range(args.steps)]
    targs = TrainingArguments(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True)
    builds: dict[str, dict] = {}

    def make(kind):
        torch.manual_seed(0)
        student = load_classifier("packaged:minilm", task)
        if kind != "finetune":
            quantize_(student, QuantConfig(w_bits=1, a_bits=1, quantize_embeddings=True))
        opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
        trainer = None
        if kind in KD:
            teacher = load_classifier("packaged:minilm", task)
            trainer = DistillationTrainer(model=student, args=targs, teacher=teacher, kd=KD[kind],
                                          data_collator=collator)
            if kind.endswith("_cached"):
                t0 = time.perf_counter()
                trainer.teacher_cache = TeacherCache.build(trainer.teacher, features.features, collator,
                                                           hidden=KD[kind].needs_hidden,
                                                           attention=KD[kind].needs_attention,
                                                           batch_size=128, bf16=True, progress=False)
                builds[kind] = {"build_s": time.perf_counter() - t0, "bytes": trainer.teacher_cache.nbytes}
        student.train()

        def step(batch):
            batch = dict(batch)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                if trainer is None:
                    batch.pop("example_id")
                    loss = student(**batch).loss
                else:
                    loss = trainer.compute_loss(student, batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    kinds = ["finetune", "qat_w1a1", "kd_logits", "kd_full", "kd_full_cached", "kd_w1a1_cached"]
    steps = {k: make(k) for k in kinds}
    for k in kinds:  # warm-up
        steps[k](batches[0])
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for k in kinds:
            for b in batches:
                t0 = time.perf_counter()
                steps[k](b)
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    # A cached variant's cost per step in its first epoch: its step plus the build spread over
    # the epoch's steps (later epochs and stages on the same examples pay only the step).
    amort = {k: med[k] + builds[k]["build_s"] / args.steps for k in builds}
    res = Results("qat_step_time", "QAT+KD step time vs plain fine-tuning (MiniLM-L6, bf16)")
    res.data["rows"] = {}
    for k in kinds:
        row = {"median_step_s": round(med[k], 4), "unit": "s per step", "ratio_vs_finetune":
               round(med[k] / med["finetune"], 3), "steps_timed": len(times[k]), "batch": args.batch,
               "seq": args.seq, "bf16": True}
        if k in builds:
            row.update({"cache_build_s": round(builds[k]["build_s"], 2), "cache_examples": len(features),
                        "cache_bytes": builds[k]["bytes"], "first_epoch_step_s": round(amort[k], 4),
                        "first_epoch_ratio_vs_finetune": round(amort[k] / med["finetune"], 3)})
        res.add(k, row)
    rows = [[k, f"{1000 * med[k]:.0f}", f"{med[k] / med['finetune']:.2f}x",
             f"{amort[k] / med['finetune']:.2f}x" if k in amort else "",
             f"{builds[k]['build_s']:.1f} s, {builds[k]['bytes'] / len(features) / 1e3:.0f} kB/example"
             if k in builds else ""] for k in kinds]
    md = ("# QAT + KD step time vs plain fine-tuning (MiniLM-L6, batch 32 × seq 128, bf16 autocast)\n\n"
          "Median over interleaved rounds, same batches for every variant; KD losses through "
          "`DistillationTrainer.compute_loss`. Produced by `python benchmarks/qat_step_time.py`; details in "
          f"`qat_step_time.json`. Target: QAT+KD ≤ 1.3×. The cached variants' build ran once over the "
          f"{len(features)} timed examples; 'first epoch' adds it spread over one epoch of {args.steps} steps "
          "(the recipes build once per training set and reuse it for every epoch and stage).\n\n"
          + md_table(["variant", "median ms/step", "vs finetune", "first epoch, with build", "cache build"], rows))
    res.save(md)
    print(md)


if __name__ == "__main__":
    main()
