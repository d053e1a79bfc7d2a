"""Kronecker layer speed: KroneckerLinear vs nn.Linear, forward + backward, on CPU.

    python benchmarks/kron_speed.py [--quick] [--threads N] [--repeats 9] [--resume]

For GPT-2 (768→3072, 3072→768, 768→2304, 768→768) and SmolLM2-135M (576→1536, 1536→576, 576→576)
layer shapes (in→out), several factor shapes each (fixed ones and the shape chooser's picks at
compression 2 and 4), at 1024 tokens and at 1 token, in fp32 and under bf16 autocast. Dense and
Kronecker variants of one layer are timed side by side in the same process: after a warm-up,
rounds alternate between the variants (so drift in machine load hits them alike) and each figure
is the median over the rounds. One timed call = forward, then the gradients w.r.t. the input and
every parameter (``torch.autograd.grad``, no accumulation).

Reported per row: median time per call (ms), measured speed-up (dense / Kronecker), the ideal FLOP
speed-up (dense MACs / Kronecker MACs of the chosen contraction order, the same ratio for forward
and forward+backward) and their ratio (the fraction of the ideal realised). Targets from the issue:
at 1024 tokens fwd+bwd reaches ≥ 0.7× of the ideal speed-up, and the shape chooser never picks a
shape slower than dense.

Results: docs/results/kron_speed.{json,md}. A run starts fresh unless --resume is given (then rows
already measured with the same settings are kept).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from common import Results, md_table  # noqa: E402

from kronbit.kron import KroneckerLinear  # noqa: E402
from kronbit.kron.shapes import FactorShape, choose_shape  # noqa: E402

# (model, in_features, out_features)
LAYERS = [("gpt2", 768, 3072), ("gpt2", 3072, 768), ("gpt2", 768, 2304), ("gpt2", 768, 768),
          ("smollm2", 576, 1536), ("smollm2", 1536, 576), ("smollm2", 576, 576)]
QUICK_LAYERS = [("gpt2", 3072, 768), ("smollm2", 576, 576)]
FIXED_A = [(2, 1), (1, 2), (2, 2), (4, 4)]   # A shapes (m1, n1) of W (out, in); plus one balanced shape
QUICK_FIXED_A = [(2, 2)]
COMPRESSIONS = [2, 4]
QUICK_COMPRESSIONS = [2]
TARGET_RATIO = 0.7


def balanced_a(out_f: int, in_f: int) -> tuple[int, int]:
    """A with m1 ≈ √out and n1 ≈ √in (the most compressed region of the shape space)."""
    def near_sqrt(k):
        ds = [d for d in range(1, k + 1) if k % d == 0]
        return min(ds, key=lambda d: abs(d - math.sqrt(k)))
    return near_sqrt(out_f), near_sqrt(in_f)


def variants(out_f: int, in_f: int, W: torch.Tensor, quick: bool) -> list[tuple[str, tuple[int, int], bool]]:
    """(label, A shape, is_chooser_pick) for one layer, deduplicated by A shape."""
    found: dict[tuple[int, int], list[str]] = {}
    chooser: set[tuple[int, int]] = set()
    fixed = QUICK_FIXED_A if quick else FIXED_A + [balanced_a(out_f, in_f)]
    for a in fixed:
        if out_f % a[0] == 0 and in_f % a[1] == 0:
            found.setdefault(a, []).append(f"A {a[0]}×{a[1]}")
    for c in (QUICK_COMPRESSIONS if quick else COMPRESSIONS):
        pick = choose_shape(W, rank=1, compression=c)
        a = pick.shape.a_shape
        found.setdefault(a, []).append(f"chooser c={c}")
        chooser.add(a)
    return [(" = ".join(labels), a, a in chooser) for a, labels in found.items()]


def make_call(layer: nn.Module, x: torch.Tensor, bf16: bool):
    params = [p for p in layer.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        g = torch.randn_like(layer(x))

    def call():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = layer(x)
        torch.autograd.grad(y, [x, *params], g)
    return call


def calibrate(call, min_time: float) -> int:
    """Calls per sample so one sample lasts ≥ min_time (1-token calls take microseconds)."""
    call()
    t = time.perf_counter()
    call()
    dt = max(time.perf_counter() - t, 1e-7)
    return max(1, math.ceil(min_time / dt))


def measure(calls: dict[str, object], repeats: int, min_time: float, warmup: int) -> dict[str, float]:
    """Median seconds per call for each variant, timed in alternating rounds."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    inner = {k: calibrate(c, min_time) for k, c in calls.items()}
    samples: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for k, call in calls.items():
            t = time.perf_counter()
            for _ in range(inner[k]):
                call()
            samples[k].append((time.perf_counter() - t) / inner[k])
    return {k: statistics.median(v) for k, v in samples.items()}


def render(res: Results) -> str:
    rows = list(res.data["rows"].values())
    if not rows:
        return "# Kronecker layer speed\n\n(no rows yet)\n"
    r0 = rows[-1]
    runs = {}
    for r in rows:  # one line per run that produced rows (a partial re-measure adds one)
        m = r["machine"]
        runs.setdefault((r["command"], r["date"][:10]), (r["date"], m, sorted({x["tokens"] for x in rows
                                                                                if x["command"] == r["command"]})))
    produced = "; ".join(f"`{cmd}` on {date} ({m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, "
                         f"torch {m['torch']}; rows at {', '.join(map(str, toks))} token(s))"
                         for (cmd, _), (date, m, toks) in runs.items())
    out = ["# Kronecker layer speed: KroneckerLinear vs nn.Linear, forward + backward (CPU)\n\n",
           f"Produced by {produced}. Each row: median over alternating "
           "rounds of the dense and Kronecker layers timed side by side; one call = forward + gradients "
           "w.r.t. input and parameters. Speed-up = dense time / Kronecker time; ideal = dense MACs / "
           "Kronecker MACs; ratio = speed-up / ideal. Shapes are of W (out × in). Weights: random "
           "N(0, 0.02²), so the chooser's picks (rank 1) are those for random weights.\n\n"]
    if r0.get("quick"):
        out.append("**Quick validation run (`--quick`): two layers, few rounds; the figures only show that "
                   "the script works. Rerun without `--quick` on an idle machine for the real numbers.**\n\n")
    for note in res.data.get("notes") or ([res.data["note"]] if res.data.get("note") else []):
        out.append(f"Note: {note}\n\n")
    for dtype in ("fp32", "bf16"):
        for tokens in (1024, 1):
            sel = [r for r in rows if r["dtype"] == dtype and r["tokens"] == tokens]
            if not sel:
                continue
            out.append(f"## {dtype}, {tokens} token{'s' if tokens > 1 else ''}\n\n")
            table = []
            for r in sel:
                table.append([f"{r['model']} {r['in_features']}→{r['out_features']}", r["label"],
                              "×".join(map(str, r["a_shape"])), "×".join(map(str, r["b_shape"])),
                              f"{r['compression']:.1f}", f"{r['dense_ms']:.3f}", f"{r['kron_ms']:.3f}",
                              r["speedup"], r["ideal_speedup"], r["ratio"],
                              ("yes" if r["speedup"] >= 1 else "**NO**") if r["chooser_pick"] else ""])
            out.append(md_table(["layer", "factor shape", "A", "B", "params ÷", "dense ms", "kron ms", "speed-up ×",
                                 "ideal ×", "ratio", "chooser pick ≥ dense"], table) + "\n")
    out.append("## Targets\n\n")
    big = [r for r in rows if r["tokens"] == 1024]
    if big:
        met = [r for r in big if r["ratio"] >= TARGET_RATIO]
        low = [r for r in big if r["ideal_speedup"] < 2.5]
        met_low = [r for r in low if r["ratio"] >= TARGET_RATIO]
        out.append(f"- fwd+bwd at 1024 tokens ≥ {TARGET_RATIO}× of the ideal FLOP speed-up: {len(met)} of "
                   f"{len(big)} rows; of the rows with ideal < 2.5× (A 2×1, 1×2, 2×2 and the chooser's "
                   f"factor-2 picks): {len(met_low)} of {len(low)}.\n")
    for tokens in (1024, 1):
        picks = [r for r in rows if r["chooser_pick"] and r["tokens"] == tokens]
        slow = [r for r in picks if r["speedup"] < 1]
        if picks:
            out.append(f"- shape chooser never slower than dense, {tokens} token{'s' if tokens > 1 else ''}: "
                       f"{len(picks) - len(slow)} of {len(picks)} chooser rows are at least as fast as dense"
                       + (f"; slower: {'; '.join(r['key'] for r in slow)}" if slow else "") + ".\n")
    return "".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two layers, two factor shapes, fewer rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per variant (default 9; quick 5)")
    ap.add_argument("--resume", action="store_true", help="keep rows already measured with the same settings")
    ap.add_argument("--note", default=None, help="a remark for the results page (e.g. machine load)")
    ap.add_argument("--tokens", type=int, nargs="+", choices=[1024, 1], default=[1024, 1],
                    help="token counts to measure; a subset re-measures only those rows and keeps the others")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 9)
    min_time = 0.02 if args.quick else 0.05
    warmup = 2 if args.quick else 3
    res = Results("kron_speed", "KroneckerLinear vs nn.Linear forward+backward time on CPU (fp32, bf16 autocast)")
    settings = {"quick": args.quick, "repeats": repeats, "threads": torch.get_num_threads()}
    partial = set(args.tokens) != {1024, 1}
    if partial:  # re-measure these token counts; every other row stays as it was
        res.data["rows"] = {k: r for k, r in res.data["rows"].items() if r["tokens"] not in args.tokens}
    elif not args.resume:
        res.data["rows"] = {}
    if not partial:
        res.data["settings"] = settings
    notes = res.data.get("notes") or ([res.data["note"]] if res.data.get("note") else [])
    if args.note:
        notes = [*notes, args.note] if partial else [args.note]
    res.data["notes"] = notes
    res.data.pop("note", None)
    layers = QUICK_LAYERS if args.quick else LAYERS
    t_start = time.time()
    for model_name, in_f, out_f in layers:
        torch.manual_seed(0)
        dense = nn.Linear(in_f, out_f)
        with torch.no_grad():
            dense.weight.normal_(0.0, 0.02)
        picks = variants(out_f, in_f, dense.weight.detach(), args.quick)
        krons = {label: (KroneckerLinear.from_module(dense, a_shape=a), chooser) for label, a, chooser in picks}
        for dtype in ("fp32", "bf16"):
            for tokens in [t for t in (1024, 1) if t in args.tokens]:
                keys = {label: f"{model_name} {in_f}->{out_f} | {label} | {dtype} | {tokens}" for label in krons}
                if args.resume and all(res.done(k) and res.data["rows"][k].get("settings") == settings
                                       for k in keys.values()):
                    print(f"[skip] {model_name} {in_f}→{out_f} {dtype} {tokens}")
                    continue
                x = torch.randn(tokens, in_f, requires_grad=True)
                calls = {"dense": make_call(dense, x, dtype == "bf16")}
                calls.update({label: make_call(k, x, dtype == "bf16") for label, (k, _) in krons.items()})
                times = measure(calls, repeats, min_time, warmup)
                for label, (k, chooser) in krons.items():
                    s = FactorShape(*k.a_shape, *k.b_shape)
                    speedup = times["dense"] / times[label]
                    ideal = s.speedup(k.rank)
                    row = {"key": keys[label], "model": model_name, "in_features": in_f, "out_features": out_f,
                           "label": label, "a_shape": list(k.a_shape), "b_shape": list(k.b_shape), "rank": k.rank,
                           "order": k.order, "chooser_pick": chooser, "dtype": dtype, "tokens": tokens,
                           "compression": in_f * out_f / s.params(k.rank),
                           "dense_ms": round(times["dense"] * 1e3, 4), "kron_ms": round(times[label] * 1e3, 4),
                           "time_unit": "ms per forward+backward call (median)",
                           "speedup": round(speedup, 3), "ideal_speedup": round(ideal, 3),
                           "speedup_unit": "× (dense time / Kronecker time; ideal: dense MACs / Kronecker MACs)",
                           "ratio": round(speedup / ideal, 3), "ratio_unit": "fraction of the ideal speed-up",
                           "quick": args.quick, "settings": settings}
                    res.add(keys[label], row)
                    print(f"{model_name} {in_f:>4}→{out_f:<4} {dtype} {tokens:>4} tok  {label:<28} "
                          f"dense {times['dense'] * 1e3:8.3f} ms  kron {times[label] * 1e3:8.3f} ms  "
                          f"{speedup:5.2f}× (ideal {ideal:5.2f}×, ratio {speedup / ideal:4.2f})", flush=True)
                res.save(render(res))
    res.data["wall_time_s"] = round(time.time() - t_start, 1)
    res.save(render(res))
    print(f"wrote {res.json_path} and {res.md_path} in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
