"""What the kronbit quantizer does inside transformers' ``from_pretrained`` and ``save_pretrained``.

``kronbit.hf_classes`` holds the two classes transformers sees (the quantization config and the
``HfQuantizer``); they call the functions here. Loading a kronbit folder through transformers:

1. transformers builds the base architecture named by ``config.json`` on the meta device;
2. ``prepare`` gives it the modules kronbit's own loader would build — the recorded transforms
   replayed, and for a packed folder every packed module swapped in as an empty shell (the same
   ``rebuild_packed_modules`` ``load_packed`` uses) — and checks the tensors file's table against
   them, so a config that does not describe the tensors fails here in one line;
3. transformers loads the file's tensors into those modules (packed codes stay packed);
4. ``finish`` checks that nothing is left on the meta device.

The result computes exactly what ``load_packed`` / ``load_compressed`` return: same modules, same
tensors in the same dtypes (floats as float32, codes as stored).
"""

from __future__ import annotations

import copy
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..core.errors import ModelError
from ..core.transforms import apply_transform, run_after_load
from . import compressed, packed
from .hf_config import CONFIG_NAME, check_block
from .packed import check_dtype, packed_tensors, parameters_on_meta, rebuild_packed_modules, tied_names

READABLE = {packed.FORMAT: packed.FORMAT_VERSION, compressed.FORMAT: compressed.FORMAT_VERSION}


def check_config(block: dict[str, Any]) -> None:
    """Refuse, in one line, a block this kronbit cannot read (called when transformers reads it)."""
    check_block(block, READABLE)
    if block["format"] == packed.FORMAT:
        check_dtype(block["dtype"])


def is_packed_block(block: dict[str, Any]) -> bool:
    return block["format"] == packed.FORMAT


def prepare(model: nn.Module, block: dict[str, Any], checkpoint_files: list[str] | None) -> None:
    """Before transformers loads any tensor: rebuild kronbit's modules in ``model`` (on meta) and
    check the tensors file against them."""
    # the modules themselves, not their ids: a replaced module freed during the swap could hand its
    # id to a new one, which would then pass for an original
    originals = list(model.modules())
    before = {id(m) for m in originals}
    if is_packed_block(block):
        rebuild_packed_modules(model, block, CONFIG_NAME)
    else:
        with parameters_on_meta():
            for t in block["transforms"]:
                apply_transform(model, t["kind"], t["config"])
    ties = {**tied_names(model), **block.get("aliases", {})}
    if checkpoint_files:
        _check_tensors(model, checkpoint_files, ties)
    # Tell transformers which names share a tensor in the rebuilt model (the architecture's own
    # mapping can name a weight a swapped-in module no longer has, e.g. a packed embedding's).
    model.all_tied_weights_keys = ties
    _skip_reinit_of_rebuilt_modules(model, before)
    del originals


def _file_shapes(files: list[str]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(f, framework="pt") as sf:
                for name in sf.keys():
                    shapes[name] = tuple(sf.get_slice(name).get_shape())
        except (SafetensorError, OSError) as e:
            raise ModelError(f"{f}: unreadable safetensors file ({str(e).splitlines()[0]}); "
                             "the file is damaged or truncated") from None
    return shapes


def _check_tensors(model: nn.Module, files: list[str], ties: dict[str, str]) -> None:
    expected = {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
    found = _file_shapes(files)
    present = set(found)
    for target, source in ties.items():
        if target in present or source in present:
            present |= {target, source}
    missing = sorted(set(expected) - present)
    unexpected = sorted(set(found) - set(expected))
    reshaped = sorted(n for n in set(found) & set(expected) if found[n] != expected[n])
    if not (missing or unexpected or reshaped):
        return
    archs = getattr(model.config, "architectures", None) or []
    hint = (f"; the folder holds a {archs[0]}: load it with that class or its Auto class"
            if archs and type(model).__name__ not in archs else "; the folder is damaged or config.json was edited")
    raise ModelError(f"{Path(files[0]).name} does not match the quantization_config of {type(model).__name__}: "
                     f"{len(missing)} missing tensor(s) (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                     f"(e.g. {unexpected[:2]}), {len(reshaped)} of another shape (e.g. {reshaped[:2]}){hint}")


def _skip_reinit_of_rebuilt_modules(model: nn.Module, before: set[int]) -> None:
    """transformers runs the architecture's ``_init_weights`` on every module after loading, to
    fill what the file lacked; written for the original modules, it can reach into a swapped-in
    one for a tensor it no longer has (GPT-2 rescales ``c_proj.weight`` from its parent). Every
    tensor of a rebuilt module comes from the file (checked in ``prepare``), so the rebuilt modules
    and their direct parents are marked initialised — except a parent with buffers the file
    does not hold (non-persistent ones such as ``position_ids``), which its init computes."""
    for module in model.modules():
        if id(module) not in before:
            module._is_hf_initialized = True
            continue
        if any(id(child) not in before for child in module.children()) and not module._non_persistent_buffers_set:
            module._is_hf_initialized = True


def finish(model: nn.Module, block: dict[str, Any]) -> None:
    left = [n for n, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:
        raise ModelError(f"the tensors file does not hold {len(left)} tensor(s) the rebuilt model needs "
                         f"(e.g. {left[:2]}); config.json's quantization_config is inconsistent")
    _realign(model)
    if is_packed_block(block):
        _onto_kernels(model)
        model.__dict__["kronbit_packed"] = copy.deepcopy(block["packed"])


def _onto_kernels(model: nn.Module) -> None:
    """What a packed layer does when ``load_packed`` loads its tensors (``_load_from_state_dict``):
    move onto its bit-level kernel. transformers assigns tensors without that hook, so the layers
    are asked here; any layer that can (``use_kernel``), whatever its method."""
    for module in model.modules():
        if getattr(module, "mode", None) == "packed" and callable(getattr(module, "use_kernel", None)):
            module.use_kernel()
    run_after_load(model)


ALIGNMENT = 64  # bytes: what torch's CPU allocator gives a fresh tensor


def _realign(model: nn.Module) -> None:
    """Copy every tensor whose data does not start on a 64-byte boundary into a fresh one.
    transformers hands over tensors read from the file's bytes, which can start anywhere; the
    CPU matrix kernels choose their summation order by alignment, so a Linear over such a weight
    can differ in the last bit from the same Linear in ``load_packed``'s model (whose tensors are
    fresh copies). A tensor shared under two names stays one tensor."""
    fresh: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, t in store.items():
                if t is None or t.data_ptr() % ALIGNMENT == 0:
                    continue
                if id(t) not in fresh:
                    copy_ = t.detach().clone()
                    fresh[id(t)] = nn.Parameter(copy_, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) \
                        else copy_
                store[name] = fresh[id(t)]


def state_dict_for_save(model: nn.Module, block: dict[str, Any]) -> tuple[dict[str, torch.Tensor] | None,
                                                                         dict[str, str]]:
    """``save_pretrained``: the tensors to write, and the block updated to describe them. A
    packed model is written as ``export_packed`` writes it (floats in the declared dtype, a tensor
    shared under two names stored once and recorded in ``aliases``); a compressed one as its
    plain state dict. Either way in transformers' default file names (``weights: null``)."""
    block["weights"] = None
    meta = {"kronbit_format": block["format"], "kronbit_format_version": str(block["format_version"])}
    if not is_packed_block(block):
        return None, meta
    tensors, block["aliases"] = packed_tensors(model, check_dtype(block["dtype"]))
    return tensors, meta
