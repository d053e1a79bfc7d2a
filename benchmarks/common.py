"""Shared plumbing for benchmark scripts: machine facts, incremental results files, tables.

Every benchmark writes ``docs/results/<name>.json`` (each figure with its unit, the exact command,
the date and the machine) and ``docs/results/<name>.md`` beside it, after every finished unit of
work, so a run that is killed keeps what it finished and a rerun skips it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from kronbit.core.io import write_json, write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
WORK = REPO / "benchmarks" / "_work"  # run directories (gitignored)


def data_root() -> Path:
    return Path(os.environ.get("KRONBIT_DATA_ROOT", REPO.parent / "shared" / "data"))


def machine() -> dict[str, Any]:
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:  # other work on the machine shifts timings: every row says how busy it was
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "gpu": torch.cuda.is_available(),
            "load_avg_1_5_15min": load,
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_threads": torch.get_num_threads()}


def command() -> str:
    return " ".join(shlex.quote(a) for a in ["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def slug(name: str) -> str:
    """A run-directory name for a variant's label ("lr 2e-4, no KD" -> "lr_2e_4__no_KD")."""
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class Results:
    """A results file that grows row by row. Rows are keyed; an existing key means 'done'."""

    def __init__(self, name: str, description: str):
        import json

        self.name = name
        self.json_path = RESULTS / f"{name}.json"
        self.md_path = RESULTS / f"{name}.md"
        self.data: dict[str, Any] = {"name": name, "description": description, "rows": {}}
        if self.json_path.is_file():
            self.data = json.loads(self.json_path.read_text())
        self.data.setdefault("rows", {})

    def done(self, key: str) -> bool:
        return key in self.data["rows"]

    def add(self, key: str, row: dict[str, Any]) -> None:
        row = {**row, "command": command(), "date": now(), "machine": machine()}
        self.data["rows"][key] = row
        self.save()

    def save(self, markdown: str | None = None) -> None:
        write_json(self.json_path, self.data)
        if markdown is not None:
            write_text(self.md_path, markdown)


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.2f}"
        return "" if v is None else str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out) + "\n"
