"""``load_model``: any model kronbit can evaluate — a packed or compressed directory, a run
directory, or a Hugging Face checkpoint — as a ready model."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..models.encoders import load_classifier
from ..models.resolve import resolve_model
from .compressed import compressed_dir, load_compressed
from .packed import load_packed, packed_dir


def load_model(name_or_path: str | Path, task=None, **kwargs) -> nn.Module:
    """A packed or compressed directory (or a run directory holding one) comes back as it was
    saved; anything else goes through ``load_classifier`` (``task``: a GlueTask for its head)."""
    if packed_dir(name_or_path) is not None:
        return load_packed(name_or_path)
    cdir = compressed_dir(name_or_path)
    if cdir is not None:
        return load_compressed(cdir, task)
    return load_classifier(resolve_model(name_or_path), task, **kwargs)
