"""The shape chooser by FLOPs against the chooser by measured time, on the KnGPT2 selection.

KnGPT2 (recipes/kngpt2/kron-pretrain.yaml) decomposes SmolLM2's odd blocks at compression 2. For
every targeted layer this script ranks the candidate shapes twice — by the FLOP estimate
(``shape_speed: flops``, the default) and by forward + backward time measured against the dense
layer (``shape_speed: measured``, ``kron.timing``) — and reports how many picks change. Then it
measures how repeatable the measured speed-ups are: every near-best candidate of every distinct
layer shape is timed ``--repeats`` times afresh (no cache), and the table shows the spread. A
measured ranking is only worth its cost where the differences between candidates exceed that
spread. Last, what it buys: the KnGPT2 student built both ways (from the same teacher weights),
one training step each (students alone, LM loss, bf16 autocast where native, eager attention,
2 × 256 tokens, as benchmarks/kngpt2_speed.py's train part), interleaved over ``--steps`` rounds.

    python benchmarks/kron_chooser.py [--repeats 3] [--steps 7] [--note "..."]

Results: docs/results/kron_chooser.{json,md}. Times on a machine with other jobs running are not
comparable: pause them (the note says how the machine was).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Results, md_table  # noqa: E402

import torch  # noqa: E402

from kronbit.core.swap import iter_linear_like, linear_weight  # noqa: E402
from kronbit.kron.api import BLOCK_RE  # noqa: E402
from kronbit.kron.shapes import rank_shapes  # noqa: E402
from kronbit.kron.timing import TOKENS, default_dtype, time_speedup  # noqa: E402
from kronbit.models.decoders import load_causal_lm  # noqa: E402

TEACHER = "packaged:smollm2"
THREADS = 2


def odd_block_weights() -> list[tuple[str, torch.Tensor]]:
    model = load_causal_lm(TEACHER)
    out = []
    for name, mod in iter_linear_like(model):
        found = BLOCK_RE.search(name)
        if found and int(found.group(1)) % 2 == 1:
            w, _, _ = linear_weight(mod)
            out.append((name, w.detach().float()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="fresh timings of each near-best candidate")
    ap.add_argument("--steps", type=int, default=7, help="interleaved training steps per student")
    ap.add_argument("--note", help="how the machine was while timing (kept in the JSON, shown on the page)")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    dtype = default_dtype()
    res = Results("kron_chooser", "the Kronecker shape chooser by FLOPs vs by measured time (KnGPT2 selection)")
    res.data["rows"] = {}
    if args.note:
        res.data["timing_note"] = args.note
    layers = odd_block_weights()
    timed: dict[tuple, list[float]] = {}

    def measure(m, n, c) -> list[float]:
        key = (m, n, c.shape.a_shape, c.shape.b_shape, c.rank)
        if key not in timed:
            timed[key] = [round(time_speedup(m, n, c.shape.a_shape, c.shape.b_shape, c.rank, dtype), 3)
                          for _ in range(args.repeats)]
        return timed[key]

    changed, total = Counter(), Counter()
    for name, w in layers:
        m, n = w.shape
        by_flops = rank_shapes(w, compression=2)
        by_time = rank_shapes(w, compression=2, speed=lambda c: statistics.median(measure(m, n, c)))
        kind = f"{m}x{n}"
        total[kind] += 1
        changed[kind] += by_flops[0].shape != by_time[0].shape
    spread = []
    for (m, n, a, b, rank), values in sorted(timed.items()):
        spread.append({"layer": f"{n}→{m}", "a_shape": list(a), "b_shape": list(b), "rank": rank,
                       "speedups": values, "min": min(values), "max": max(values),
                       "median": statistics.median(values)})
    res.add("chooser", {"unit": "measured speed-up = dense time / Kronecker time, fwd+bwd",
                        "tokens": TOKENS, "dtype": dtype, "threads": THREADS, "repeats": args.repeats,
                        "layers": len(layers), "changed_picks": dict(changed), "layers_by_shape": dict(total),
                        "timings": spread})
    res.add("train_step", train_steps(args.steps))
    res.save(render(res))


def train_steps(steps: int) -> dict:
    """tokens/s of one training step of the KnGPT2 student with the FLOP picks and with the measured
    picks (``kroneckerize_`` with ``shape_speed: measured``: its own timings, from the per-machine
    cache when there), interleaved; median per student."""
    import copy
    import time

    import yaml

    from common import REPO
    from kronbit.kron import kroneckerize_

    spec = yaml.safe_load((REPO / "recipes" / "kngpt2" / "kron-pretrain.yaml").read_text())["stages"][0]["kron"]
    teacher = load_causal_lm(TEACHER, attn_implementation="eager")
    students = {}
    for speed in ("flops", "measured"):
        m = copy.deepcopy(teacher)
        kroneckerize_(m, {**spec, "shape_speed": speed})
        students[speed] = m.train()
    ids = torch.randint(0, 49152, (2, 256), generator=torch.Generator().manual_seed(0))
    bf16 = default_dtype() == "bfloat16"

    def step(m):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        m.zero_grad(set_to_none=True)
    times = {k: [] for k in students}
    for m in students.values():
        step(m)  # warm-up
    for _ in range(steps):
        for k, m in students.items():
            t0 = time.perf_counter()
            step(m)
            times[k].append(time.perf_counter() - t0)
    tps = {k: round(ids.numel() / statistics.median(v), 1) for k, v in times.items()}
    return {"unit": "tokens per second (one training step, median)", "steps": steps, "tokens": ids.numel(),
            "dtype": "bfloat16 autocast" if bf16 else "float32", "tokens_per_s": tps,
            "measured_over_flops": round(tps["measured"] / tps["flops"], 3)}


def render(res: Results) -> str:
    r = res.data["rows"]["chooser"]
    changed = sum(r["changed_picks"].values())
    rows = [[t["layer"], f"{t['a_shape']}⊗{t['b_shape']}", ", ".join(f"{v:.2f}" for v in t["speedups"]),
             f"{t['min']:.2f}–{t['max']:.2f}"] for t in r["timings"]]
    by_shape = ", ".join(f"{k}: {r['changed_picks'].get(k, 0)} of {v}" for k, v in r["layers_by_shape"].items())
    note = f"{res.data['timing_note']} " if res.data.get("timing_note") else ""
    return ("# Kronecker shape chooser: FLOPs vs measured time\n\n"
            "Produced by `python benchmarks/kron_chooser.py`; command, date and machine in `kron_chooser.json`. "
            f"{note}\n\nThe KnGPT2 selection (SmolLM2's odd blocks, compression 2): {r['layers']} layers. "
            f"Ranking the candidates near the best error by measured time ({r['dtype']}, fwd+bwd on "
            f"{r['tokens']} tokens, {r['threads']} threads, median of 9 interleaved rounds) instead of by "
            f"FLOPs (the median of the repeats below) changes **{changed} of {r['layers']}** picks ({by_shape}).\n\n"
            f"Each near-best candidate timed {r['repeats']} times afresh (measured speed-up over the dense layer, "
            "> 1 = faster):\n\n"
            + md_table(["layer (in→out)", "A⊗B", "speed-ups", "range"], rows)
            + "\nWhere the range of one shape overlaps the others' ranges, the measured pick is a coin toss "
              "on this machine and the FLOP ranking is as good.\n"
            + _train_section(res.data["rows"].get("train_step")))


def _train_section(t: dict | None) -> str:
    if not t:
        return ""
    return (f"\n## What it buys: one KnGPT2 training step\n\nStudents alone, LM loss, {t['dtype']}, eager attention, "
            f"{t['tokens']} tokens, median of {t['steps']} interleaved steps:\n\n"
            + md_table(["chooser", "tokens/s"], [[k, f"{v:.1f}"] for k, v in t["tokens_per_s"].items()])
            + f"\nMeasured picks / FLOP picks: **{t['measured_over_flops']:.3f}x**.\n")


if __name__ == "__main__":
    main()
