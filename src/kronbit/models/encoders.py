"""Loading models as sequence classifiers for a GLUE task: any Hugging Face checkpoint (hub id,
local directory, run directory, ``packaged:minilm``) in. The same code path serves offline
packaged models and hub ids, so a user with internet passes ``bert-base-uncased`` and nothing
else changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from .hub import from_pretrained
from .resolve import resolve_model


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    return from_pretrained(AutoTokenizer, resolve_model(name_or_path), trust_remote_code=trust_remote_code)


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
    name = resolve_model(name_or_path)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if task is not None:
        config = from_pretrained(AutoConfig, name, trust_remote_code=trust_remote_code)
        if getattr(config, "architectures", None) and any(
                a.endswith("ForSequenceClassification") for a in config.architectures) \
                and config.num_labels != task.num_labels:
            # A classifier for other labels: keep its body, start a new head.
            kwargs["ignore_mismatched_sizes"] = True
        kwargs["config"] = classifier_config(config, task)
    if attentions:
        kwargs["attn_implementation"] = "eager"
    model = from_pretrained(AutoModelForSequenceClassification, name, **kwargs)
    if getattr(model.config, "pad_token_id", None) is None:
        # Decoder checkpoints (GPT-2, Llama) have no pad token; the classifier needs one to find
        # the last real token of each row.
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None)
    return model
