"""Loading kronbit folders with plain transformers: what it costs.

Part "startup": ``kronbit --help`` wall time (a fresh process each time, median of ``--runs``),
and the import time of ``kronbit.hf_hook`` (what ``import kronbit`` adds to register the quantizer
with transformers), from ``python -X importtime``. Target (issue): ``kronbit --help`` < 1 s.

Part "load": the packaged MiniLM-L6 as a sentiment classifier, W1A1 (untrained: load time and
memory do not depend on the values), exported with ``kronbit export``; then, each in a fresh
process (imports excluded from the timing), ``kronbit.load_packed`` and
``AutoModelForSequenceClassification.from_pretrained`` on the same folder, variants interleaved
in rounds (medians): load seconds, weight memory (bytes of parameters and buffers), and whether
the two models' logits are equal (torch.equal).

    python benchmarks/hf_loading.py [--part startup load] [--runs 9] [--rounds 3] [--redo]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The timed processes import this checkout's kronbit (PYTHONPATH below); the export made here
# (and common.py, which imports kronbit) must too, whatever kronbit is installed.
SRC = Path(__file__).resolve().parents[1] / "src"
sys.path[:0] = [str(Path(__file__).resolve().parent), str(SRC)]

from common import WORK, Results, md_table  # noqa: E402
LOADERS = {
    "kronbit.load_packed": "import kronbit\nmodel = kronbit.load_packed(d)",
    "AutoModelForSequenceClassification.from_pretrained":
        "import kronbit\nmodel = AutoModelForSequenceClassification.from_pretrained(d)",
}
TIMED = """
import json, sys, time, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from kronbit.formats.size import module_bytes
d = sys.argv[1]
torch.set_num_threads(1)
t0 = time.perf_counter()
{load}
seconds = time.perf_counter() - t0
tok = AutoTokenizer.from_pretrained(d)
with torch.no_grad():
    logits = model(**tok(["a gripping, beautifully acted film"] * 2, return_tensors="pt")).logits
from safetensors.torch import save_file
save_file({{"logits": logits.contiguous()}}, sys.argv[2])
print(json.dumps({{"seconds": seconds, "weight_bytes": module_bytes(model)}}))
"""


def _env() -> dict[str, str]:
    return {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin:/usr/local/bin"}


def startup(res: Results, runs: int) -> None:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kronbit.cli", "--help"], env=_env(), check=True,
                       capture_output=True)
        times.append(time.perf_counter() - t0)
    trace = subprocess.run([sys.executable, "-X", "importtime", "-c", "import kronbit.cli"], env=_env(),
                           capture_output=True, text=True).stderr
    hook_us = next(int(m.group(1)) for m in re.finditer(r"import time:\s+(\d+) \|\s+\d+ \|\s+kronbit\.hf_hook", trace))
    res.add("startup", {"cli_help_s_median": round(statistics.median(times), 3), "cli_help_s_min": round(min(times), 3),
                        "cli_help_s_max": round(max(times), 3), "runs": runs,
                        "hf_hook_import_ms": round(hook_us / 1000, 2)})


def _export_minilm(out: Path) -> Path:
    import yaml

    from kronbit import QuantConfig, quantize_
    from kronbit.cli import main
    from kronbit.core.transforms import recorded_transforms
    from kronbit.data.glue import get_task
    from kronbit.formats.compressed import save_compressed
    from kronbit.models.encoders import load_classifier, load_tokenizer
    from kronbit.models.packaged import packaged_model_dir

    model = load_classifier("packaged:minilm", get_task("sst2")).eval()
    quantize_(model, QuantConfig(w_bits=1, a_bits=1))
    run = out / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "packaged:minilm"}))
    save_compressed(model, load_tokenizer(packaged_model_dir("minilm")), run / "model",
                    {"kind": "compressed", "task": "sst2"}, recorded_transforms(model))
    folder = out / "minilm-w1a1"
    main(["export", "--model", str(run), "--output-dir", str(folder), "--overwrite"])
    return folder


def load(res: Results, rounds: int) -> None:
    import torch
    from safetensors.torch import load_file

    folder = _export_minilm(WORK / "hf_loading")
    seen: dict[str, list[dict]] = {k: [] for k in LOADERS}
    for _ in range(rounds):
        for name, code in LOADERS.items():
            out = WORK / "hf_loading" / f"{name.split('.')[0]}.safetensors"
            r = subprocess.run([sys.executable, "-c", TIMED.format(load=code), str(folder), str(out)], env=_env(),
                               check=True, capture_output=True, text=True)
            seen[name].append({**json.loads(r.stdout.strip().splitlines()[-1]), "logits": load_file(out)["logits"]})
    first = next(iter(seen.values()))[0]["logits"]
    for name, rows in seen.items():
        res.add(f"load {name}", {"loader": name, "seconds_median": round(statistics.median(r["seconds"] for r in rows), 3),
                                 "weight_mb": round(rows[0]["weight_bytes"] / 1e6, 3), "rounds": rounds,
                                 "logits_equal_to_load_packed": all(torch.equal(r["logits"], first) for r in rows)})


def markdown(res: Results) -> str:
    rows = res.data["rows"]
    out = [f"# {res.data['description']}\n"]
    if "startup" in rows:
        s = rows["startup"]
        out += ["## Start-up\n", md_table(["kronbit --help median (s)", "min", "max", "runs", "kronbit.hf_hook import (ms)",
                                          "load avg"],
                                         [[s["cli_help_s_median"], s["cli_help_s_min"], s["cli_help_s_max"], s["runs"],
                                           s["hf_hook_import_ms"], str(s["machine"]["load_avg_1_5_15min"])]])]
    loads = [r for k, r in rows.items() if k.startswith("load ")]
    if loads:
        out += ["## Loading the packaged MiniLM-L6 W1A1 export\n",
                md_table(["loader", "load (s, median)", "weight memory (MB)", "logits equal", "rounds", "load avg"],
                         [[r["loader"], r["seconds_median"], r["weight_mb"], r["logits_equal_to_load_packed"],
                           r["rounds"], str(r["machine"]["load_avg_1_5_15min"])] for r in loads])]
    commands = sorted({r["command"] for r in rows.values()})
    out.append("\nCommands: " + ", ".join(f"`{c}`" for c in commands) + "\n" if rows else "")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", nargs="+", default=["startup", "load"], choices=["startup", "load"])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--redo", action="store_true")
    args = ap.parse_args()
    res = Results("hf_loading", "Loading kronbit folders with plain transformers")
    if args.redo:
        res.data["rows"] = {k: v for k, v in res.data["rows"].items()
                            if not any(k.startswith(p) for p in args.part)}
    if "startup" in args.part and not res.done("startup"):
        startup(res, args.runs)
    if "load" in args.part and not any(k.startswith("load ") for k in res.data["rows"]):
        load(res, args.rounds)
    res.save(markdown(res))


if __name__ == "__main__":
    main()
