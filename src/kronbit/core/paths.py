"""Where local data lives. One variable, ``KRONBIT_DATA_ROOT``: the folder holding ``glue/`` (the
GLUE TSV layout) and ``lm/`` (language-model text). Without it, a source checkout uses
``../shared/data`` beside the repository, and anything else ``./data``."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ROOT_VAR = "KRONBIT_DATA_ROOT"


def data_root() -> Path:
    env = os.environ.get(DATA_ROOT_VAR)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").is_file():
        return repo.parent / "shared" / "data"
    return Path("data")


def default_glue_dir() -> str:
    """What ``--data-dir`` means when it is not given: the local GLUE folder when it exists, else
    the hub (``datasets``; needs internet)."""
    glue = data_root() / "glue"
    return str(glue) if glue.is_dir() else "hub"
