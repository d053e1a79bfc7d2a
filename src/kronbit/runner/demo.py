"""``kronbit demo``: what kronbit is for, end to end, in about ten minutes on two CPU cores.

The packaged MiniLM-L6 is fine-tuned on a GLUE task (the recipe's ``teacher`` section, at a small
budget), compressed by a shipped TSPQ recipe (ternary by default, at a small budget), exported to
the packed format, measured on disk, evaluated from the packed files, and timed against the
teacher in fp32 and under PyTorch's int8 dynamic quantization. It ends with one table.

Every step writes into one directory and is reused when it is already there, so a second run
(or one cut short) only does what is missing. The budget is a demo's, not a result's: the
benchmarks in benchmarks/ and docs/results/ state what full budgets reach.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.config import Config
from ..core.errors import ConfigError
from ..core.io import write_json, write_text
from ..data.glue import get_task, load_split
from ..formats.load import load_model
from ..formats.meta import read_meta
from ..formats.packed import packed_dir
from ..formats.size import size_report
from ..models.encoders import load_classifier, load_tokenizer
from ..workflows.bench import time_shape
from ..workflows.evaluate import eval_settings, score
from ..workflows.export import export_model
from . import run_recipe
from .recipe import load_recipe

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]

# The small budget: the teacher sees `subset` examples once, each TSPQ stage sees them once too.
# Sized so that the whole demo takes about ten minutes on two cores without bf16 units.
BUDGET = {"subset": 4000, "max_seq_length": 64}


@dataclass
class DemoConfig(Config):
    task: str = "sst2"
    recipe: str = "recipes/tspq/ternary.yaml"
    model: str = "packaged:minilm"
    data_dir: str = "hub"
    output_dir: str = "runs/demo"
    train_subset: int = BUDGET["subset"]
    max_seq_length: int = BUDGET["max_seq_length"]
    latency_repeats: int = 20

    def validate(self) -> None:
        get_task(self.task)
        if self.train_subset < 32:
            raise ConfigError(f"train_subset must be at least one batch (32), got {self.train_subset}")
        if not 8 <= self.max_seq_length <= 512:
            raise ConfigError(f"max_seq_length must be within 8..512, got {self.max_seq_length}")
        if self.latency_repeats < 3:
            raise ConfigError(f"latency_repeats must be ≥ 3 for a median, got {self.latency_repeats}")


def recipe_path(name: str) -> Path:
    """The recipe as given, else relative to the repository (the demo runs from any directory)."""
    for cand in (Path(name), REPO / name):
        if cand.is_file():
            return cand
    raise ConfigError(f"recipe not found: {name} (give a path to a recipe YAML, e.g. recipes/tspq/ternary.yaml)")


def budget_overrides(cfg: DemoConfig, n_stages: int) -> list[str]:
    """One epoch over ``train_subset`` examples for the teacher and for every stage."""
    common = [f"train_subset={cfg.train_subset}", f"max_seq_length={cfg.max_seq_length}", "epochs=1"]
    out = [f"teacher.{c}" for c in common] + [f"train.{c}" for c in common]
    # A stage's own epochs (e.g. the ternary recipe's 2 at w2) would double the demo's time.
    out += [f"stages.{i}.epochs=1" for i in range(n_stages)]
    return out


def demo(cfg: DemoConfig) -> dict[str, Any]:
    cfg.validate()
    out = Path(cfg.output_dir)
    path = recipe_path(cfg.recipe)
    n_stages = len(load_recipe(path).stages)
    recipe = load_recipe(path, budget_overrides(cfg, n_stages))
    run_dir, packed = out / "run", out / "packed"
    t0 = time.time()
    resume = run_dir.is_dir() and any(run_dir.iterdir())
    log.info("demo: %s run of %s on %s in %s", "continuing the" if resume else "a new", path.name, cfg.task, run_dir)
    table = run_recipe(recipe, model=cfg.model, task=cfg.task, data_dir=cfg.data_dir, output_dir=str(run_dir),
                       resume=resume, recipe_source=str(path))
    if packed_dir(packed) is None:
        export_model(run_dir, packed)
    task = get_task(cfg.task)
    teacher_dir = _teacher_dir(run_dir, cfg.model)
    rows = _measure(cfg, task, teacher_dir, packed)
    summary = {"task": task.name, "recipe": str(path), "output_dir": str(out), "run_dir": str(run_dir),
               "packed_dir": str(packed), "teacher_dir": str(teacher_dir), "stages": table.get("stages", table),
               "rows": rows, "latency_shape": [1, cfg.max_seq_length], "latency_unit": "ms (median)",
               "threads": torch.get_num_threads(), "wall_time_s": round(time.time() - t0, 1)}
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", render(summary))
    return summary


def _teacher_dir(run_dir: Path, model: str) -> Path:
    """The teacher the run distilled from: fine-tuned inside the run, or the model it was given."""
    inside = run_dir / "teacher" / "model"
    return inside if inside.is_dir() else Path(model)


def _measure(cfg: DemoConfig, task, teacher_dir: Path, packed: Path) -> list[dict[str, Any]]:
    """Score, size and latency of the teacher (fp32 and int8 dynamic) and the packed student."""
    tokenizer = load_tokenizer(packed)
    dev = load_split(task, cfg.data_dir, "dev")
    student_meta = read_meta(packed)
    settings, _ = eval_settings(student_meta)  # as the run's stage table computed it
    teacher = load_classifier(teacher_dir).eval()
    with warnings.catch_warnings():  # torch's notice that eager int8 moves to torchao: not the user's concern
        warnings.simplefilter("ignore")
        int8 = torch.ao.quantization.quantize_dynamic(teacher, {nn.Linear}, dtype=torch.qint8)
    student = load_model(packed).eval()
    models = {"teacher fp32": teacher, "teacher int8 dynamic": int8, "kronbit packed": student}
    ms = latency(models, cfg.max_seq_length, cfg.latency_repeats)
    fp32_mb = size_report(teacher_dir, in_memory=False)["disk_mb"]
    sizes = {"teacher fp32": fp32_mb, "teacher int8 dynamic": _state_dict_mb(int8),
             "kronbit packed": size_report(packed, in_memory=False)["disk_mb"]}
    rows = []
    for name, model in models.items():
        # int8 dynamic quantized linears take float32 only: no bf16 autocast around them
        own = dict(settings, bf16=False) if model is int8 else settings
        scores = score(model, tokenizer, task, dev, own, desc=f"dev {name}")
        rows.append({"model": name, "metric": task.primary_metric, "score": scores[task.primary_metric],
                     "mb": round(sizes[name], 2), "x_smaller": round(fp32_mb / sizes[name], 1), "ms": ms[name]})
    return rows


def _state_dict_mb(model: nn.Module) -> float:
    """Bytes of a serialized state dict: int8 dynamic quantization has no safetensors form, so its
    size is what torch.save writes (our own object, in memory; nothing is unpickled)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell() / 1e6


def latency(models: dict[str, nn.Module], seq_len: int, repeats: int, batch: int = 1) -> dict[str, float]:
    """Median forward time (ms) per model at ``batch`` × ``seq_len``: ``kronbit bench``'s timing
    (interleaved rounds, untimed warm-up)."""
    vocab = next(iter(models.values())).config.vocab_size
    ms = time_shape({name: (m, False) for name, m in models.items()}, batch, seq_len, repeats, vocab)
    return {name: round(v, 2) for name, v in ms.items()}


def render(summary: dict[str, Any]) -> str:
    metric = summary["rows"][0]["metric"]
    b, s = summary["latency_shape"]
    lines = [f"| model | dev {metric} | MB on disk | x smaller | ms at {b} × {s} |", "|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['model']} | {100 * r['score']:.1f} | {r['mb']:.2f} | {r['x_smaller']:.1f} | {r['ms']:.1f} |")
    return "\n".join([
        f"kronbit demo: {summary['task']}, {Path(summary['recipe']).name} at a demo budget "
        f"({summary['wall_time_s'] / 60:.1f} min, {summary['threads']} threads)", "", *lines, "",
        f"run (teacher, stages, stage table): {summary['run_dir']}",
        f"packed model: {summary['packed_dir']}   (kronbit eval --model {summary['packed_dir']})",
        f"this summary: {summary['output_dir']}/summary.md and summary.json", ""])
