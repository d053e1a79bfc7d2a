"""Checkpoints of compressed models: rebuild from config, then load tensors (the PEFT way).

A compressed model directory holds
  * ``config.json`` + tokenizer files: the *base* Hugging Face architecture;
  * ``kronbit.json``: metadata, including ``transforms``: the ordered list of module swaps applied
    to the base model (``{"kind": "quant" | "kron", "config": {...}}``);
  * ``kronbit_model.safetensors``: the full state dict of the transformed model.
Loading = build the base model from ``config.json`` (no weights), replay the transforms, then
``load_state_dict(strict=True)``. The tensors file has its own name on purpose: plain
``from_pretrained`` must refuse the directory rather than silently load latent full-precision
weights as if they were the compressed model. Only safetensors and JSON are ever read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from .. import __version__
from ..core.errors import ModelError
from ..core.io import atomic_dir, write_json
from ..core.transforms import apply_transform, get_transform
from ..models.encoders import classifier_config
from .hf_config import add_quantization_config, check_version, quantization_config, strip_kronbit_block
from .meta import KRONBIT_META, build_base, read_meta, save_base_config

WEIGHTS_NAME = "kronbit_model.safetensors"
FORMAT = "kronbit-compressed"
FORMAT_VERSION = 1


def is_compressed(model_dir: str | Path) -> bool:
    return (Path(model_dir) / WEIGHTS_NAME).is_file()


def save_compressed(model: nn.Module, tokenizer, path: str | Path, meta: dict[str, Any],
                    transforms: list[dict[str, Any]]) -> None:
    """Write a compressed-model directory atomically (the previous one survives a failure)."""
    description = {**meta, "format": FORMAT, "format_version": FORMAT_VERSION, "kronbit_version": __version__,
                   "transforms": transforms}
    with atomic_dir(path) as tmp:
        save_base_config(model, tmp)
        add_quantization_config(tmp, quantization_config(description, WEIGHTS_NAME))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        # save_model handles shared (tied) tensors, which save_file refuses.
        save_model(model, str(tmp / WEIGHTS_NAME))
        write_json(tmp / KRONBIT_META, description)


def _classifier_for(model_dir: Path, task) -> nn.Module | None:
    """For a compressed checkpoint that is not yet a classifier for ``task`` (a KnGPT2 student
    after language-model pre-training), the same backbone under a new sequence-classification
    head; None when the checkpoint already is one (it is then rebuilt as it was saved)."""
    config = AutoConfig.from_pretrained(model_dir)
    strip_kronbit_block(config)
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForSequenceClassification") for a in archs) and config.num_labels == task.num_labels:
        return None
    model = AutoModelForSequenceClassification.from_config(classifier_config(config, task))
    if getattr(model.config, "pad_token_id", None) is None:  # decoders: see load_classifier
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None)
    return model


def _for_classifier(transform: dict[str, Any]) -> dict[str, Any]:
    """A transform recorded on a language model, as replayed on its classifier."""
    change = get_transform(transform["kind"]).for_new_head
    return {**transform, "config": change(transform["config"])} if change else transform


def _saved_ties(model_dir: Path) -> dict[str, str]:
    """The tied-weight names of the architecture the checkpoint was saved from (built on the meta
    device: no memory, no initialisation)."""
    with torch.device("meta"):
        saved = build_base(model_dir)
    return dict(getattr(saved, "all_tied_weights_keys", {}) or {})


def load_compressed(model_dir: str | Path, task=None) -> nn.Module:
    """Rebuild a compressed model from its description, then load its tensors. With ``task`` (a
    GlueTask), a checkpoint that is not a classifier for it comes back as one: its backbone
    loaded, the head new (like ``load_classifier`` for a plain checkpoint)."""
    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    transforms = meta.get("transforms")
    if meta.get("format") != FORMAT or transforms is None:
        raise ModelError(f"{model_dir / KRONBIT_META}: not a kronbit compressed-model description")
    check_version(model_dir / KRONBIT_META, FORMAT, meta.get("format_version", 1), FORMAT_VERSION,
                  meta.get("kronbit_version"))
    model = _classifier_for(model_dir, task) if task is not None else None
    new_head = model is not None
    if new_head:
        transforms = [_for_classifier(t) for t in transforms]
    else:
        model = build_base(model_dir)
    for t in transforms:
        apply_transform(model, t["kind"], t["config"])
    try:
        state = load_file(str(model_dir / WEIGHTS_NAME))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{model_dir / WEIGHTS_NAME}: unreadable safetensors file ({str(e).splitlines()[0]}); "
                         "the file is damaged or truncated") from None
    # Tied tensors were saved once, under either name (safetensors' de-duplication keeps one of
    # the aliases, e.g. ``lm_head.weight`` rather than the embedding): give the other name the
    # same tensor before a strict load, so neither side of a tie comes back randomly initialised.
    # Under a new head the saved model's ties count too: a language model tied to its dense input
    # embedding may have kept only ``lm_head.weight``, which the classifier's body needs.
    ties = {**(_saved_ties(model_dir) if new_head else {}), **dict(getattr(model, "all_tied_weights_keys", {}) or {})}
    for target, source in ties.items():
        if source in state and target not in state:
            state[target] = state[source]
        elif target in state and source not in state:
            state[source] = state[target]
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(ties)
    missing = [k for k in missing if k not in tied]
    if new_head:
        # Only the heads may differ: the new classification head is missing, the old (LM) head
        # unexpected; every backbone tensor must match.
        body = f"{model.base_model_prefix}."
        missing = [k for k in missing if k.startswith(body)]
        unexpected = [k for k in unexpected if k.startswith(body)]
    if missing or unexpected:
        raise ModelError(f"{model_dir / WEIGHTS_NAME} does not match its transforms: "
                         f"{len(missing)} missing tensor(s) (e.g. {missing[:2]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    if tied:
        model.tie_weights()
    return model.eval()


def compressed_dir(name_or_path: str | Path) -> Path | None:
    """The compressed-model directory at ``name_or_path`` or its ``model/`` (a run directory)."""
    p = Path(name_or_path)
    for cand in (p, p / "model"):
        if is_compressed(cand):
            return cand
    return None
