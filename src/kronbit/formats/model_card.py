"""The model card (README.md) of an exported folder, with the Hub's YAML header.

Everything on it is read from the folder and the run that made it: the base model and its
licence, the task, the method and recipe, the bits (each method describes its own recorded
config), size and ratio (the size report), the dev score the run measured (``kronbit.json``), the
latency ``kronbit bench`` measured when it has been run (``bench.json``), and how to load the folder. ``write_model_card`` can be run again at any time
(``kronbit card DIR``, e.g. after a benchmark).
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCardData

from ..core.errors import ModelError
from ..core.io import write_text
from ..core.transforms import METHODS
from ..data.glue import TASKS
from ..models.packaged import PACKAGED, packaged_path
from .meta import KRONBIT_META, read_meta
from .size import size_report

CARD_NAME = "README.md"
BENCH_NAME = "bench.json"
UNKNOWN = "unknown"
GLUE_DATASET = "nyu-mll/glue"


# ------------------------------------------------------------------------------------------------
# The base model and its licence


def _front_matter(readme: Path) -> dict[str, Any]:
    """The YAML header of a model card (empty when there is none or it does not parse)."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return {}
    if not text.startswith("---"):
        return {}
    try:
        data = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return {}
    return data if isinstance(data, dict) else {}


def _license_of_dir(folder: Path) -> str | None:
    value = _front_matter(folder / CARD_NAME).get("license")
    return str(value).lower() if value else None


def _packaged_base(alias: str) -> dict[str, Any]:
    p = PACKAGED[alias]
    try:
        path = packaged_path(alias)
    except ModelError:
        path = None
    # The model's own card first (the packaged MiniLM ships the original card: apache-2.0); the
    # package's metadata licence when the package ships the weights file only (SmolLM2's GGUF).
    licence = _license_of_dir(path) if path is not None and path.is_dir() else None
    if licence is None:
        try:
            md = importlib.metadata.metadata(p.dist)
            licence = (md.get("License-Expression") or md.get("License") or "").lower() or None
        except importlib.metadata.PackageNotFoundError:
            licence = None
    return {"name": f"packaged:{alias}", "hub_id": p.hub_id or None, "license": licence or UNKNOWN}


def describe_base_model(name: str | None) -> dict[str, Any]:
    """{"name", "hub_id", "license"} for what ``--model`` named (packaged alias, folder, hub id)."""
    if not name:
        return {"name": UNKNOWN, "hub_id": None, "license": UNKNOWN}
    if name.startswith("packaged:") and name.split(":", 1)[1] in PACKAGED:
        return _packaged_base(name.split(":", 1)[1])
    folder = Path(name).expanduser()
    if folder.is_dir():
        return {"name": name, "hub_id": None, "license": _license_of_dir(folder) or UNKNOWN}
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    return {"name": name, "hub_id": name if looks_like_hub_id else None, "license": UNKNOWN}


def _run_model(src: Path) -> str | None:
    """The ``--model`` of the run that wrote ``src`` (RUN/model or RUN/stages/NN-name/model)."""
    for run in (src.parent, src.parent.parent.parent):
        cfg = run / "config.yaml"
        if cfg.is_file():
            try:
                data = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError:
                continue
            if isinstance(data, dict) and data.get("model"):
                return str(data["model"])
    return None


def base_model_of(src: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The base model of the compressed model in ``src`` (its ``kronbit.json`` content ``meta``)."""
    if isinstance(meta.get("base_model"), dict):
        return meta["base_model"]
    return describe_base_model(_run_model(Path(src)) or meta.get("source") or meta.get("source_model"))


# ------------------------------------------------------------------------------------------------
# What the folder holds


def _pipeline_tag(config: dict[str, Any]) -> str:
    archs = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "text-classification"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "text-generation"
    return "feature-extraction"


def _method_rows(transforms: list[dict[str, Any]]) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(summaries, table rows, tags) from each recorded transform's own ``describe``."""
    summaries, rows, tags = [], [], []
    for t in transforms:
        method = METHODS.get(t["kind"])
        if method is not None and method.describe is not None:
            d = method.describe(t["config"])
        else:
            d = {"summary": t["kind"], "rows": [(t["kind"], json.dumps(t["config"], sort_keys=True))], "tags": []}
        summaries.append(d["summary"])
        rows += d["rows"]
        tags += [x for x in d["tags"] if x not in tags]
    return summaries, rows, tags


def read_bench(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """``bench.json`` (written by ``kronbit bench``) as (one row per shape: ms per variant, the
    context: unit, threads, ...). None when there is no file; ([], {"error": ...}) when it does
    not parse or holds no shape."""
    path = folder / BENCH_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        return [], {"error": f"{BENCH_NAME} is unreadable ({type(e).__name__})"}
    if not isinstance(data, dict):
        return [], {"error": f"{BENCH_NAME} holds no table"}
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    context = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}
    rows = []
    for shape, ms in data.items():
        if shape == "meta" or not isinstance(ms, dict):
            continue
        rows.append({"batch × seq": shape.replace("x", " × "),
                     **{f"{k} ms": v for k, v in ms.items() if isinstance(v, (int, float))}})
    return (rows, context) if rows else ([], {"error": f"{BENCH_NAME} holds no shape"})


def _table(rows: list[dict[str, Any]], limit: int = 12) -> str:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    if not columns:
        return ""
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows[:limit]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# The card


def card_facts(folder: Path, report: dict[str, Any] | None = None, name: str | None = None) -> dict[str, Any]:
    """Everything the card says, read from ``folder`` (and ``report``: its size report); ``name``:
    what the card calls the folder (its own name unless it is being built under a temporary one)."""
    folder = Path(folder)
    meta = read_meta(folder)
    if not meta.get("format", "").startswith("kronbit-"):
        raise ModelError(f"{folder}: not a kronbit packed or compressed folder (no {KRONBIT_META} with a format)")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if report is None:
        report = size_report(folder, in_memory=False)
    summaries, rows, tags = _method_rows(meta.get("transforms", []))
    return {"folder": folder, "name": name or folder.name, "meta": meta, "config": config, "size": report, "bench": read_bench(folder),
            "base": base_model_of(folder, meta), "summary": " + ".join(summaries) or "compressed",
            "method_rows": rows, "method_tags": tags, "pipeline_tag": _pipeline_tag(config),
            "files": sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CARD_NAME
                            and not p.name.startswith("."))}


def _yaml_header(f: dict[str, Any]) -> str:
    meta, base = f["meta"], f["base"]
    task = meta.get("task")
    tags = ["kronbit", *f["method_tags"], *([task, "glue"] if task in TASKS else [])]
    data = ModelCardData(library_name="transformers", base_model=base["hub_id"] or None,
                         base_model_relation="quantized" if base["hub_id"] else None,
                         license=base["license"], pipeline_tag=f["pipeline_tag"], tags=tags,
                         datasets=[GLUE_DATASET] if task in TASKS else None)
    return f"---\n{data.to_yaml()}\n---\n"


def _overview(f: dict[str, Any]) -> str:
    meta, base, size = f["meta"], f["base"], f["size"]
    task = meta.get("task")
    task_text = f"{TASKS[task].dir_name} (GLUE)" if task in TASKS else (task or "language modelling")
    how = ", ".join(f"{k} `{meta[k]}`" for k in ("method", "recipe", "stage") if meta.get(k))
    hub = base["hub_id"]
    link = f"[{hub}](https://huggingface.co/{hub})" if hub else ""
    rows = [("base model", link if hub == base["name"] else f"`{base['name']}`" + (f" ({link})" if hub else "")),
            ("task", task_text), ("made by", f"kronbit {how}" if how else "kronbit"),
            *f["method_rows"],
            ("format", f"{meta['format']} v{meta['format_version']}" + (f", {meta['dtype']} scales and "
                                                                       "full-precision parts" if meta.get("dtype") else "")),
            ("size", f"{size['disk_mb']} MB tensor file vs {size['fp32_mb']} MB for the same architecture in "
                     f"fp32: **{size['ratio_vs_fp32']}× smaller**")]
    table = "\n".join(["| | |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])
    name, shown = f["name"], base["hub_id"] or base["name"]
    return (f"# {name}: {shown} {f['summary']} (kronbit)\n\n"
            f"A compressed {shown} for {task_text}, written by [kronbit](https://pypi.org/project/kronbit/). "
            f"The weights stay compressed in memory when loaded.\n\n"
            f"> **First `pip install kronbit`, then `import kronbit`** before `from_pretrained`: kronbit registers the "
            f"`kronbit` quantization method with transformers (`quant_method: kronbit` in config.json). "
            f"Without it, transformers does not know the method and refuses the folder.\n\n"
            f"## Model\n\n{table}\n")


def _evaluation(f: dict[str, Any]) -> str:
    meta = f["meta"]
    out = ["## Evaluation\n"]
    if meta.get("dev_metrics"):
        out.append("Dev set, measured by the run that produced the model:\n")
        out.append(_table([{k: v for k, v in meta["dev_metrics"].items()}]))
    elif meta.get("ppl") is not None:
        out.append(f"Perplexity on the recipe's evaluation text, measured by the run: {meta['ppl']:.4g}")
    else:
        out.append("No score was recorded with this model.")
    bench = f["bench"]
    out.append("\n### Latency\n")
    if bench is None:
        out.append(f"Not measured yet: run `kronbit bench {f['name']}` (writes {BENCH_NAME}), then "
                   f"`kronbit card {f['name']}` to put it here.")
    else:
        rows, context = bench
        if "error" in context:
            out.append(context["error"])
        else:
            out.append(f"From `{BENCH_NAME}` (`kronbit bench`):\n")
            if context:
                out.append(", ".join(f"{k}: {v}" for k, v in context.items()) + "\n")
            out.append(_table(rows) or "(no figures in the file)")
    return "\n".join(out) + "\n"


def _loading(f: dict[str, Any]) -> str:
    name, meta = f["name"], f["meta"]
    packed = meta["format"] == "kronbit-packed"
    if f["pipeline_tag"] == "text-classification":
        auto, use = "AutoModelForSequenceClassification", (
            'print(pipeline("text-classification", model=path)("a great film"))')
    else:
        auto, use = "AutoModelForCausalLM", (
            'ids = tokenizer("The weather today", return_tensors="pt")\n'
            'print(tokenizer.decode(model.generate(**ids, max_new_tokens=20)[0]))')
    hf = (f"```python\nimport kronbit  # registers kronbit's quantizer with transformers: import it first\n"
          f"from transformers import {auto}, AutoTokenizer, pipeline\n\n"
          f'path = "{name}"  # this folder, or its Hub repo id\n'
          f"model = {auto}.from_pretrained(path)\ntokenizer = AutoTokenizer.from_pretrained(path)\n{use}\n```\n")
    loader = "load_packed" if packed else "load_compressed"
    own = (f"```python\nimport kronbit\n\nmodel = kronbit.load_model(\"{name}\")  # = kronbit.formats.{loader}\n```\n"
           + ("`kronbit.load_packed(path, mode=\"dequantized\")` expands the weights once at load (fp32 memory, "
              "exact); `compute_dtype=\"bfloat16\"` uses bf16 matrix units for large batches (not exact).\n"
              if packed else ""))
    cli = f"`kronbit eval --model {name} --task {meta['task']}` scores it on the dev set.\n" if meta.get("task") else ""
    onnx = ("`model.onnx` (written by `kronbit export --onnx`) runs in onnxruntime without kronbit or "
            "transformers; its weights stay packed inside the graph.\n" if "model.onnx" in f["files"] else "")
    return (f"## How to load\n\n`pip install kronbit` first; then `import kronbit` comes before `from_pretrained`."
            f"\n\n### With transformers\n\n{hf}\n"
            f"### With kronbit's own API\n\n{own}\n{cli}{onnx}\n"
            "### Without kronbit\n\ntransformers alone does not know `quant_method: kronbit`: it warns and then "
            "finds no `model.safetensors`, so it refuses the folder rather than load random weights.\n")


def _files_and_licence(f: dict[str, Any]) -> str:
    base, folder = f["base"], f["folder"]
    files = "\n".join(f"- `{n}` ({(folder / n).stat().st_size / 1e6:.3g} MB)" for n in f["files"])
    licence = base["license"]
    text = (f"The base model's licence applies: **{licence}**." if licence != UNKNOWN
            else "The base model's licence is unknown to kronbit; check it before you share this model.")
    return f"## Files\n\n{files}\n\n## Licence\n\n{text}\n"


def render_model_card(facts: dict[str, Any]) -> str:
    return "\n".join([_yaml_header(facts), _overview(facts), _evaluation(facts), _loading(facts),
                      _files_and_licence(facts)])


def write_model_card(folder: str | Path, report: dict[str, Any] | None = None, name: str | None = None) -> Path:
    """Write (or rewrite) ``folder/README.md``; ``report``: the folder's size report if at hand;
    ``name``: the folder's final name when it is written under a temporary one."""
    folder = Path(folder)
    path = folder / CARD_NAME
    write_text(path, render_model_card(card_facts(folder, report, name)))
    return path
