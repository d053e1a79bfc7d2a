"""Layer dropping: the DistilGPT2-style baseline student for KnGPT2.

DistilBERT/DistilGPT2 build the student by keeping a subset of the teacher's layers (every other
one: 0, 2, 4, ...) with the teacher's weights, then distil. KnGPT2 compares against exactly this
baseline at a matched parameter count, so besides ``drop_layers`` this file offers
``params_for_keep`` (the student's size without building it) and ``plan_for_params`` (how many
layers to keep to land within ±2% of a target, e.g. the Kronecker-compressed model's size).

A student is a deep copy of the teacher with a shorter layer list: embeddings, final norm and
LM head are copied unchanged (tied embeddings stay tied). Two bookkeeping fixes keep it a working
HF model: the config's layer count (and per-layer ``layer_types`` if present) is updated, and each
kept layer's ``layer_idx`` is renumbered 0..k-1, because the KV cache is indexed by it during
generation.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Sequence

from torch import nn

from ..core.errors import ConfigError, ModelError
from ..core.config import Config
from ..core.swap import swap_modules

# Where decoder families keep their block list (GPT-2/GPT-J: transformer.h; Llama/Mistral/Qwen:
# model.layers; GPT-NeoX: gpt_neox.layers; OPT: model.decoder.layers).
LAYER_PATHS = ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers")

Keep = Sequence[int] | int | None


@dataclass
class LayerDropConfig(Config):
    """Which blocks a layer-dropped student keeps: an explicit ``keep`` list, a number of blocks
    (spread evenly), or ``target_params`` (the evenly spread count closest to that many
    parameters — e.g. the Kronecker student's, for an equal-size baseline)."""

    keep: list[int] | int | None = None
    target_params: int | None = None
    tolerance: float = 0.02  # reported (and warned about) when the closest count misses it

    def validate(self) -> None:
        if (self.keep is None) == (self.target_params is None):
            raise ConfigError("layerdrop: give exactly one of keep (a list or a count) or target_params")
        if self.target_params is not None and self.target_params <= 0:
            raise ConfigError(f"layerdrop.target_params must be positive, got {self.target_params}")


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(path, ModuleList)`` of the model's decoder blocks."""
    for path in LAYER_PATHS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return path, layers
    raise ModelError(f"{type(model).__name__}: no decoder layer list found (looked for {', '.join(LAYER_PATHS)})")


def spread_layers(n_layers: int, n_keep: int) -> list[int]:
    """``n_keep`` layer indices spread evenly from layer 0: ``floor(i * n_layers / n_keep)``.

    Half the layers gives every other layer (0, 2, 4, ...), the DistilGPT2 choice; all layers
    gives the identity.
    """
    if not 1 <= n_keep <= n_layers:
        raise ConfigError(f"number of layers to keep must be between 1 and {n_layers}, got {n_keep}")
    return [i * n_layers // n_keep for i in range(n_keep)]


def resolve_keep(keep: Keep, n_layers: int) -> list[int]:
    """None -> every other layer; an int -> that many layers spread evenly; a list -> checked."""
    if keep is None:
        return list(range(0, n_layers, 2))
    if isinstance(keep, int):
        return spread_layers(n_layers, keep)
    keep = [int(k) for k in keep]
    if not keep:
        raise ConfigError("keep is empty; keep at least one layer")
    bad = [k for k in keep if not 0 <= k < n_layers]
    if bad:
        raise ConfigError(f"keep has layer index(es) {bad} outside 0..{n_layers - 1}")
    if any(b <= a for a, b in zip(keep, keep[1:])):
        raise ConfigError(f"keep must list distinct layers in increasing order, got {keep}")
    return keep


def drop_layers(model: nn.Module, keep: Keep = None) -> nn.Module:
    """A new model with only the ``keep`` layers of ``model`` (copied weights); ``model`` is untouched."""
    path, layers = decoder_layers(model)
    keep = resolve_keep(keep, len(layers))
    if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
        # GPT-2 bakes 1/(layer_idx+1) into each attention at construction: the copied layers keep
        # the teacher's scaling, but a saved student reloaded from disk would recompute it.
        warnings.warn("scale_attn_by_inverse_layer_idx=True: a saved layer-dropped student will "
                      "reload with different attention scaling", stacklevel=2)
    # Deep-copy everything except the dropped blocks (the memo maps them to themselves, so they are
    # neither copied nor kept: the copied list is replaced right after).
    dropped = set(range(len(layers))) - set(keep)
    memo = {id(layers[i]): layers[i] for i in dropped}
    student = copy.deepcopy(model, memo)
    _, copied = decoder_layers(student)
    new = nn.ModuleList([copied[i] for i in keep])
    swap_modules(student, [path], lambda _, m: new, what="decoder block list")
    for new_idx, block in enumerate(new):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx

    cfg = student.config
    layer_types = getattr(cfg, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        cfg.layer_types = [layer_types[i] for i in keep]
    cfg.num_hidden_layers = len(keep)  # GPT2Config maps this name onto n_layer
    return student


def params_for_keep(model: nn.Module, keep: Keep = None) -> int:
    """Parameters of ``drop_layers(model, keep)``, counted without building it.

    Unique tensors only (tied embeddings count once), as ``count_parameters`` does.
    """
    _, layers = decoder_layers(model)
    keep = resolve_keep(keep, len(layers))
    dropped = {id(p) for i in set(range(len(layers))) - set(keep) for p in layers[i].parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in dropped)


@dataclass(frozen=True)
class LayerDropPlan:
    keep: list[int]
    num_params: int
    target_params: int
    rel_diff: float          # (num_params - target) / target
    within_tolerance: bool

    def describe(self) -> str:
        ok = "within" if self.within_tolerance else "OUTSIDE"
        return (f"keep {len(self.keep)} layers {self.keep}: {self.num_params:,} params vs target "
                f"{self.target_params:,} ({self.rel_diff:+.2%}, {ok} tolerance)")


def plan_for_params(model: nn.Module, target_params: int, tolerance: float = 0.02) -> LayerDropPlan:
    """The layer count (spread evenly, see ``spread_layers``) whose student is closest in size to
    ``target_params``; ``within_tolerance`` says whether it is within ±``tolerance`` (relative).

    One block is often several percent of a model, so ±2% may be out of reach; the plan then
    still gives the closest count and says so rather than failing.
    """
    if target_params <= 0:
        raise ConfigError(f"target_params must be positive, got {target_params}")
    if tolerance < 0:
        raise ConfigError(f"tolerance must be non-negative, got {tolerance}")
    _, layers = decoder_layers(model)
    best = None
    for n in range(1, len(layers) + 1):
        keep = spread_layers(len(layers), n)
        params = params_for_keep(model, keep)
        diff = (params - target_params) / target_params
        if best is None or abs(diff) < abs(best.rel_diff):
            best = LayerDropPlan(keep, params, target_params, diff, abs(diff) <= tolerance)
    assert best is not None
    return best
