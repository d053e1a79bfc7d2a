"""GLUE tasks: a registry, a loader for the standard GLUE TSV layout, and the hub route.

The TSV layout is the one produced by the usual GLUE download script. Its quirks are handled here
and only here: CoLA train/dev have no header row, MRPC files start with a UTF-8 byte-order mark,
RTE/QNLI/MNLI labels are strings, STS-B is a regression with the score in the last column, MNLI's
dev split is called ``dev_matched``. Test splits have no labels (``label`` is None).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..core.config import did_you_mean
from ..core.errors import DataError

# Sentences in GLUE are long enough to overflow csv's default 128 KiB field limit in a few rows.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

Split = str  # "train", "dev", "test" (MNLI also "dev_mismatched", "test_mismatched")


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: int | float | None  # class index, regression target, or None (unlabelled test split)


@dataclass(frozen=True)
class GlueTask:
    name: str                       # kronbit's name: cola, sst2, ...
    dir_name: str                   # folder in the GLUE TSV layout: CoLA, SST-2, ...
    text_columns: tuple[str, ...]   # header names of the one or two text columns
    label_column: str               # header name of the label/score column
    labels: tuple[str, ...] | None  # label strings in class-index order; None = regression
    metrics: tuple[str, ...]
    primary_metric: str
    hub_text_fields: tuple[str, ...]
    # Column names to assume when a file has no header row (CoLA train/dev).
    headerless_columns: tuple[str, ...] | None = None
    split_files: dict[str, str] = field(default_factory=lambda: {
        "train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"})
    hub_splits: dict[str, str] = field(default_factory=lambda: {
        "train": "train", "dev": "validation", "test": "test"})

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2


_MNLI_SPLITS = {"train": "train.tsv", "dev": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv",
                "test": "test_matched.tsv", "test_mismatched": "test_mismatched.tsv"}
_MNLI_HUB = {"train": "train", "dev": "validation_matched", "dev_mismatched": "validation_mismatched",
             "test": "test_matched", "test_mismatched": "test_mismatched"}

# Label orders follow the hub `glue` dataset so the TSV and hub routes give the same class indices.
TASKS: dict[str, GlueTask] = {t.name: t for t in [
    GlueTask("cola", "CoLA", ("sentence",), "label", ("0", "1"), ("mcc", "accuracy"), "mcc",
             ("sentence",), headerless_columns=("source", "label", "original_label", "sentence")),
    GlueTask("sst2", "SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",), "accuracy",
             ("sentence",)),
    GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("f1", "accuracy"), "f1",
             ("sentence1", "sentence2")),
    GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"), "pearson",
             ("sentence1", "sentence2")),
    GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), ("f1", "accuracy"), "f1",
             ("question1", "question2")),
    GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
             ("accuracy",), "accuracy", ("premise", "hypothesis"), split_files=_MNLI_SPLITS, hub_splits=_MNLI_HUB),
    GlueTask("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"),
             ("accuracy",), "accuracy", ("question", "sentence")),
    GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"),
             ("accuracy",), "accuracy", ("sentence1", "sentence2")),
    GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), ("accuracy",), "accuracy",
             ("sentence1", "sentence2")),
]}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli_matched": "mnli"}


def get_task(name: str) -> GlueTask:
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise DataError(f"unknown task '{name}'{did_you_mean(key, list(TASKS))}".replace(
            "valid keys", "valid tasks"))
    return TASKS[key]


def is_hub(data_dir: str | Path | None) -> bool:
    return data_dir is None or str(data_dir) in ("hub", "hub:")


def task_file(task: GlueTask, data_dir: str | Path, split: Split) -> Path:
    if split not in task.split_files:
        raise DataError(f"task {task.name} has no split '{split}'; valid splits: {', '.join(task.split_files)}")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data directory not found: {root}")
    # Accept both the GLUE root (containing CoLA/, SST-2/ ...) and the task folder itself.
    for folder in (root / task.dir_name, root):
        path = folder / task.split_files[split]
        if path.is_file():
            return path
    if not (root / task.dir_name).is_dir() and root.name != task.dir_name:
        raise DataError(f"no {task.dir_name}/ folder for task {task.name} in {root}")
    raise DataError(f"missing {split} split for task {task.name}: {root / task.dir_name / task.split_files[split]}")


def read_tsv(task: GlueTask, path: Path, split: Split,
             on_bad_row: Literal["error", "skip"] = "error") -> list[Example]:
    """Parse one GLUE TSV file into Examples. Every problem names the file and line."""
    try:
        # utf-8-sig strips MRPC's byte-order mark (and is harmless for files without one).
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()  # trailing blank lines
    if not rows:
        raise DataError(f"{path}: file is empty")

    header = [c.strip() for c in rows[0]]
    start = 1
    if task.headerless_columns and not set(task.text_columns) <= set(header):
        header, start = list(task.headerless_columns), 0
    missing = [c for c in task.text_columns if c not in header]
    if missing:
        raise DataError(f"{path}: header has no column {missing[0]!r} (found: {', '.join(header)})")
    text_idx = [header.index(c) for c in task.text_columns]
    label_idx = header.index(task.label_column) if task.label_column in header else None
    if label_idx is None and not split.startswith("test"):
        raise DataError(f"{path}: header has no label column {task.label_column!r} (found: {', '.join(header)})")

    examples: list[Example] = []
    for lineno, row in enumerate(rows[start:], start=start + 1):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            if on_bad_row == "skip":
                continue
            raise DataError(f"{path}:{lineno}: expected {len(header)} tab-separated columns, got {len(row)}")
        texts = [row[i].strip() for i in text_idx]
        label: int | float | None = None
        if label_idx is not None:
            raw = row[label_idx].strip()
            if task.is_regression:
                try:
                    label = float(raw)
                except ValueError:
                    raise DataError(f"{path}:{lineno}: score {raw!r} is not a number") from None
            else:
                if raw not in task.labels:
                    raise DataError(f"{path}:{lineno}: label {raw!r} is not one of "
                                    f"{', '.join(task.labels)}")
                label = task.labels.index(raw)
        examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
    if not examples:
        raise DataError(f"{path}: no examples after the header")
    return examples


def _load_hub(task: GlueTask, split: Split) -> list[Example]:
    try:
        import datasets  # optional: only the hub route needs it
    except ImportError:
        raise DataError("the hub route needs the 'datasets' package: pip install 'kronbit[hub]', "
                        "or pass --data-dir pointing at local GLUE TSV files") from None
    if split not in task.hub_splits:
        raise DataError(f"task {task.name} has no split '{split}'; valid splits: {', '.join(task.hub_splits)}")
    try:
        ds = datasets.load_dataset("nyu-mll/glue", task.name, split=task.hub_splits[split])
    except Exception as e:  # network, auth, missing cache: one line, not a traceback
        raise DataError(f"could not load GLUE/{task.name} from the hub: {str(e).splitlines()[0]}") from None
    out = []
    for row in ds:
        texts = [row[f] for f in task.hub_text_fields]
        label = row["label"]
        if label == -1:  # hub test splits mark missing labels with -1
            label = None
        elif task.is_regression:
            label = float(label)
        out.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
    return out


def load_split(task: str | GlueTask, data_dir: str | Path | None, split: Split = "train",
               on_bad_row: Literal["error", "skip"] = "error") -> list[Example]:
    """Examples of one split: from the GLUE TSV layout under ``data_dir``, or the hub when
    ``data_dir`` is None or "hub"."""
    task = get_task(task) if isinstance(task, str) else task
    if is_hub(data_dir):
        return _load_hub(task, split)
    return read_tsv(task, task_file(task, data_dir, split), split, on_bad_row=on_bad_row)
