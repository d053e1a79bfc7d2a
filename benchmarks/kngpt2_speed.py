"""KnGPT2 speed: students' training tokens/s, distillation (teacher + student) tokens/s, greedy decoding.

    python benchmarks/kngpt2_speed.py [--parts train distill decode] [--steps 3]

Models: the teacher SmolLM2-135M (``packaged:smollm2``); the KnGPT2 student (embedding + odd blocks
at factor 2, recipes/kngpt2/kron-pretrain.yaml); the dense-embedding Kronecker student (23 blocks,
recipes/kngpt2/kron-pretrain-dense-embedding.yaml); the layer-drop student sized to the KnGPT2
student (as benchmarks/kngpt2.py sizes it). Random token ids (speed does not depend on the text).

Parts, each run as child processes so that "before" and "after" are measured in one run:
  * ``train``: fwd+bwd of a model alone (LM loss) at 2 × 256 tokens. Before: glibc's default allocator;
    after: ``kronbit.core.allocator.keep_freed_memory`` (the Kronecker layer math is unchanged).
  * ``distill``: one ``DistillationTrainer`` step (compute_loss + backward) with the recipes' KD
    (embedding, attention prob_kl, relative hidden MSE, logits, LM loss; eager teacher) at 4 × 256
    tokens. Before: the code of ``--before-commit`` (extracted with ``git archive`` into
    benchmarks/_work); after: this tree.
  * ``decode``: greedy ``generate`` at batch 1 with the KV cache, 16 prompt + 48 new tokens.
Every part runs in fp32 and, with ``--bf16``, under bf16 autocast too (on a CPU without bf16 units
torch emulates bf16: several times slower, no guide to a machine that has them).
Within a child, steps of its models alternate; each figure is the median of ``--steps`` timed steps
after one warm-up. Results: docs/results/kngpt2_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, WORK, Results, md_table  # noqa: E402

from kronbit.core.hardware import native_bf16  # noqa: E402

TEACHER = "packaged:smollm2"
MODELS = ("teacher", "layerdrop", "kngpt2", "dense_embedding")
KD = {"logits": 1.0, "embedding": 1.0, "hidden": 1.0, "attention": 1.0, "attention_loss": "prob_kl",
      "hidden_loss": "relative_mse", "task": 1.0, "layer_map": "identity"}


def build(names, attn=None):
    """The teacher and the named students (fresh from the teacher's weights, as the recipes build them)."""
    import yaml
    from kronbit.kron import kroneckerize_
    from kronbit.layerdrop import drop_layers, plan_for_params
    from kronbit.models.decoders import load_causal_lm

    teacher = load_causal_lm(TEACHER, attn_implementation=attn)
    out, kept = {"teacher": teacher}, {}
    recipes = {"kngpt2": "kron-pretrain.yaml", "dense_embedding": "kron-pretrain-dense-embedding.yaml"}
    for name in names:
        if name in recipes:
            spec = yaml.safe_load((REPO / "recipes" / "kngpt2" / recipes[name]).read_text())["stages"][0]["kron"]
            m = copy.deepcopy(teacher)
            kroneckerize_(m, spec)
            out[name] = m
    if "layerdrop" in names:
        size = sum(p.numel() for p in out.get("kngpt2", teacher).parameters()) if "kngpt2" in out else 93817364
        plan = plan_for_params(copy.deepcopy(teacher), size, 0.02)
        out["layerdrop"], kept["layerdrop"] = drop_layers(copy.deepcopy(teacher), plan.keep), plan.keep
    return {k: out[k] for k in ("teacher", *names) if k in out}, kept


def _timed(fn, steps, order):
    import torch
    for k in order:
        fn[k]()
    times = {k: [] for k in order}
    for _ in range(steps):
        for k in order:
            t = time.perf_counter()
            fn[k]()
            times[k].append(time.perf_counter() - t)
    del torch
    return {k: statistics.median(v) for k, v in times.items()}


def dtypes(args) -> list[bool]:
    """bf16 autocast off / on: both with --bf16, fp32 alone otherwise."""
    return [False, True] if args.bf16 else [False]


def worker_train(args):
    import torch
    if args.code != "before":
        from kronbit.core.allocator import keep_freed_memory
        keep_freed_memory()
    models, _ = build([m for m in MODELS if m != "teacher"])
    ids = torch.randint(0, 49152, (2, 256))
    res = {}
    for bf16 in dtypes(args):
        def step(m, bf16=bf16):
            def f():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = m(input_ids=ids, labels=ids).loss
                loss.backward()
                m.zero_grad(set_to_none=True)
            return f
        for m in models.values():
            m.train()
        # --compile: every model through torch.compile (compiled once per dtype; the first, untimed
        # step pays the compilation)
        run = {k: (torch.compile(m) if args.compile else m) for k, m in models.items()}
        t = _timed({k: step(m) for k, m in run.items()}, args.steps, list(models))
        res["bf16" if bf16 else "fp32"] = {k: ids.numel() / v for k, v in t.items()}
    return res


def worker_distill(args):
    import torch
    from transformers import TrainingArguments
    from kronbit.distill.losses import KDConfig
    from kronbit.distill.mapping import kept_layer_map
    from kronbit.distill.trainer import DistillationTrainer

    students = ["layerdrop", "kngpt2"]
    models, kept = build(students, attn="eager")
    teacher = models.pop("teacher")
    ids = torch.randint(0, 49152, (4, 256))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    fns = {}
    for name, m in models.items():
        kd = KDConfig(**KD)
        if name in kept:
            kd = kd.replace(layer_map=kept_layer_map(kd.layer_map, kept[name]))
        m.set_attn_implementation("eager")
        tr = DistillationTrainer(model=m, args=TrainingArguments(output_dir=tempfile.mkdtemp(), use_cpu=True,
                                                                 report_to=[]), teacher=teacher, kd=kd)
        m.train()

        for bf16 in dtypes(args):
            def f(tr=tr, m=m, bf16=bf16):
                # as the Trainer runs a bf16 step: student, teacher and losses under one autocast
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = tr.compute_loss(m, dict(batch))
                loss.backward()
                m.zero_grad(set_to_none=True)
            fns[(name, bf16)] = f
    t = _timed(fns, args.steps, list(fns))
    return {("bf16" if bf16 else "fp32"): {k: ids.numel() / v for (k, b), v in t.items() if b == bf16}
            for bf16 in dtypes(args)}


def worker_decode(args):
    import torch
    models, _ = build([m for m in MODELS if m != "teacher"])
    prompt = torch.randint(0, 49152, (1, 16))
    new = 48

    def gen(m, bf16):
        def f():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = m.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True)
            assert out.shape[1] == 16 + new
        return f
    for m in models.values():
        m.eval()
    fns = {(k, bf16): gen(m, bf16) for k, m in models.items() for bf16 in dtypes(args)}
    t = _timed(fns, args.steps, list(fns))
    return {("bf16" if bf16 else "fp32"): {k: new / v for (k, b), v in t.items() if b == bf16}
            for bf16 in dtypes(args)}


def main_src(commit: str) -> Path:
    """The package source of ``commit``, extracted once into benchmarks/_work."""
    dest = WORK / "kngpt2_speed" / f"src_{commit}"
    if not (dest / "src" / "kronbit").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def run_child(part, code, args) -> dict:
    env = dict(os.environ)
    src = main_src(args.before_commit) if (code == "before" and part == "distill") else REPO / "src"
    env["PYTHONPATH"] = str(src)
    if code == "before":
        env["KRONBIT_MALLOC"] = "system"
    cmd = [sys.executable, __file__, "--worker", part, "--code", code, "--steps", str(args.steps)]
    cmd += ["--bf16"] if args.bf16 else []
    cmd += ["--compile"] if args.compile else []
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{part}/{code} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def render(res: Results) -> str:
    rows = res.data["rows"]
    out = ["# KnGPT2 speed: training, distillation and decoding throughput (CPU)\n\n",
           "Produced by `python benchmarks/kngpt2_speed.py`; commands, dates, machine and load per row in "
           "`kngpt2_speed.json`. Tokens/s, median of timed steps after a warm-up; the models of one "
           "part alternate step by step inside one process. "
           + ("bf16 autocast ran on the CPU's bf16 units (AVX512_BF16)."
              if all(r.get("bf16_native") for r in rows.values()) else
              "Rows without bf16 units (bf16_native false in the JSON) emulate bf16: no guide to a machine with them.")
           + (f" {res.data['timing_note']}" if res.data.get("timing_note") else "") + "\n\n"]
    for part, title, unit in (("train", "Student training alone, fwd+bwd, 2 × 256 tokens", "tokens/s"),
                              ("distill", "Distillation step (teacher fwd + student fwd+bwd + KD losses), "
                               "4 × 256 tokens", "tokens/s"),
                              ("decode", "Greedy decoding, batch 1, KV cache, 16 + 48 tokens", "new tokens/s")):
        keys = [k for k in rows if k.startswith(part + "/")]
        if not keys:
            continue
        table = []
        for k in sorted(keys):
            r = rows[k]
            for dtype, vals in r["tokens_per_s"].items():
                for model, v in vals.items():
                    table.append([r["code"], dtype, model, v, r["machine"]["load_avg_1_5_15min"][0]])
        out.append(f"## {title} ({unit})\n\n" + md_table(["code", "dtype", "model", unit, "load 1 min"], table)
                   + "\n")
    return "".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["train", "distill", "decode"],
                    choices=["train", "distill", "decode"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="also time every part under bf16 autocast")
    ap.add_argument("--before-commit", default="702dddc", help="the code the distill part's 'before' runs")
    ap.add_argument("--note", help="how the machine was while timing (kept in the JSON, shown on the page)")
    ap.add_argument("--compile", action="store_true",
                    help="train part only: every model through torch.compile, this tree's code (rows train/compiled)")
    ap.add_argument("--worker", choices=["train", "distill", "decode"], help=argparse.SUPPRESS)
    ap.add_argument("--code", choices=["before", "after", "compiled"], default="after", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        fn = {"train": worker_train, "distill": worker_distill, "decode": worker_decode}[args.worker]
        print(json.dumps(fn(args)))
        return
    res = Results("kngpt2_speed", "KnGPT2 students: training, distillation and decoding tokens/s (CPU)")
    if args.note:
        res.data["timing_note"] = args.note
    if args.compile and args.parts != ["train"]:
        sys.exit("--compile times the train part only: use --parts train --compile")
    for part in args.parts:
        codes = ["after"] if part == "decode" else ["before", "after"]
        if args.compile:
            codes = ["compiled"]
        for code in codes:
            t0 = time.time()
            got = run_child(part, code, args)
            res.add(f"{part}/{code}", {"part": part, "code": code, "tokens_per_s": got, "steps": args.steps,
                                       "before_commit": args.before_commit if part == "distill" else None,
                                       "wall_s": round(time.time() - t0, 1), "bf16_native": native_bf16(),
                                       "unit": "tokens per second (decode: new tokens per second)"})
            print(part, code, json.dumps(got), flush=True)
            res.save(render(res))


if __name__ == "__main__":
    main()
