"""Evaluate a model directory on a GLUE split and report the task's metrics."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding

from ..core.errors import DataError, KronbitError
from ..data import metrics as glue_metrics
from ..data.features import tokenize
from ..data.glue import get_task, load_split
from ..formats.load import load_model
from ..formats.meta import read_meta
from ..models.encoders import load_tokenizer
from ..models.resolve import resolve_model


@torch.inference_mode()
def predict(model, dataset, collator, batch_size: int = 128, bf16: bool = False, desc: str | None = None) -> np.ndarray:
    """Logits for every example, in the dataset's order. Batches are formed longest-first (then
    put back in order): with dynamic padding each batch pads to a near-equal length, the same
    batching the Trainer's evaluation sees (``features.sorted_by_length``)."""
    model.eval()
    order = sorted(range(len(dataset)), key=lambda i: -len(dataset[i]["input_ids"]))
    loader = DataLoader(Subset(dataset, order), batch_size=batch_size, shuffle=False, collate_fn=collator)
    device = next(model.parameters()).device
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())
    out = []
    # A bar on the console only when asked for (kronbit eval), on stderr; none in logs or tests' output.
    for batch in tqdm(loader, desc=desc, unit="batch", disable=desc is None, leave=False, file=sys.stderr):
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        with autocast:
            out.append(model(**batch).logits.float().cpu())
    if not out:
        return np.empty((0,), dtype=np.float32)
    sorted_logits = torch.cat(out)
    logits = torch.empty_like(sorted_logits)
    logits[torch.tensor(order)] = sorted_logits  # row k of the sorted batches is example order[k]
    return logits.numpy()


DEFAULTS = {"bf16": False, "batch_size": 128, "max_seq_length": 128}


def eval_settings(meta: dict, **given) -> tuple[dict, str]:
    """Precision and batching for an evaluation: what the user gave, else what the model's
    kronbit.json records its dev metrics were computed with (``eval``: the stage table's and a
    fine-tune's numbers), else the defaults. Returns the settings and where they came from."""
    recorded = meta.get("eval") or {}
    settings, sources = {}, {}
    for key, default in DEFAULTS.items():
        if given.get(key) is not None:
            settings[key], sources[key] = given[key], "flags"
        elif recorded.get(key) is not None:
            settings[key], sources[key] = recorded[key], "kronbit.json"
        else:
            settings[key], sources[key] = default, "defaults"
    kinds = sorted(set(sources.values()))
    where = kinds[0] if len(kinds) == 1 else ", ".join(
        f"{k} ({', '.join(n for n, v in sources.items() if v == k)})" for k in kinds)
    return settings, where


def evaluate(model: str, task: str | None = None, data_dir: str = "hub", split: str = "dev",
             batch_size: int | None = None, max_seq_length: int | None = None, bf16: bool | None = None,
             trust_remote_code: bool = False) -> dict:
    """The task's metrics on ``split``. Unset ``batch_size`` / ``max_seq_length`` / ``bf16`` come
    from the model's kronbit.json when it records how its dev metrics were computed, so a stage's
    or teacher's number is reproduced; the result says which settings were used."""
    model_path = resolve_model(model)
    meta = read_meta(model_path) if Path(model_path).is_dir() else {}
    task_name = task or meta.get("task")
    if task_name is None:
        raise KronbitError(f"no task recorded in {model_path}; pass --task")
    t = get_task(task_name)
    if meta.get("task") and get_task(meta["task"]).name != t.name:
        raise KronbitError(f"model was trained for task {meta['task']}, not {t.name}")
    examples = load_split(t, data_dir, split)
    if any(e.label is None for e in examples):
        raise DataError(f"split '{split}' of {t.name} has no labels to score (GLUE test labels are hidden); "
                        "use --split dev")
    settings, source = eval_settings(meta, batch_size=batch_size, max_seq_length=max_seq_length, bf16=bf16)
    start = time.time()
    tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    clf = load_model(model_path, t if not meta else None, trust_remote_code=trust_remote_code)
    if clf.config.num_labels != t.num_labels:
        raise KronbitError(f"model has {clf.config.num_labels} output(s) but task {t.name} needs {t.num_labels}")
    ds = tokenize(examples, tokenizer, t, settings["max_seq_length"])
    logits = predict(clf, ds, DataCollatorWithPadding(tokenizer), settings["batch_size"], settings["bf16"],
                     desc=f"eval {t.name} {split}")
    preds = logits.reshape(-1) if t.is_regression else logits.argmax(-1)
    labels = np.array([e.label for e in examples])
    scores = glue_metrics.compute(list(t.metrics), preds, labels)
    return {"task": t.name, "split": split, "model": str(model), **scores,
            "primary_metric": t.primary_metric, "examples": len(examples),
            "precision": "bf16 autocast" if settings["bf16"] else "fp32", **settings, "settings_from": source,
            "eval_time_s": round(time.time() - start, 2)}
