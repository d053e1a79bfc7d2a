"""The one module-swap mechanism every compression method uses.

Walk ``named_modules``, match target modules by name (the PEFT convention: a list of names matches
a module whose full name equals an entry or ends with ``"." + entry``; a single string is a full
regular expression), build the replacement from the original module, and ``setattr`` it on its
parent. Quantization (``quantize_``) and Kronecker decomposition (``kroneckerize_``) differ only
in the ``build`` function they pass.

Linear maps come in two layouts: ``nn.Linear`` stores W as (out, in); Hugging Face GPT-2's
``Conv1D`` stores it as (in, out). ``linear_weight`` always returns (out, in) plus the
``fan_in_fan_out`` flag that says which layout the original used, so a replacement can be built
once for both and converted back with the right layout.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .errors import ConfigError

try:  # transformers' GPT-2 style layer; optional so this module imports without transformers
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = None  # type: ignore[assignment,misc]

Targets = str | Sequence[str]
FilterFn = Callable[[nn.Module, str], bool]


def is_conv1d(module: nn.Module) -> bool:
    return Conv1D is not None and isinstance(module, Conv1D)


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """(W as (out, in), bias or None, fan_in_fan_out) for an ``nn.Linear`` or a ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias, False
    if is_conv1d(module):
        return module.weight.t(), module.bias, True
    raise TypeError(f"{type(module).__name__} is not a linear layer (nn.Linear or Conv1D)")


def name_matches(name: str, targets: Targets) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def find_modules(model: nn.Module, targets: Targets, filter_fn: FilterFn | None = None,
                 kinds: tuple[type, ...] | Callable[[nn.Module], bool] | None = None
                 ) -> list[tuple[str, nn.Module]]:
    """(name, module) pairs matching ``targets`` (and ``kinds`` / ``filter_fn``), in model order."""
    found = []
    for name, module in model.named_modules():
        if not name or not name_matches(name, targets):
            continue
        if kinds is not None:
            ok = kinds(module) if callable(kinds) and not isinstance(kinds, tuple) else isinstance(module, kinds)
            if not ok:
                continue
        if filter_fn is not None and not filter_fn(module, name):
            continue
        found.append((name, module))
    return found


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def swap_modules(model: nn.Module, targets: Targets,
                 build: Callable[[str, nn.Module], nn.Module | None],
                 filter_fn: FilterFn | None = None,
                 kinds: tuple[type, ...] | Callable[[nn.Module], bool] | None = None,
                 what: str = "module") -> list[str]:
    """Replace every matching module by ``build(name, module)`` (None = leave it); return the
    swapped names. A target list that matches nothing is a config error, not a silent no-op."""
    found = find_modules(model, targets, filter_fn, kinds)
    if not found:
        raise ConfigError(f"target_modules {_show(targets)} matched no {what} in {type(model).__name__}; "
                          f"candidates: {_candidates(model, kinds)}")
    swapped = []
    for name, module in found:
        new = build(name, module)
        if new is None or new is module:
            continue
        set_submodule(model, name, new)
        swapped.append(name)
    return swapped


def _show(targets: Targets) -> str:
    return repr(targets) if isinstance(targets, str) else "[" + ", ".join(map(repr, targets)) + "]"


def _candidates(model: nn.Module, kinds, limit: int = 8) -> str:
    """Distinct last name parts of the modules of the right kind, to suggest valid targets."""
    seen: dict[str, None] = {}
    for name, module in model.named_modules():
        if not name:
            continue
        if kinds is not None:
            ok = kinds(module) if callable(kinds) and not isinstance(kinds, tuple) else isinstance(module, kinds)
            if not ok:
                continue
        seen.setdefault(name.rsplit(".", 1)[-1], None)
    names = list(seen)
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "none"


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def iter_linear_like(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    return ((n, m) for n, m in model.named_modules() if is_linear_like(m))
