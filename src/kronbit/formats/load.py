"""``load_model``: any model kronbit can evaluate — a packed or compressed directory, a run
directory, or a Hugging Face checkpoint — as a ready model."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..data.glue import get_task
from ..models.encoders import load_classifier
from ..models.resolve import resolve_model
from .compressed import compressed_dir, load_compressed
from .hf_config import CONFIG_NAME, is_kronbit_block
from .meta import KRONBIT_META, auto_class
from .packed import load_packed, packed_dir


def load_model(name_or_path: str | Path, task=None, **kwargs) -> nn.Module:
    """A packed or compressed directory (or a run directory holding one) comes back as it was
    saved; anything else goes through ``load_classifier`` (``task``: a GlueTask or a task name
    such as "sst2", for its head)."""
    if isinstance(task, str):
        task = get_task(task)  # an unknown name is a one-line error naming the known ones
    if packed_dir(name_or_path) is not None:
        return load_packed(name_or_path)
    cdir = compressed_dir(name_or_path)
    if cdir is not None:
        return load_compressed(cdir, task)
    if saved_by_transformers(name_or_path):
        # save_pretrained of a model loaded through transformers: kronbit's quantizer rebuilds it
        config = read_config(name_or_path)
        return auto_class(config.get("architectures")).from_pretrained(name_or_path).eval()
    return load_classifier(resolve_model(name_or_path), task, **kwargs)


def read_config(folder: str | Path) -> dict:
    try:
        return json.loads((Path(folder) / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def saved_by_transformers(name_or_path: str | Path) -> bool:
    """A folder ``save_pretrained`` wrote from a kronbit model loaded through transformers: a
    kronbit ``quantization_config`` in config.json, transformers' file names, no kronbit.json."""
    folder = Path(name_or_path)
    return (folder.is_dir() and not (folder / KRONBIT_META).is_file()
            and is_kronbit_block(read_config(folder).get("quantization_config")))
