"""Does a custom autograd function make KnGPT2's Kronecker layers train faster?

The KnGPT2 issue names this lever: a hand-written backward that saves only what backward needs and
spends fewer kernel passes than autograd's. Every Kronecker shape of the KnGPT2 selection is a rank-1
layer with one factor a row or a column ([2, 1]⊗B, [1, 2]⊗B, A⊗[2, 1]), which ``kron_linear``
computes with one GEMM and one cheap step (kron.layers, the vector-factor path). Under bf16 that
cheap step and its backward cost about as much as the GEMM at 512 tokens (docs/results/
kngpt2_speed.md), so if any lever is left in the layer itself, it is there.

This script times, per shape, forward + backward on 512 tokens (the distillation step's 2 × 256),
interleaved round by round in one process (kron_speed.py's harness):

- dense: the nn.Linear the layer replaces;
- autograd: ``kron_linear`` as the library runs it;
- custom: the same maths as one ``torch.autograd.Function`` per case, whose backward reduces with
  GEMV/einsum calls instead of broadcast multiplies and sums, and saves only x, the factors and the
  GEMM's small output.

Shapes and their counts in each Kronecker student come from docs/results/kngpt2_speed.json (the
train part's per-shape rows), so the projected saving per training step is Σ count × (autograd −
custom). The custom function stays in this script: the library takes it only if it pays.

    python benchmarks/kron_custom_autograd.py [--rounds 9] [--note "..."]

Results: docs/results/kron_custom_autograd.{json,md}. Pause other jobs while it runs (the note says
how the machine was).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, Results, md_table  # noqa: E402
from kron_speed import make_call, measure  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from kronbit.kron.layers import kron_linear  # noqa: E402

TOKENS = 512
MIN_TIME = 0.01  # seconds per timed sample (several fwd+bwd calls)
WARMUP = 3       # untimed calls first (oneDNN builds its kernels on the first calls)
THREADS = 2


class _ScaleOut(torch.autograd.Function):
    """y[n, i, j] = v[n, i] · s[j] (axis=2) or s[i] · v[n, j] (axis=1), v = x Wᵀ one GEMM."""

    @staticmethod
    def forward(ctx, x2, w, s, axis: int):
        v = F.linear(x2, w)                                               # (N, k)
        N, k = v.shape
        y = v.unsqueeze(2) * s.view(1, 1, -1) if axis == 2 else s.view(1, -1, 1) * v.unsqueeze(1)
        ctx.save_for_backward(x2, w, s, v)
        ctx.axis = axis
        return y.reshape(N, -1)

    @staticmethod
    def backward(ctx, g):
        x2, w, s, v = ctx.saved_tensors
        N, k = v.shape
        if ctx.axis == 2:
            gv3 = g.view(N * k, s.numel())
            gv = torch.mv(gv3, s).view(N, k)                              # Σ_j g[n, i, j] s[j]
            gs = torch.mv(gv3.t(), v.reshape(-1))                          # Σ_{n,i} g[n, i, j] v[n, i]
        else:
            g3 = g.view(N, s.numel(), k)
            gv = torch.einsum("nik,i->nk", g3, s)
            gs = torch.einsum("nik,nk->i", g3, v)
        gx = gv @ w
        gw = gv.t() @ x2
        return gx, gw, gs, None


class _MixIn(torch.autograd.Function):
    """y = u Wᵀ with u the input mixed by s: over its blocks, u[n, k] = Σ_j s[j] x[n, j, k]
    (axis=1), or within them, u[n, j] = Σ_k x[n, j, k] s[k] (axis=2)."""

    @staticmethod
    def forward(ctx, x2, w, s, axis: int):
        N = x2.shape[0]
        if axis == 1:
            u = torch.einsum("njk,j->nk", x2.view(N, s.numel(), -1), s)
        else:
            u = torch.mv(x2.view(-1, s.numel()), s).view(N, -1)
        ctx.save_for_backward(x2, w, s, u)
        ctx.axis = axis
        return F.linear(u, w)

    @staticmethod
    def backward(ctx, g):
        x2, w, s, u = ctx.saved_tensors
        N = x2.shape[0]
        gu = g @ w
        gw = g.t() @ u
        if ctx.axis == 1:
            gx = (s.view(1, -1, 1) * gu.unsqueeze(1)).reshape(N, -1)
            gs = torch.einsum("njk,nk->j", x2.view(N, s.numel(), -1), gu)
        else:
            gx = (gu.unsqueeze(2) * s.view(1, 1, -1)).reshape(N, -1)
            gs = torch.mv(x2.view(-1, s.numel()).t(), gu.reshape(-1))
        return gx, gw, gs, None


def custom_kron_linear(x2, a, b):
    """kron_linear's rank-1 cases with a row or column factor (no bias) through the functions above."""
    _, m1, n1 = a.shape
    _, m2, n2 = b.shape
    if torch.is_autocast_enabled("cpu"):  # cast as F.linear would, then run the function without autocast
        dt = torch.get_autocast_dtype("cpu")
        x2, a, b = x2.to(dt), a.to(dt), b.to(dt)
    with torch.autocast("cpu", enabled=False):
        if n1 == 1:                      # A a column: scale the GEMM's output blocks by A
            return _ScaleOut.apply(x2, b.view(m2, n2), a.view(m1), 1)
        if n2 == 1:                      # B a column: GEMM with A, every output scaled by B
            return _ScaleOut.apply(x2, a.view(m1, n1), b.view(m2), 2)
        if m1 == 1:                      # A a row: mix the input's blocks, then the GEMM with B
            return _MixIn.apply(x2, b.view(m2, n2), a.view(n1), 1)
        if m2 == 1:                      # B a row: mix within each block, then the GEMM with A
            return _MixIn.apply(x2, a.view(m1, n1), b.view(n2), 2)
    raise ValueError(f"not a vector-factor shape: A {m1}×{n1}, B {m2}×{n2}")


def shapes_from_speed_results() -> list[dict]:
    path = RESULTS / "kngpt2_speed.json"
    try:
        rows = json.loads(path.read_text())["rows"]["train/after"]["linear_shape_ms"]["bf16"]
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f"error: {path} has no per-shape train rows ({e}); run benchmarks/kngpt2_speed.py first")
    seen, out = set(), []
    for r in rows:
        if r["kind"] != "kron" or r.get("a") is None:
            continue
        key = (r["in"], r["out"], tuple(r["a"]), tuple(r["b"]))
        if key in seen or r["out"] > 4096:  # the tied head is an embedding's transpose, not this path
            continue
        seen.add(key)
        out.append({"in": r["in"], "out": r["out"], "a": list(r["a"]), "b": list(r["b"]),
                    "count": {k: v for k, v in r["count"].items() if v}})
    return out


class _Factors(nn.Module):
    """A rank-1 Kronecker layer's two factors run through ``fn`` (the library's path or the custom one)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, fn):
        super().__init__()
        self.a, self.b, self.fn = nn.Parameter(a), nn.Parameter(b), fn

    def forward(self, x):
        return self.fn(x, self.a, self.b)


def time_shape(shape: dict, bf16: bool, rounds: int) -> dict:
    torch.manual_seed(0)
    (m1, n1), (m2, n2) = shape["a"], shape["b"]
    a, b = torch.randn(1, m1, n1), torch.randn(1, m2, n2) / n2 ** 0.5
    layers = {"dense": nn.Linear(shape["in"], shape["out"], bias=False),
              "autograd": _Factors(a, b, kron_linear), "custom": _Factors(a, b, custom_kron_linear)}
    x = torch.randn(TOKENS, shape["in"], requires_grad=True)
    # same outputs and gradients (the library path is the reference)
    g = torch.randn(TOKENS, shape["out"])
    got = []
    for name in ("autograd", "custom"):
        layer = layers[name]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = layer(x)
        got.append([y.detach(), *torch.autograd.grad(y, [x, layer.a, layer.b], g.to(y.dtype))])
    rel = max(float((p.float() - q.float()).abs().max() / p.float().abs().max()) for p, q in zip(*got))
    sec = measure({k: make_call(layer, x, bf16) for k, layer in layers.items()}, rounds, MIN_TIME, WARMUP)
    ms = {k: v * 1e3 for k, v in sec.items()}
    return {**shape, "dtype": "bf16" if bf16 else "fp32", "ms": ms, "custom_over_autograd": ms["custom"] / ms["autograd"],
            "max_rel_diff": rel}


def render(res: Results) -> str:
    rows, proj = [], {}
    for key, r in res.data["rows"].items():
        if not key.startswith("shape/"):
            continue
        a, b = "×".join(map(str, r["a"])), "×".join(map(str, r["b"]))
        rows.append([r["dtype"], f"{r['in']}→{r['out']}", f"[{a}]⊗[{b}]",
                     ", ".join(f"{k} {v}" for k, v in r["count"].items()),
                     r["ms"]["dense"], r["ms"]["autograd"], r["ms"]["custom"],
                     r["custom_over_autograd"], f"{r['max_rel_diff']:.1e}"])
        for model, n in r["count"].items():
            p = proj.setdefault((r["dtype"], model), [0.0, 0.0])
            p[0] += n * r["ms"]["autograd"]
            p[1] += n * r["ms"]["custom"]
    meta = res.data.get("run", {})
    md = ("# A custom autograd function for the Kronecker layers (KnGPT2 shapes, CPU)\n\n"
          "Produced by `python benchmarks/kron_custom_autograd.py`; command, date, machine and load in "
          "`kron_custom_autograd.json`. Forward + backward on 512 tokens, ms, median of interleaved rounds "
          f"(dense, autograd, custom in turn); ratio: custom ÷ autograd of those medians. "
          f"Machine: {meta.get('note', 'no note')}.\n\n"
          + md_table(["dtype", "layer", "A⊗B", "count", "dense ms", "autograd ms", "custom ms",
                      "custom ÷ autograd", "max rel. diff"], rows)
          + "\nSummed over a student's Kronecker layers (count × ms; the rest of the step unchanged):\n\n"
          + md_table(["dtype", "student", "autograd ms", "custom ms", "saved ms"],
                     [[d, m, v[0], v[1], v[0] - v[1]] for (d, m), v in sorted(proj.items())]))
    pays = [f"{m} in {d}" for (d, m), v in sorted(proj.items()) if v[1] < v[0]]
    md += ("\nThe custom function is faster in sum for: " + ", ".join(pays) + ".\n" if pays else
           "\nThe custom function is slower in sum for every student and dtype, so the library keeps autograd's "
           "backward (kron.layers): the reductions it replaces are short (2-wide) axes that the GEMV and "
           "einsum calls handle no better than a broadcast multiply and a sum.\n")
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds per shape")
    ap.add_argument("--note", help="how the machine was while timing (kept in the JSON, shown on the page)")
    args = ap.parse_args()
    if args.rounds < 1:
        sys.exit("error: --rounds must be at least 1")
    torch.set_num_threads(THREADS)
    shapes = shapes_from_speed_results()
    res = Results("kron_custom_autograd", "a custom autograd function for KnGPT2's vector-factor Kronecker layers")
    res.data["rows"] = {}
    res.data["run"] = {"note": args.note or "no note given", "tokens": TOKENS, "unit": "ms per fwd+bwd"}
    for bf16 in (True, False):
        for s in shapes:
            r = time_shape(s, bf16, args.rounds)
            key = f"shape/{r['dtype']}/{s['in']}x{s['out']}/{s['a']}x{s['b']}"
            res.add(key, r)
            print(f"{key}: {r['ms']} ratio {r['custom_over_autograd']:.2f}", flush=True)
    res.save(render(res))
    print(f"wrote {res.md_path}")


if __name__ == "__main__":
    main()
