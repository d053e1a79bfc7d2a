"""Kernel-level benchmark of the bit-level GEMMs against this CPU's instruction roofline.

For the BERT-base layer shapes (768→768, 768→3072, 3072→768) at 128 and 4096 tokens (batch 1 and
32 × seq 128), 2 threads, medians of interleaved repeats:
  * binary GEMM (XOR-popcount, activations already packed) on every path this CPU runs, and the
    whole W1A1 layer (sign packing + GEMM + epilogue, ``PackedLinear`` on its kernel);
  * 2-bit × int8 GEMM (activations already quantized) and the whole W2A8 layer;
  * for reference, the same ``nn.Linear`` in fp32 and under int8 dynamic quantization (fbgemm).

Roofline: the ceiling of the instruction each kernel path is built on, measured on this CPU by
benchmarks/roofline.py (its throughput on one core in instructions/s, i.e. instructions per cycle x
the clock the core really runs, both written out) x MACs per instruction x cores:
  * binary, AVX-512: VPOPCNTQ zmm, 512 binary MACs (XOR/AND + popcount of 512 bit pairs);
  * binary, AVX2: no vector popcount, so a nibble lookup: VPSHUFB ymm, 32 lookups x 4 bits = 128;
  * 2-bit x int8: VPDPBUSD zmm (64 MACs; AVX-512 VNNI), VPDPBUSD ymm (32; AVX-VNNI) or
    VPMADDUBSW ymm (32; AVX2, the instruction fbgemm's AVX2 int8 GEMM is built on).
The kernels need other instructions beside these (the binary one an XOR and an add per VPOPCNTQ),
so the roofline also shows the ceiling of that instruction mix alone.

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
from common import machine as machine_now  # noqa: E402
import roofline  # noqa: E402

from kronbit import QuantConfig  # noqa: E402
from kronbit.core.allocator import keep_freed_memory  # noqa: E402
from kronbit.quant import kernels, pack  # noqa: E402
from kronbit.quant.layers import QuantLinear  # noqa: E402
from kronbit.quant.packed import PackedLinear  # noqa: E402

SHAPES = [(768, 768), (768, 3072), (3072, 768)]  # (in, out) of BERT-base's linear layers
TOKENS = [128, 4096]
THREADS = 2


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


def _roof_key(name: str) -> str | None:
    """"binary/avx512" for "binary gemm avx512" or "W1A1 layer avx512"; None for the portable
    paths (no vector instruction to bound them) and the reference rows."""
    kind = _kind(name)
    path = name.rsplit(" ", 1)[-1]
    return f"{kind}/{path}" if kind and (kind, path) in roofline.BOUND else None


def measure(res: Results, rounds: int) -> None:
    probe = roofline.measure()
    roof = roofline.roofs(probe, THREADS)  # G MAC/s per kernel path over THREADS cores
    res.data["roofline"] = {"cores": THREADS, "instructions": probe, "gmac_per_s": roof,
                            "nominal_clock_ghz": roofline.clock_ghz(),
                            "derivation": "measured instructions/s per core (benchmarks/roofline.py) x MACs per "
                                          "instruction x cores", "machine": machine_now()}
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
                vector_gemms = {n: f for n, f in fns.items() if "gemm" in n and _roof_key(n)}
                cpu1 = _cpu_ms_one_thread(vector_gemms, rounds)
            macs = t * k * o
            gmacs = {n: round(macs / (v / 1e3) / 1e9, 1) for n, v in ms.items()}
            frac = {n: round(gmacs[n] / roof[_roof_key(n)], 3) for n in ms if _roof_key(n) in roof}
            frac1 = {n: round(macs / (v / 1e3) / 1e9 / (roof[_roof_key(n)] / THREADS), 3) for n, v in cpu1.items()}
            res.add(key, {"in": k, "out": o, "tokens": t, "unit": "ms per call (median of interleaved rounds); "
                          "GMAC/s; fraction of the roofline", "ms": ms, "gmac_per_s": gmacs,
                          "fraction_of_roof": frac, "threads": torch.get_num_threads(), "rounds": rounds,
                          "one_thread_cpu_ms": cpu1, "one_thread_fraction_of_core_roof": frac1})
            print(key, ms, frac, cpu1, frac1, flush=True)


def render(res: Results) -> str:
    r = res.data["roofline"]
    ins = r["instructions"]
    clock = ins["clock"]
    lines = []
    for key, g in r["gmac_per_s"].items():
        name = roofline.BOUND[tuple(key.split("/"))]
        i = ins[name]
        lines.append(f"* {key}: {name.replace('_', ' ')} {i['per_cycle']} / cycle × {i['macs_per_instr']} MAC × "
                     f"{clock['measured_ghz']:.2f} GHz × {r['cores']} cores = **{g} G MAC/s**")
    mix = ins.get("binary_mix_zmm")
    if mix:
        lines.append(f"* the binary AVX-512 kernel's own instruction mix (VPXORQ + VPOPCNTQ + VPADDQ, no loads) runs "
                     f"{mix['per_cycle']} VPOPCNTQ / cycle: at most {mix['per_cycle'] / ins['vpopcntq_zmm']['per_cycle']:.0%} "
                     f"of the binary/avx512 roof (VPXORQ alone: {ins['vpxorq_zmm']['per_cycle']} / cycle, the number "
                     "of vector pipes)")
    out = ["# Bit-level kernels against this CPU's roofline\n",
           "Produced by `python benchmarks/binary_kernel.py`; commands, dates and machine in `binary_kernel.json`. "
           f"{THREADS} threads, medians of interleaved rounds.\n",
           "## Roofline\n",
           f"Measured by `benchmarks/roofline.py` on this CPU: the clock by a chain of dependent 1-cycle adds "
           f"({clock['measured_ghz']:.2f} GHz; /proc/cpuinfo says {clock['nominal_ghz']:.2f}), each instruction by a "
           "loop of it alone on 12 independent registers (one thread, best of 15 runs).\n",
           *lines, "",
           "\"gemm\" rows take packed (binary) or quantized (int8) activations; \"layer\" rows are the whole packed "
           "layer (activation packing / quantization, GEMM, epilogue). Every row runs with glibc keeping freed "
           "memory, as a loaded packed model does (`quant.packed.after_load`).\n"]
    rows = [(k, v) for k, v in res.data["rows"].items()]
    names = []
    for _, v in rows:
        names += [n for n in v["ms"] if n not in names]
    loads = [v["machine"]["load_avg_1_5_15min"][0] for _, v in rows]
    out.append(f"Load average (1 min) while measured: {min(loads)}–{max(loads)} on {r['cores']} cores (other "
               "jobs paused while it ran; the load average counts this benchmark's own threads and decays slowly).\n")
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
    # As a loaded packed model runs (quant.packed.after_load), for every row alike: freed memory kept,
    # so a 4096 x 3072 output is not mapped and page-faulted in anew on every call.
    keep_freed_memory()
    res = Results("binary_kernel", "bit-level GEMM kernels against the CPU's instruction roofline")
    if args.redo:
        res.data["rows"] = {}
    for key in args.redo_rows or []:
        res.data["rows"].pop(key, None)
    measure(res, args.rounds)
    res.save(render(res))


if __name__ == "__main__":
    main()
