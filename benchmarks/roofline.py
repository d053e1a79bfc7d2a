"""This CPU's instruction ceilings for the bit-level kernels, measured rather than looked up.

Each ceiling is the throughput of the one instruction a kernel path is built on: a loop of that
instruction alone on 12 independent registers (so latency never stalls it), in inline assembly (so
the compiler cannot fold it away), timed on one thread. The result, instructions per second on one
core, is "instruction throughput x clock" as this core really runs it. The clock itself is measured
the same way, by a chain of dependent 1-cycle integer adds (a VM's /proc/cpuinfo shows a nominal
clock; a boosting core runs faster), and instructions per cycle = instructions/s / clock.
roof = instructions/s per core x MACs per instruction x cores.

  binary   avx512  VPOPCNTQ zmm      512 binary MAC (XOR/AND + popcount of 512 bit pairs)
           avx2    VPSHUFB ymm       128 binary MAC (32 nibble lookups x 4 bits, see binary_gemm.cpp)
  ternary  avx512  VPDPBUSD zmm       64 MAC (u8 x s8, summed in fours)
           avxvnni VPDPBUSD ymm       32 MAC
           avx2    VPMADDUBSW ymm     32 MAC (the instruction fbgemm's AVX2 int8 GEMM is built on)

A kernel needs other instructions beside its ceiling's (the XOR and the 64-bit add around each
VPOPCNTQ; the shifts and masks that decode 2-bit codes), so the fraction of the roof it reaches says
how much of the machine's peak for that instruction it turns into useful work. The "binary mix" row
times the binary kernel's own inner-loop mix (VPXORQ + VPOPCNTQ + VPADDQ on 12 accumulators) for
the ceiling that instruction mix alone allows.
"""

from __future__ import annotations

import time

from torch.utils.cpp_extension import load_inline

# One asm loop per instruction: 12 independent chains, 8 unrolled rounds per iteration.
_CPP = r"""
#include <torch/extension.h>
#include <cstdint>

#define R12(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) op(10) op(11)
#define S(x) #x
#define POPQ(i) "vpopcntq %%zmm" S(i) ", %%zmm" S(i) "\n\t"
#define DPZ(i) "vpdpbusd %%zmm13, %%zmm12, %%zmm" S(i) "\n\t"
#define DPY(i) "%{vex%} vpdpbusd %%ymm13, %%ymm12, %%ymm" S(i) "\n\t"
#define SHUF(i) "vpshufb %%ymm12, %%ymm" S(i) ", %%ymm" S(i) "\n\t"
#define MADD(i) "vpmaddubsw %%ymm13, %%ymm12, %%ymm" S(i) "\n\t"
#define MIX(i) "vpxorq %%zmm12, %%zmm13, %%zmm14\n\t" "vpopcntq %%zmm14, %%zmm15\n\t" "vpaddq %%zmm15, %%zmm" S(i) ", %%zmm" S(i) "\n\t"
#define ADDQ "add $1, %%rax\n\t"
#define ADDQ12 ADDQ ADDQ ADDQ ADDQ ADDQ ADDQ ADDQ ADDQ ADDQ ADDQ ADDQ ADDQ
#define XORQ(i) "vpxorq %%zmm13, %%zmm12, %%zmm" S(i) "\n\t"
#define LOOP(body) \
  asm volatile("1:\n\t" body body body body body body body body "dec %[n]\n\t" "jnz 1b\n\t" \
               : [n] "+r"(n) : : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", \
                 "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15")

// Runs `iters` iterations (96 instructions of the kind each; "mix": 96 groups of three) on this thread.
void spin(std::string kind, int64_t iters) {
  int64_t n = iters;
  if (kind == "clock") {  // 96 dependent 1-cycle adds an iteration: the core's real clock
    asm volatile("1:\n\t" ADDQ12 ADDQ12 ADDQ12 ADDQ12 ADDQ12 ADDQ12 ADDQ12 ADDQ12 "dec %[n]\n\t" "jnz 1b\n\t"
                 : [n] "+r"(n) : : "cc", "rax");
  }
  else if (kind == "vpxorq_zmm") { LOOP(R12(XORQ)); }
  else if (kind == "vpopcntq_zmm") { LOOP(R12(POPQ)); }
  else if (kind == "vpdpbusd_zmm") { LOOP(R12(DPZ)); }
  else if (kind == "vpdpbusd_ymm") { LOOP(R12(DPY)); }
  else if (kind == "vpshufb_ymm") { LOOP(R12(SHUF)); }
  else if (kind == "vpmaddubsw_ymm") { LOOP(R12(MADD)); }
  else if (kind == "binary_mix_zmm") { LOOP(R12(MIX)); }
  else TORCH_CHECK(false, "unknown instruction ", kind);
}
"""

# instruction -> (MACs per instruction, the CPU flags it needs)
INSTRUCTIONS = {
    "vpxorq_zmm": (0, ("avx512f",)),  # a plain vector ALU op: how many vector pipes there are
    "vpopcntq_zmm": (512, ("avx512_vpopcntdq",)),
    "binary_mix_zmm": (512, ("avx512_vpopcntdq",)),  # per VPOPCNTQ of the mix
    "vpshufb_ymm": (128, ("avx2",)),
    "vpdpbusd_zmm": (64, ("avx512_vnni",)),
    "vpdpbusd_ymm": (32, ("avx_vnni",)),
    "vpmaddubsw_ymm": (32, ("avx2",)),
}
# kernel path -> the instruction that bounds it
BOUND = {("binary", "avx512"): "vpopcntq_zmm", ("binary", "avx2"): "vpshufb_ymm",
         ("ternary", "avx512"): "vpdpbusd_zmm", ("ternary", "avxvnni"): "vpdpbusd_ymm",
         ("ternary", "avx2"): "vpmaddubsw_ymm"}


def cpu_flags() -> set[str]:
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def clock_ghz() -> float:
    for line in open("/proc/cpuinfo"):
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1]) / 1e3
    raise RuntimeError("no clock in /proc/cpuinfo")


def _rate(ext, name: str, rounds: int) -> float:
    """Instructions per second on this thread: best of ``rounds`` 20-ms runs (anything else on the
    core only ever slows a run, so the best is the core's own speed)."""
    ext.spin(name, 1000)  # warm-up (and any frequency change)
    iters, best = 20000, float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        ext.spin(name, iters)
        best = min(best, time.perf_counter() - t0)
    return iters * 96 / best


def measure(rounds: int = 15) -> dict[str, dict]:
    """The measured clock ("clock": GHz) and, per instruction this CPU has, G instructions/s on one
    core and instructions per cycle."""
    ext = load_inline("kronbit_roofline_probe", cpp_sources=_CPP, functions=["spin"],
                      extra_cflags=["-O2"], verbose=False)
    flags = cpu_flags()
    hz = _rate(ext, "clock", rounds)
    out: dict[str, dict] = {"clock": {"measured_ghz": round(hz / 1e9, 3), "nominal_ghz": clock_ghz()}}
    for name, (macs, need) in INSTRUCTIONS.items():
        if not all(f in flags for f in need):
            continue
        per_s = _rate(ext, name, rounds)
        out[name] = {"g_instr_per_s_per_core": round(per_s / 1e9, 3), "per_cycle": round(per_s / hz, 2),
                     "macs_per_instr": macs}
    return out


def roofs(measured: dict[str, dict], cores: int) -> dict[str, float]:
    """G MAC/s ceilings per kernel path ("binary/avx512", ...) over ``cores`` cores."""
    out = {}
    for (kind, path), instr in BOUND.items():
        m = measured.get(instr)
        if m and m["macs_per_instr"]:
            out[f"{kind}/{path}"] = round(m["g_instr_per_s_per_core"] * m["macs_per_instr"] * cores, 1)
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2, help="cores the printed roofs count (default 2)")
    cores = ap.parse_args().cores
    res = measure()
    for k, v in res.items():
        print(k, v)
    print(roofs(res, cores))
