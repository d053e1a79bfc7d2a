"""Kernel-level benchmark of the bit-level GEMMs against this CPU's instruction roofline.

For the BERT-base layer shapes (768→768, 768→3072, 3072→768) at 128 and 4096 tokens (batch 1 and
32 × seq 128), 2 threads, medians of interleaved repeats:
  * binary GEMM (XOR-popcount, activations already packed) on every path this CPU runs, and the
    whole W1A1 layer (sign packing + GEMM + epilogue, ``PackedLinear`` on its kernel);
  * 2-bit × int8 GEMM (activations already quantized) and the whole W2A8 layer;
  * for reference, the same ``nn.Linear`` in fp32 and under int8 dynamic quantization (fbgemm).

Roofline (the ceiling of the instruction each AVX2 kernel is built on), written out per CPU:
  * binary, AVX2: no vector popcount, so a nibble lookup. One VPSHUFB (ymm) does 32 lookups of a
    4-bit weight index in a table chosen by 4 activation bits: 32 × 4 = 128 binary MACs. The
    lookups are the bottleneck (2 VPSHUFB ymm per cycle on Zen 3: FP pipes 1 and 2), so
    roof = 2 × 128 = 256 binary MAC / cycle / core.
  * 2-bit × int8, AVX2: VPMADDUBSW (ymm) does 32 u8 × s8 multiplies (pairs summed); 2 per cycle on
    Zen 3 (FP pipes 0 and 3), so roof = 64 MAC / cycle / core (the same instruction fbgemm's
    AVX2 int8 GEMM is built on).
  roof / s = MAC per cycle × clock × cores; the clock is the one /proc/cpuinfo reports (a VM
  reports the nominal clock; a boost clock would raise the roof).

    python benchmarks/binary_kernel.py [--rounds 5] [--redo | --redo-rows 768x768/t128 ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.ao.quantization import quantize_dynamic  # noqa: E402

from common import Results, md_table  # noqa: E402

from kronbit import QuantConfig  # noqa: E402
from kronbit.quant import kernels, pack  # noqa: E402
from kronbit.quant.layers import QuantLinear  # noqa: E402
from kronbit.quant.packed import PackedLinear  # noqa: E402

SHAPES = [(768, 768), (768, 3072), (3072, 768)]  # (in, out) of BERT-base's linear layers
TOKENS = [128, 4096]
THREADS = 2
# MAC per cycle per core of the instruction each AVX2 kernel is bound by (see the docstring), Zen 3.
ROOF_PER_CYCLE = {"binary": 256, "ternary": 64}


def clock_ghz() -> float:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1]) / 1e3
    raise RuntimeError("no clock in /proc/cpuinfo")


def _median_ms(fns: dict, rounds: int) -> dict[str, float]:
    """Interleaved rounds: each round times every function once (mean of a few calls)."""
    reps = {}
    for name, f in fns.items():
        t0 = time.perf_counter()
        f()
        reps[name] = max(1, min(50, int(0.1 / max(time.perf_counter() - t0, 1e-6))))
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                f()
            times[name].append((time.perf_counter() - t0) / reps[name])
    return {n: round(1e3 * statistics.median(t), 4) for n, t in times.items()}


def _cpu_ms_one_thread(fns: dict, rounds: int) -> dict[str, float]:
    """The vector GEMMs on one thread, timed in that thread's CPU time: a job on the other core (or
    preemption) does not enter it, so this is the kernel's own speed against one core's roof."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for name, f in fns.items():
            f()
            times = []
            for _ in range(rounds):
                t0 = time.thread_time()
                f()
                times.append(time.thread_time() - t0)
            out[name] = round(1e3 * statistics.median(times), 4)
        return out
    finally:
        torch.set_num_threads(before)


def _layer(w_bits: int, a_bits: int, k: int, o: int, path: str) -> PackedLinear:
    q = QuantLinear(k, o, config=QuantConfig(w_bits=w_bits, a_bits=a_bits)).eval()
    with torch.no_grad():
        q(torch.randn(4, k))  # initialises the elastic binarizer
    m = PackedLinear.from_quant(q)
    assert m.use_kernel(path)
    return m


def _functions(k: int, o: int, t: int) -> dict:
    gen = torch.Generator().manual_seed(k + o)
    x = torch.randn(t, k, generator=gen)
    w1 = pack.pack_codes(torch.where(torch.rand(o, k, generator=gen) > 0.5, 1, -1).to(torch.int8), 1)
    act = kernels.pack_signs(x, torch.zeros(k))
    c2 = pack.pack_codes(torch.randint(-1, 2, (o, k), generator=gen, dtype=torch.int8), 2)
    wt = kernels.ternary_chunks(c2, k)
    q8, sq, _ = kernels.quantize_int8(x)
    lin = torch.nn.Linear(k, o).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.quantized.engine = "fbgemm"
        i8 = quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
    fns = {}
    for p in kernels.available_paths("binary"):
        wp = kernels.prepare_binary(w1, k, p)
        fns[f"binary gemm {p}"] = (lambda wp=wp, p=p: kernels.binary_gemm(act, k, wp, o, path=p))
    for p in kernels.available_paths("ternary"):
        if p != "portable" or t <= 128:  # the scalar 2-bit path takes seconds at 4096 tokens
            fns[f"ternary gemm {p}"] = (lambda p=p: kernels.ternary_gemm(q8, sq, wt, o, path=p))
    best_b, best_t = kernels.best_path("binary"), kernels.best_path("ternary")
    l1, l2 = _layer(1, 1, k, o, best_b), _layer(2, 8, k, o, best_t)
    fns[f"W1A1 layer {best_b}"] = lambda: l1(x)
    fns[f"W2A8 layer {best_t}"] = lambda: l2(x)
    fns["fp32 linear"] = lambda: lin(x)
    fns["int8 dynamic linear"] = lambda: i8(x)
    return fns


def _kind(name: str) -> str | None:
    if name.startswith(("binary", "W1A1")):
        return "binary"
    return "ternary" if name.startswith(("ternary", "W2A8")) else None


def measure(res: Results, rounds: int) -> None:
    ghz = clock_ghz()
    cores = THREADS
    roof = {kind: per * ghz * 1e9 * cores for kind, per in ROOF_PER_CYCLE.items()}
    res.data["roofline"] = {
        "cpu_clock_ghz": ghz, "cores": cores,
        "binary_mac_per_cycle_per_core": ROOF_PER_CYCLE["binary"],
        "ternary_mac_per_cycle_per_core": ROOF_PER_CYCLE["ternary"],
        "binary_gmac_per_s": round(roof["binary"] / 1e9, 1), "ternary_gmac_per_s": round(roof["ternary"] / 1e9, 1),
        "derivation": "binary: 2 VPSHUFB ymm / cycle x 32 lookups x 4 bits; ternary: 2 VPMADDUBSW ymm / cycle x "
                      "32 MACs; x clock (/proc/cpuinfo) x cores"}
    with torch.inference_mode():  # untimed: the first shape timed in a fresh process ran several times slower
        _median_ms(_functions(*SHAPES[0], TOKENS[0]), 2)
    for k, o in SHAPES:
        for t in TOKENS:
            key = f"{k}x{o}/t{t}"
            if res.done(key):
                continue
            with torch.inference_mode():
                fns = _functions(k, o, t)
                ms = _median_ms(fns, rounds)
                cpu1 = _cpu_ms_one_thread({n: f for n, f in fns.items() if n.endswith("gemm avx2")}, rounds)
            macs = t * k * o
            gmacs = {n: round(macs / (v / 1e3) / 1e9, 1) for n, v in ms.items()}
            frac = {n: round(gmacs[n] * 1e9 / roof[_kind(n)], 3) for n in ms if _kind(n)}
            frac1 = {n: round(macs / (v / 1e3) / (roof[_kind(n)] / cores), 3) for n, v in cpu1.items()}
            res.add(key, {"in": k, "out": o, "tokens": t, "unit": "ms per call (median of interleaved rounds); "
                          "GMAC/s; fraction of the roofline", "ms": ms, "gmac_per_s": gmacs,
                          "fraction_of_roof": frac, "threads": torch.get_num_threads(), "rounds": rounds,
                          "one_thread_cpu_ms": cpu1, "one_thread_fraction_of_core_roof": frac1})
            print(key, ms, frac, cpu1, frac1, flush=True)


def render(res: Results) -> str:
    r = res.data["roofline"]
    out = ["# Bit-level kernels against this CPU's roofline\n",
           "Produced by `python benchmarks/binary_kernel.py`; commands, dates and machine in `binary_kernel.json`. "
           f"{THREADS} threads, medians of interleaved rounds.\n",
           "## Roofline\n",
           f"* binary (AVX2 nibble lookup): {r['binary_mac_per_cycle_per_core']} binary MAC / cycle / core (2 VPSHUFB "
           f"ymm per cycle × 32 lookups × 4 bits) × {r['cpu_clock_ghz']:.3f} GHz × {r['cores']} cores = "
           f"**{r['binary_gmac_per_s']} G binary MAC/s**",
           f"* 2-bit × int8 (AVX2 VPMADDUBSW): {r['ternary_mac_per_cycle_per_core']} MAC / cycle / core (2 VPMADDUBSW "
           f"ymm per cycle × 32) × {r['cpu_clock_ghz']:.3f} GHz × {r['cores']} cores = **{r['ternary_gmac_per_s']} "
           "G MAC/s** (also the ceiling of fbgemm's AVX2 int8 GEMM)\n",
           "The clock is /proc/cpuinfo's (nominal on this VM). \"gemm\" rows take packed (binary) or quantized "
           "(int8) activations; \"layer\" rows are the whole packed layer (activation packing / quantization, GEMM, "
           "epilogue).\n"]
    rows = [(k, v) for k, v in res.data["rows"].items()]
    names = []
    for _, v in rows:
        names += [n for n in v["ms"] if n not in names]
    loads = [v["machine"]["load_avg_1_5_15min"][0] for _, v in rows]
    out.append(f"Load average (1 min) while measured: {min(loads)}–{max(loads)} on {r['cores']} cores (other jobs "
               "ran beside this one; the two-thread figures share the cores with them).\n")
    out.append("## ms per call (fraction of the roofline in brackets)\n\n" + md_table(
        ["in → out", "tokens", *names],
        [[f"{v['in']} → {v['out']}", v["tokens"],
          *[("" if n not in v["ms"] else f"{v['ms'][n]:.3f}" + (f" ({v['fraction_of_roof'][n]:.0%})"
                                                                 if n in v["fraction_of_roof"] else ""))
            for n in names]] for _, v in rows]))
    one = [(k, v) for k, v in rows if "one_thread_cpu_ms" in v]
    if one:
        gem = sorted({n for _, v in one for n in v["one_thread_cpu_ms"]})
        out.append("\n## One thread, its own CPU time (a job on the other core does not enter it)\n\n"
                   "ms per call and fraction of one core's roof in brackets.\n\n" + md_table(
            ["in → out", "tokens", *gem],
            [[f"{v['in']} → {v['out']}", v["tokens"],
              *[f"{v['one_thread_cpu_ms'][n]:.3f} ({v['one_thread_fraction_of_core_roof'][n]:.0%})" for n in gem]]
             for _, v in one]))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--redo", action="store_true")
    ap.add_argument("--redo-rows", nargs="+", metavar="KEY", help="recompute these rows only, e.g. 768x768/t128")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    os.environ.pop(kernels.ENV_PATH, None)
    res = Results("binary_kernel", "bit-level GEMM kernels against the CPU's instruction roofline")
    if args.redo:
        res.data["rows"] = {}
    for key in args.redo_rows or []:
        res.data["rows"].pop(key, None)
    measure(res, args.rounds)
    res.save(render(res))


if __name__ == "__main__":
    main()
