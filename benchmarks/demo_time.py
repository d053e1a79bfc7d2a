"""How long `kronbit demo` takes on this machine, from nothing and then again (reusing what the
first run wrote), with the demo's own table: docs/results/demo_time.{json,md}.

    python benchmarks/demo_time.py        # ~7 min on 2 cores without bf16 units

The run directory is benchmarks/_work/demo (removed first, so the first run starts from nothing).
Time it on a quiet machine: the load average is recorded with the row.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, WORK, Results, md_table  # noqa: E402



def timed_demo(out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kronbit.cli", "demo", "--output-dir", str(out)], check=True,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _relative(summary: dict) -> dict:
    """The summary's paths relative to the repository (a results file names no machine's paths)."""
    root = str(REPO) + "/"
    return {k: v.replace(root, "") if isinstance(v, str) else v for k, v in summary.items()}


def render(res: Results) -> str:
    r = res.data["rows"].get("demo")
    if not r:
        return ""
    head = ("# `kronbit demo`: wall time and its table\n\nProduced by `python benchmarks/demo_time.py` "
            f"({r['date']}, load average when it finished {r['machine'].get('load_avg_1_5_15min')}); the first run starts "
            "from nothing, the second reuses what the first wrote.\n\n")
    times = md_table(["run", "wall min"], [["first (from nothing)", r["first_s"] / 60],
                                           ["second (reusing)", r["second_s"] / 60]])
    rows = [[x["model"], 100 * x["score"], x["mb"], x["x_smaller"], x["ms"]] for x in r["summary"]["rows"]]
    b, s = r["summary"]["latency_shape"]
    table = md_table(["model", f"dev {r['summary']['rows'][0]['metric']}", "MB on disk", "x smaller",
                      f"ms at {b} × {s}"], rows)
    return head + times + "\n" + table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--render-only", action="store_true", help="rewrite the table from the JSON, run nothing")
    args = ap.parse_args()
    res = Results("demo_time", "Wall time of kronbit demo (SST-2, ternary recipe, demo budget), fp32 or bf16: auto")
    if not args.render_only:
        out = WORK / "demo"
        shutil.rmtree(out, ignore_errors=True)
        first = timed_demo(out)
        second = timed_demo(out)
        res.add("demo", {"first_s": round(first, 1), "second_s": round(second, 1), "unit": "s (wall clock)",
                         "summary": _relative(json.loads((out / "summary.json").read_text()))})
    res.save(render(res))


if __name__ == "__main__":
    main()
