"""Compression methods as transforms: the registry, and the record kept on a model.

A *transform* is a method that swaps modules of a Hugging Face model in place (quantization:
``quantize_``; Kronecker decomposition: ``kroneckerize_``). Each method registers itself once, in
its own package's ``__init__``, with

* ``config_cls``: its versioned config dataclass (validated eagerly, JSON round-trip);
* ``apply(model, config)`` and ``undo(model)``;
* optionally ``pack(module) -> (packed_module, info) | None`` and ``shell(module, info, **opts)``:
  how one of its modules is written to, and rebuilt from, the packed format; and
  ``for_new_head(config)``: how its recorded config changes when the model gets a new head;
  ``describe(config)``: what a recorded config did: in words for a model card, and in a few JSON
  fields (its ``"fields"``) for the size report.

Every ``apply`` appends what it did to the model (``record_transform``), so a model can be saved as
"base architecture + transforms + tensors" and rebuilt from that, wherever it came from (the role
of PEFT's ``peft_config``). The formats layer only ever talks to this registry, never to a method
by name.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from .errors import ModelError


@dataclass(frozen=True)
class TransformMethod:
    kind: str                                      # the name recorded in kronbit.json ("quant", "kron")
    config_cls: type                               # a core.config.Config subclass
    apply: Callable[[nn.Module, Any], Any]         # apply(model, config), in place
    undo: Callable[[nn.Module], Any] | None = None
    # Packed format: pack(module) → (packed module, JSON-able info) or None when the module is not
    # this method's or stays as it is; shell(rebuilt module, info, **load options) → an empty
    # packed module of the same shape (its tensors come from the file).
    pack: Callable[[nn.Module], tuple[nn.Module, dict[str, Any]] | None] | None = None
    shell: Callable[..., nn.Module | None] | None = None
    # The config to replay when the model comes back under a new head (a language model's
    # transform replayed on its sequence classifier); None: the same config.
    for_new_head: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # What a recorded config did, one hook for every report: describe(recorded config) →
    # {"summary": "W1A1", "rows": [(label, text), ...], "tags": [...], "fields": {...}}; summary,
    # rows and tags are for people (a model card), the optional "fields" are JSON for the size
    # report (e.g. bits, whether attention is binary). None: the kind and its config as they are.
    describe: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # after_load(model): once a packed model's tensors are all in (wiring across modules, such as
    # kernel fusions); None: nothing to do.
    after_load: Callable[[nn.Module], Any] | None = None


METHODS: dict[str, TransformMethod] = {}


def register_transform(method: TransformMethod) -> TransformMethod:
    if method.kind in METHODS and METHODS[method.kind] != method:
        raise ValueError(f"transform '{method.kind}' is registered twice")
    METHODS[method.kind] = method
    return method


def get_transform(kind: str) -> TransformMethod:
    if kind not in METHODS:
        raise ModelError(f"unknown transform '{kind}'; known: {', '.join(METHODS) or 'none'} "
                         "(written by a newer kronbit?)")
    return METHODS[kind]


def transform_summaries(transforms: list[dict]) -> dict[str, dict[str, Any]]:
    """{kind: fields} of the recorded transforms whose ``describe`` gives JSON fields (for reports)."""
    out = {}
    for t in transforms:
        method = get_transform(t["kind"])
        fields = method.describe(t["config"]).get("fields") if method.describe is not None else None
        if fields is not None:
            out[t["kind"]] = fields
    return out


def apply_transform(model: nn.Module, kind: str, config: Any) -> Any:
    """Replay one recorded transform (a config dict as stored in kronbit.json, or a config)."""
    method = get_transform(kind)
    if isinstance(config, dict):
        config = method.config_cls.from_dict(config, where=f"{kind} transform")
    return method.apply(model, config)


# ------------------------------------------------------------------------------------------------
# The record on the model

TRANSFORMS_ATTR = "kronbit_transforms"


def record_transform(model: nn.Module, kind: str, config: dict) -> None:
    model.__dict__.setdefault(TRANSFORMS_ATTR, []).append({"kind": kind, "config": config})


def run_after_load(model: nn.Module) -> None:
    """Each recorded method's ``after_load`` on the loaded model, once per method."""
    for kind in dict.fromkeys(t["kind"] for t in model.__dict__.get(TRANSFORMS_ATTR, [])):
        hook = get_transform(kind).after_load
        if hook is not None:
            hook(model)


def recorded_transforms(model: nn.Module) -> list[dict]:
    """The transforms applied to ``model`` so far, in order (copies)."""
    return copy.deepcopy(model.__dict__.get(TRANSFORMS_ATTR, []))


def update_recorded(model: nn.Module, kind: str, **changes: Any) -> None:
    """Change the recorded config of every ``kind`` transform (``set_bits_``: a rebuild must use
    the new bits)."""
    for t in model.__dict__.get(TRANSFORMS_ATTR, []):
        if t["kind"] == kind:
            t["config"].update(changes)


def forget_transforms(model: nn.Module, kind: str) -> None:
    """Drop the records of ``kind`` (after the transform has been undone: dequantize_, densify_)."""
    if TRANSFORMS_ATTR in model.__dict__:
        model.__dict__[TRANSFORMS_ATTR] = [t for t in model.__dict__[TRANSFORMS_ATTR] if t["kind"] != kind]
