"""Step time of QAT + distillation vs a plain fine-tuning step, measured side by side.

MiniLM-L6 (packaged), batch 32 × seq 128 (real SST-2 sentences padded to 128 tokens), bf16
autocast, AdamW. Variants, each timed over the same batches after warm-up, interleaved in rounds so
that machine noise hits all of them alike:
  * finetune: the plain fine-tuning step (forward + backward + optimizer) — the reference;
  * qat_w1a1: the quantized student alone (no teacher);
  * kd_logits: W1A1 student + teacher forward, logits KD only;
  * kd_full: W1A1 student + teacher, logits + embedding + hidden + attention-score KD (the TSPQ
    recipes' loss).
Target (issue): kd_full ≤ 1.3× finetune.

    python benchmarks/qat_step_time.py [--steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import Results, data_root, md_table  # noqa: E402

from kronbit.data.glue import get_task, load_split  # noqa: E402
from kronbit.distill import KDConfig, distillation_loss  # noqa: E402
from kronbit.distill.attention import record_attention_scores, use_kronbit_attention  # noqa: E402
from kronbit.models import load_classifier, load_tokenizer  # noqa: E402
from kronbit.quant import QuantConfig, quantize_  # noqa: E402


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
    batches = []
    for i in range(args.steps):
        chunk = ex[i * args.batch:(i + 1) * args.batch]
        enc = tok([e.text_a for e in chunk], padding="max_length", truncation=True, max_length=args.seq,
                  return_tensors="pt")
        enc["labels"] = torch.tensor([e.label for e in chunk])
        batches.append(dict(enc))

    def make(kind):
        torch.manual_seed(0)
        student = load_classifier("packaged:minilm", task, attentions=True)
        teacher = None
        if kind != "finetune":
            quantize_(student, QuantConfig(w_bits=1, a_bits=1, quantize_embeddings=True))
        if kind.startswith("kd"):
            teacher = load_classifier("packaged:minilm", task, attentions=True).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        kd = (KDConfig(logits=1) if kind == "kd_logits" else
              KDConfig(logits=1, embedding=1, hidden=1, attention=1, layer_map="identity") if kind == "kd_full"
              else None)
        if kd is not None and kd.needs_attention:
            use_kronbit_attention(student)
            use_kronbit_attention(teacher)
        opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
        student.train()

        def step(batch):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                if kd is None:
                    loss = student(**batch).loss
                else:
                    inputs = {k: v for k, v in batch.items() if k != "labels"}
                    want_h = kd.needs_hidden
                    with record_attention_scores() as s_rec:
                        s = student(**inputs, output_hidden_states=want_h)
                    with torch.no_grad(), record_attention_scores() as t_rec:
                        t = teacher(**inputs, output_hidden_states=want_h)
                    loss, _ = distillation_loss(kd, s, t, token_mask=inputs["attention_mask"],
                                                student_scores=s_rec if kd.needs_attention else None,
                                                teacher_scores=t_rec if kd.needs_attention else None)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    kinds = ["finetune", "qat_w1a1", "kd_logits", "kd_full"]
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
    res = Results("qat_step_time", "QAT+KD step time vs plain fine-tuning (MiniLM-L6, bf16)")
    res.data["rows"] = {}
    for k in kinds:
        res.add(k, {"median_step_s": round(med[k], 4), "unit": "s per step", "ratio_vs_finetune":
                    round(med[k] / med["finetune"], 3), "steps_timed": len(times[k]), "batch": args.batch,
                    "seq": args.seq, "bf16": True})
    rows = [[k, f"{1000 * med[k]:.0f}", f"{med[k] / med['finetune']:.2f}x"] for k in kinds]
    md = ("# QAT + KD step time vs plain fine-tuning (MiniLM-L6, batch 32 × seq 128, bf16 autocast)\n\n"
          "Median over interleaved rounds, same batches for every variant. Produced by "
          "`python benchmarks/qat_step_time.py`; details in `qat_step_time.json`. Target: kd_full ≤ 1.3×.\n\n"
          + md_table(["variant", "median ms/step", "vs finetune"], rows))
    res.save(md)
    print(md)


if __name__ == "__main__":
    main()
