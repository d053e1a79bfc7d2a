"""What every model directory kronbit writes has in common: ``config.json`` naming the base
architecture, and ``kronbit.json`` beside it (task, labels, stage, and for compressed and packed
models the transforms that rebuild them), so ``kronbit eval`` and the loaders need no extra
flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from ..core.errors import ModelError
from .hf_config import strip_kronbit_block

KRONBIT_META = "kronbit.json"


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / KRONBIT_META
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def save_base_config(model: nn.Module, directory: Path) -> None:
    """config.json naming the model class, so loading rebuilds the same head (a model built from a
    config, not loaded, has no ``architectures`` yet, and a classifier built from a language
    model's config still names the language model)."""
    config = model.config
    config.architectures = [type(model).__name__]
    config.save_pretrained(directory)


def build_base(model_dir: Path, kind: str = "auto") -> nn.Module:
    """The base architecture from config.json, randomly initialised (weights come later)."""
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as e:  # a damaged or truncated config.json
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{Path(model_dir) / 'config.json'}: unreadable model config ({first})") from None
    strip_kronbit_block(config)
    return auto_class(getattr(config, "architectures", None), kind).from_config(config)


def auto_class(architectures: list[str] | None, kind: str = "auto") -> type:
    """The Auto class for a config's ``architectures`` (``kind`` forces one)."""
    archs = architectures or []
    if kind == "auto":
        kind = ("classifier" if any(a.endswith("ForSequenceClassification") for a in archs)
                else "causal_lm" if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs)
                else "base")
    return {"classifier": AutoModelForSequenceClassification, "causal_lm": AutoModelForCausalLM,
            "base": AutoModel}[kind]


