"""KnGPT2 speed: students' training tokens/s, distillation (teacher + student) tokens/s, greedy decoding.

    python benchmarks/kngpt2_speed.py [--parts train distill decode] [--steps 3]

Models: the teacher SmolLM2-135M (``packaged:smollm2``); the KnGPT2 student (embedding + odd blocks
at factor 2, recipes/kngpt2/kron-pretrain.yaml); the dense-embedding Kronecker student (23 blocks,
recipes/kngpt2/kron-pretrain-dense-embedding.yaml); the layer-drop student sized to the KnGPT2
student (as benchmarks/kngpt2.py sizes it). Random token ids (speed does not depend on the text).

Parts, each run as child processes so that "before" and "after" are measured in one run:
  * ``train``: fwd+bwd of a model alone (LM loss) at 2 × 256 tokens. Before: glibc's default allocator
    and the general Kronecker contraction for every shape; after: ``kronbit.core.allocator.
    keep_freed_memory`` and the copy-free path for a row or column factor (``kron.layers.VECTOR_FACTOR_PATH``).
  * ``distill``: one ``DistillationTrainer`` step (compute_loss + backward) with the recipes' KD
    (embedding, attention prob_kl, relative hidden MSE, logits, LM loss; eager teacher) at 4 × 256
    tokens. Before: the code of ``--before-commit`` (extracted with ``git archive`` into
    benchmarks/_work); after: this tree.
  * ``decode``: greedy ``generate`` at batch 1 with the KV cache, 16 prompt + 48 new tokens, in fp32,
    and with --bf16 under bf16 autocast and with bf16 weights (this tree's code only).
    With --compile (rows decode/compiled): fp32 and bf16 weights, static KV cache, compiled forward.
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


def structure_macs(mod) -> int:
    """Per-token multiply-accumulates of one linear map (Kronecker layers at their contraction's
    cost); 0 for anything else."""
    from torch import nn
    from kronbit.kron.layers import KroneckerLinear, KroneckerTiedHead, kron_flops
    if isinstance(mod, KroneckerLinear):
        return kron_flops(mod.a_shape, mod.b_shape, mod.rank)
    if isinstance(mod, KroneckerTiedHead):
        e = mod.embedding
        return kron_flops(e.a_shape, e.b_shape, e.rank)
    if isinstance(mod, nn.Linear):
        return mod.in_features * mod.out_features
    return 0


def structure(model) -> dict:
    """Per-token multiply-accumulates of the linear maps (LM head included) and the number of
    transformer blocks."""
    return {"linear_macs_per_token": sum(structure_macs(m) for m in model.modules()),
            "blocks": model.config.num_hidden_layers}


def worker_train(args):
    """Students alone with the LM loss, eager attention as the distillation recipes run them (their
    attention KD reads the probabilities; eager was also 10-15% faster than SDPA here at 256 tokens)."""
    import torch
    if args.code != "before":
        from kronbit.core.allocator import keep_freed_memory
        keep_freed_memory()
    else:
        from kronbit.kron import layers
        layers.VECTOR_FACTOR_PATH = False
    models, _ = build([m for m in MODELS if m != "teacher"], attn="eager")
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
        per_model, per_shape = linear_ms(models, ids.numel(), bf16, args.steps)
        res.setdefault("linear_ms", {})["bf16" if bf16 else "fp32"] = per_model
        res.setdefault("linear_shape_ms", {})["bf16" if bf16 else "fp32"] = per_shape
    res["structure"] = {k: structure(m) for k, m in models.items()}
    res["tokens"] = ids.numel()
    return res


def linear_ms(models: dict, tokens: int, bf16: bool, steps: int, decode: bool = False) -> tuple[dict, list]:
    """ms per step of each model's linear maps, fwd+bwd on ``tokens`` rows: one module per shape
    timed alone (median of ``steps`` after a warm-up), times how many the model has; and the
    per-shape rows (kind, in, out, A, B, ms, MACs per token, count per model). ``decode``: forward
    only under inference mode, inputs in the weights' dtype, each timing the mean of 50 calls
    (one call at 1 token is tens of microseconds)."""
    import torch
    from torch import nn
    from kronbit.kron.layers import KroneckerLinear, KroneckerTiedHead

    def signature(mod):
        if isinstance(mod, KroneckerLinear):
            return ("kron", mod.in_features, mod.out_features, mod.a_shape, mod.b_shape, mod.order)
        if isinstance(mod, KroneckerTiedHead):
            return ("kron_head", mod.in_features, mod.out_features)
        if isinstance(mod, nn.Linear):
            return ("dense", mod.in_features, mod.out_features, mod.bias is not None)
        return None

    cache: dict = {}
    counts: dict = {}
    macs: dict = {}
    out = {}
    for name, model in models.items():
        total = 0.0
        for mod in model.modules():
            sig = signature(mod)
            if sig is None:
                continue
            counts.setdefault(sig, {}).setdefault(name, 0)
            counts[sig][name] += 1
            macs[sig] = structure_macs(mod)
            if sig not in cache and decode:
                weight = next(iter(mod.parameters()), None)
                if weight is None:  # a tied head owns no parameter: its embedding's factors
                    weight = mod.embedding.a
                x = torch.randn(1, tokens, sig[1], dtype=weight.dtype)

                def f(mod=mod, x=x):
                    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        for _ in range(50):
                            mod(x)
                cache[sig] = 1e3 * _timed({0: f}, steps, [0])[0] / 50
            elif sig not in cache:
                x = torch.randn(tokens, sig[1], requires_grad=True)

                def f(mod=mod, x=x):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        y = mod(x)
                    y.float().sum().backward()
                    mod.zero_grad(set_to_none=True)
                    x.grad = None
                cache[sig] = 1e3 * _timed({0: f}, steps, [0])[0]
            total += cache[sig]
        out[name] = total
    shapes = [{"kind": sig[0], "in": sig[1], "out": sig[2], "a": list(sig[3]) if sig[0] == "kron" else None,
               "b": list(sig[4]) if sig[0] == "kron" else None, "ms": cache[sig], "macs_per_token": macs[sig],
               "count": counts[sig]} for sig in cache]
    return out, shapes


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
    """Greedy decoding in fp32, and with --bf16 under bf16 autocast and with the weights cast to
    bf16 (what a user who ships a model for generation does: half the bytes read per token, no
    per-call weight casts). Code "compiled": a static KV cache and torch.compile'd forward."""
    import torch
    models, _ = build([m for m in MODELS if m != "teacher"])
    prompt = torch.randint(0, 49152, (1, 16))
    new = 48
    modes = ["fp32"] + (["bf16 weights"] if args.code == "compiled" else []) \
        + (["bf16 autocast", "bf16 weights"] if args.bf16 and args.code != "compiled" else [])
    modes = list(dict.fromkeys(modes))

    def gen(m, autocast):
        def f():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = m.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True)
            assert out.shape[1] == 16 + new
        return f
    fns, per_mode = {}, {}
    for mode in modes:
        for k, m in models.items():
            if mode == "bf16 weights" or args.code == "compiled":
                # a copy per mode: compiling sets ``forward`` on the instance, which a later deepcopy
                # would carry over (bound to the original module)
                m = copy.deepcopy(m).to(torch.bfloat16 if mode == "bf16 weights" else torch.float32)
            m.eval()
            if args.code == "compiled":
                m.generation_config.cache_implementation = "static"  # fixed shapes: one graph per phase
                m.forward = torch.compile(m.forward, dynamic=False)
            fns[(k, mode)] = gen(m, mode == "bf16 autocast")
            per_mode.setdefault(mode, {})[k] = m
    t = _timed(fns, args.steps, list(fns))
    res = {mode: {k: new / v for (k, md), v in t.items() if md == mode} for mode in modes}
    if args.code != "compiled":
        # Where a new token's time goes: every linear map at 1 token, alone (the decode steps' shape)
        for mode in modes:
            per_model, per_shape = linear_ms(per_mode[mode], 1, mode == "bf16 autocast", max(args.steps, 5),
                                             decode=True)
            res.setdefault("linear_ms", {})[mode] = per_model
            res.setdefault("linear_shape_ms", {})[mode] = per_shape
        res["structure"] = {k: structure(m) for k, m in models.items()}
        res["tokens"] = 1
    return res


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
        if part == "train":
            out.append(_split_section(rows))
        if part == "decode":
            out.append(_decode_split_section(rows))
    return "".join(out)


def _decode_split_section(rows: dict) -> str:
    """Per model and dtype: ms per new token, the linear maps' share (each at 1 token, alone) and the
    rest; for the Kronecker students, the decoding speed-up over the teacher if their Kronecker
    layers ran at exactly their MAC share of the dense layer's time, and if every linear map were free."""
    table = []
    for k in sorted(k for k in rows if k.startswith("decode/") and rows[k].get("linear_shape_ms")):
        r = rows[k]
        for mode, tps in r["tokens_per_s"].items():
            lin = r["linear_ms"][mode]
            teacher_ms = 1e3 / tps["teacher"]
            for model, v in tps.items():
                ms = 1e3 / v
                b = perfect_kron_bound(r["linear_shape_ms"][mode], tps, 1, model)
                kron = b is not None and b["saved_ms"] > 0
                table.append([r["code"], mode, model, f"{ms:.1f}", f"{lin[model]:.1f}", f"{ms - lin[model]:.1f}",
                              f"{teacher_ms / ms:.2f}",
                              f"{teacher_ms / b['bound_ms']:.2f}" if kron else "",
                              f"{teacher_ms / (ms - lin[model]):.2f}" if model != "teacher" else ""])
    if not table:
        return ""
    return ("### Where a new token's time goes\n\n"
            "ms per new token = 1000 ÷ the row above (the 16-token prompt's prefill included). Linear ms: every "
            "linear map (LM head included) timed alone at 1 token in the row's dtype, one module per shape times "
            "the model's count of it. The rest is attention with its cache, norms, rotary, SiLU, residual adds, "
            "sampling and the Python of 30 (or the kept) blocks; a Kronecker student keeps all 30 blocks, so it "
            "keeps the teacher's rest. Bounds, as speed-up over the teacher: Kronecker layers at exactly their "
            "MAC share × the dense layer's time; every linear map free (the rest alone).\n\n"
            + md_table(["code", "dtype", "model", "ms / new token", "linear ms", "rest ms", "× teacher",
                        "bound: Kronecker at MAC share", "bound: linears free"], table) + "\n")


def perfect_kron_bound(shapes: list, tps: dict, tokens: int, model: str) -> dict | None:
    """The model's step if each of its Kronecker layers took (its MACs ÷ the dense layer's MACs) ×
    the dense layer's time: the ceiling of any Kronecker-layer speed-up."""
    dense = {(x["in"], x["out"]): x for x in shapes if x["kind"] == "dense"}
    saved = 0.0
    for x in shapes:
        d, n = dense.get((x["in"], x["out"])), x["count"].get(model, 0)
        if x["kind"] == "dense" or d is None or not n:
            continue
        saved += n * max(0.0, x["ms"] - x["macs_per_token"] / d["macs_per_token"] * d["ms"])
    if model not in tps:
        return None
    step = 1e3 * tokens / tps[model]
    return {"step_ms": step, "saved_ms": saved, "bound_ms": step - saved, "bound_tps": 1e3 * tokens / (step - saved)}


def _split_section(rows: dict) -> str:
    table = []
    for k in sorted(k for k in rows if k.startswith("train/") and rows[k].get("linear_ms")):
        r = rows[k]
        for dtype, tps in r["tokens_per_s"].items():
            for model, lin in r["linear_ms"][dtype].items():
                step = 1e3 * r["tokens"] / tps[model]
                blocks = r["structure"][model]["blocks"]
                table.append([r["code"], dtype, model, f"{r['structure'][model]['linear_macs_per_token'] / 1e6:.1f}",
                              blocks, f"{step:.0f}", f"{lin:.0f}", f"{step - lin:.0f}", f"{(step - lin) / blocks:.1f}"])
    if not table:
        return ""
    shape_rows = []
    for k in sorted(k for k in rows if k.startswith("train/") and rows[k].get("linear_shape_ms")):
        r = rows[k]
        for dtype, shapes in r["linear_shape_ms"].items():
            dense = {(x["in"], x["out"]): x for x in shapes if x["kind"] == "dense"}
            for x in shapes:
                d = dense.get((x["in"], x["out"]))
                if x["kind"] == "dense" or d is None:
                    continue
                shape_rows.append([r["code"], dtype, f"{x['in']}→{x['out']}", f"{x['a']}⊗{x['b']}" if x["a"] else "tied head",
                                   x["count"].get("kngpt2", 0), f"{x['ms']:.2f}", f"{d['ms']:.2f}",
                                   f"{x['ms'] / d['ms']:.2f}", f"{x['macs_per_token'] / d['macs_per_token']:.2f}"])
    shapes_md = ("\nEach Kronecker shape of the KnGPT2 student against the dense layer it replaces, fwd+bwd alone on "
                 "the same 512 tokens:\n\n" + md_table(["code", "dtype", "layer", "A⊗B", "count in KnGPT2", "Kronecker ms",
                                                       "dense ms", "time ratio", "MAC ratio"], shape_rows) + "\n"
                 if shape_rows else "")
    bound_rows = []
    for k in sorted(k for k in rows if k.startswith("train/") and rows[k].get("linear_shape_ms")):
        r = rows[k]
        for dtype, shapes in r["linear_shape_ms"].items():
            b = perfect_kron_bound(shapes, r["tokens_per_s"][dtype], r["tokens"], "kngpt2")
            if b:
                bound_rows.append([r["code"], dtype, f"{b['step_ms']:.0f}", f"{b['saved_ms']:.0f}", f"{b['bound_ms']:.0f}",
                                   f"{b['bound_tps']:.0f}", f"{r['tokens_per_s'][dtype]['layerdrop']:.0f}",
                                   f"{b['bound_tps'] / r['tokens_per_s'][dtype]['layerdrop']:.2f}"])
    if bound_rows:
        shapes_md += ("\nThe most that faster Kronecker layers could give: every Kronecker layer of the KnGPT2 student "
                      "at exactly its MAC ratio × the dense layer's time (perfect efficiency), the rest of the step "
                      "unchanged:\n\n" + md_table(["code", "dtype", "KnGPT2 step ms", "saved at most ms",
                                                  "bound step ms", "bound tok/s", "layer-drop tok/s",
                                                  "bound ÷ layer-drop"], bound_rows) + "\n")
    return ("### Where the step goes: the linear maps and the rest\n\n"
            "Linear ms: every linear map of the model (block linears, Kronecker or dense, and the LM head) "
            "timed fwd+bwd alone on the step's 512 tokens, one module of each shape, times the number of "
            "modules of that shape. The rest (step minus linear) is attention, norms, rotary, SiLU, residual "
            "adds, embedding, loss and autograd bookkeeping, and it grows with the blocks a model keeps. At "
            "equal parameters the Kronecker students have about the layer-drop student's linear MACs but all "
            "30 blocks.\n\n"
            + md_table(["code", "dtype", "model", "M linear MACs/token", "blocks", "step ms", "linear ms",
                        "rest ms", "rest ms / block"], table) + "\n" + shapes_md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["train", "distill", "decode"],
                    choices=["train", "distill", "decode"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="also time every part under bf16 autocast")
    ap.add_argument("--before-commit", default="702dddc", help="the code the distill part's 'before' runs")
    ap.add_argument("--note", help="how the machine was while timing (kept in the JSON, shown on the page)")
    ap.add_argument("--compile", action="store_true",
                    help="train and decode parts: every model through torch.compile, this tree's code (rows "
                         "train/compiled, decode/compiled with a static KV cache)")
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
    if args.compile and "distill" in args.parts:
        sys.exit("--compile times the train and decode parts: use --parts train decode --compile")
    for part in args.parts:
        codes = ["after"] if part == "decode" else ["before", "after"]
        if args.compile:
            codes = ["compiled"]
        for code in codes:
            t0 = time.time()
            got = run_child(part, code, args)
            extra = {k: got.pop(k) for k in ("structure", "linear_ms", "linear_shape_ms", "tokens") if k in got}
            res.add(f"{part}/{code}", {"part": part, "code": code, "tokens_per_s": got, "steps": args.steps, **extra,
                                       "before_commit": args.before_commit if part == "distill" else None,
                                       "wall_s": round(time.time() - t0, 1), "bf16_native": native_bf16(),
                                       "unit": "tokens per second (decode: new tokens per second)"})
            print(part, code, json.dumps(got), flush=True)
            res.save(render(res))


if __name__ == "__main__":
    main()
