"""Packed checkpoints: the real on-disk (and in-memory) compression, a size report, and ONNX.

A packed directory holds
  * ``config.json`` + tokenizer files: the base Hugging Face architecture;
  * ``kronbit.json``: ``format: kronbit-packed``, ``format_version``, the ``transforms`` that
    rebuild the module structure (as in a compressed checkpoint), ``packed``: per packed module
    its kind, bits and scale layout, ``dtype``: the declared dtype of every float tensor
    (scales and the full-precision parts), and ``aliases`` for tied tensors stored once;
  * ``kronbit_packed.safetensors``: packed integer codes (``uint8``, ``int8`` for 8 bits) and
    everything else in the declared dtype. Latent full-precision weights are not stored.

Loading = build the base model from ``config.json`` with its parameters on the meta device (no
fp32 weights allocated or initialised) → replay the transforms → swap each quantized module named
in ``packed`` for its packed form → strict ``load_state_dict(assign=True)``, so the only tensors
materialised are the checkpoint's (plus the small buffers the architecture computes itself, such as
BERT's ``position_ids``). With the default
``dtype="float32"`` the reloaded model's outputs equal the fake-quant model's exactly on the
dequantized path (see ``quant.packed``); float16/bfloat16 trades that for a smaller file (scales,
biases and LayerNorms rounded to 16 bits).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..core.errors import ModelError
from ..core.io import atomic_dir, write_json
from ..core.swap import swap_modules
from ..core.transforms import METHODS, apply_transform, get_transform, recorded_transforms, run_after_load
from .hf_config import add_quantization_config, check_version, quantization_config
from .meta import KRONBIT_META, build_base, read_meta, save_base_config

PACKED_WEIGHTS = "kronbit_packed.safetensors"
FORMAT = "kronbit-packed"
FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelError(f"dtype={name!r} is not supported; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def pack_model_(model: nn.Module, mode: str = "packed") -> dict[str, dict[str, Any]]:
    """Swap every module a registered method can pack for its packed form, in place; return the
    ``packed`` description (name → method, kind, bits, scale layout) that rebuilds the same shells."""
    info: dict[str, dict[str, Any]] = {}
    built: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        for method in METHODS.values():
            done = method.pack(m, mode=mode) if method.pack is not None else None
            if done is not None:
                built[name] = done[0]
                info[name] = {"method": method.kind, **done[1]}
                break
    if built:
        swap_modules(model, list(built), lambda name, _: built[name], what="packable module")
    return info


def packed_tensors(model: nn.Module, fdtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors a packed file stores for ``model`` (already packed): floats in ``fdtype``, a
    tensor reachable under two names (a tied head) once, the other name in ``aliases``."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_of: dict[tuple[int, int, tuple], str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and key in first_of:  # a tied tensor: stored once
            aliases[name] = first_of[key]
            continue
        first_of[key] = name
        t = t.detach()
        if t.is_floating_point():
            t = t.to(fdtype)
        tensors[name] = t.contiguous().clone()
    return tensors, aliases


def export_packed(model: nn.Module, path: str | Path, *, tokenizer=None, dtype: str = "float32",
                  meta: dict[str, Any] | None = None, transforms: list[dict] | None = None) -> dict[str, Any]:
    """Write ``model`` (fake-quantized, Kronecker, or both) as a packed directory at ``path``,
    atomically. The model itself is not changed. Returns the written ``kronbit.json`` content."""
    fdtype = check_dtype(dtype)
    transforms = recorded_transforms(model) if transforms is None else transforms
    if not transforms:
        raise ModelError(f"{type(model).__name__} has no kronbit transforms (quantize_ / kroneckerize_); "
                         "there is nothing to pack — save it with save_pretrained instead")
    if not hasattr(model, "config"):
        raise ModelError("export_packed needs a Hugging Face model (with .config) to rebuild it on load")
    packed_model = copy.deepcopy(model).cpu().eval()
    packed = pack_model_(packed_model)
    tensors, aliases = packed_tensors(packed_model, fdtype)
    description = {**(meta or {}), "format": FORMAT, "format_version": FORMAT_VERSION, "kronbit_version": __version__,
                   "dtype": dtype,
                   "transforms": transforms, "packed": packed, "aliases": aliases}
    with atomic_dir(path) as tmp:
        save_base_config(model, tmp)
        add_quantization_config(tmp, quantization_config(description, PACKED_WEIGHTS))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(tensors, str(tmp / PACKED_WEIGHTS), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        write_json(tmp / KRONBIT_META, description)
    return description


def is_packed(model_dir: str | Path) -> bool:
    return (Path(model_dir) / PACKED_WEIGHTS).is_file()


def packed_dir(name_or_path: str | Path) -> Path | None:
    p = Path(name_or_path)
    for cand in (p, p / "model", p / "packed"):
        if is_packed(cand):
            return cand
    return None


def read_packed_meta(model_dir: Path) -> dict[str, Any]:
    meta = read_meta(model_dir)
    if meta.get("format") != FORMAT:
        raise ModelError(f"{model_dir / KRONBIT_META}: not a packed kronbit model (format={meta.get('format')!r})")
    check_version(model_dir / KRONBIT_META, FORMAT, meta.get("format_version"), FORMAT_VERSION,
                  meta.get("kronbit_version"))
    for key in ("transforms", "packed", "dtype"):
        if key not in meta:
            raise ModelError(f"{model_dir / KRONBIT_META}: missing '{key}'")
    return meta


def load_packed(path: str | Path, mode: str = "packed", compute_dtype: str = "float32") -> nn.Module:
    """Rebuild a packed model for inference. ``mode="packed"`` keeps weights packed (low-bit
    kernel for small batches); ``"dequantized"`` expands them once at load (fp32 memory, exact).
    ``compute_dtype="bfloat16"``: larger batches unpack codes to bf16 and use the bf16 matrix
    units (faster, not exact); see ``quant.packed``."""
    d = packed_dir(path)
    if d is None:
        raise ModelError(f"{path}: no packed model here (expected {PACKED_WEIGHTS}; create one with kronbit export)")
    meta = read_packed_meta(d)
    check_dtype(meta["dtype"])
    state = _read_packed_tensors(d / PACKED_WEIGHTS)
    with parameters_on_meta():
        model = build_base(d)
    rebuild_packed_modules(model, meta, d / KRONBIT_META, mode, compute_dtype)
    for alias, orig in meta.get("aliases", {}).items():
        if orig in state:
            state[alias] = state[orig]
    tied = tied_names(model)
    expected = model.state_dict(keep_vars=True)
    reshaped = sorted(n for n, t in state.items() if n in expected and tuple(t.shape) != tuple(expected[n].shape))
    if reshaped:  # load_state_dict would raise a multi-line RuntimeError
        raise ModelError(f"{d / PACKED_WEIGHTS} does not match its description: {len(reshaped)} tensor(s) of "
                         f"another shape (e.g. {reshaped[:2]}); the folder is damaged or {KRONBIT_META} was edited")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ModelError(f"{d / PACKED_WEIGHTS} does not match its description: {len(missing)} missing tensor(s) "
                         f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    _retie(model, tied)
    left = [n for n, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:  # a tensor that is neither in the file nor computed by the architecture
        raise ModelError(f"{d / PACKED_WEIGHTS} does not hold {len(left)} tensor(s) the rebuilt model needs "
                         f"(e.g. {left[:2]}); the description is inconsistent")
    model.__dict__["kronbit_packed"] = meta["packed"]
    run_after_load(model)  # e.g. the quant method's kernel fusions
    return model.eval()


def _read_packed_tensors(f: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, floats as float32, copied out of safetensors' file mapping: the model
    keeps these very tensors (``assign=True``), and a view of the mapped file would change with,
    or crash on, a later in-place rewrite or truncation of the file."""
    try:
        state = load_file(str(f))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{f}: unreadable safetensors file ({str(e).splitlines()[0]}); "
                         "the file is damaged or truncated — export it again") from None
    return {name: t.to(torch.float32 if t.is_floating_point() else t.dtype, copy=True) for name, t in state.items()}


@contextmanager
def parameters_on_meta():
    """Every parameter registered inside goes to the meta device: no memory, and the initialisation
    that runs on it (``reset_parameters``, Hugging Face's ``_init_weights``) does nothing. Buffers
    stay real on purpose: the non-persistent ones (BERT's ``position_ids``, rotary ``inv_freq``)
    are computed in ``__init__`` and are in no checkpoint, and ``torch.device("meta")`` would
    leave them without values. (accelerate's ``init_empty_weights(include_buffers=False)``.)
    Not thread-safe: it patches ``nn.Module.register_parameter`` while active."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.data.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def rebuild_packed_modules(model: nn.Module, description: dict[str, Any], source: str | Path,
                           mode: str = "packed", compute_dtype: str = "float32") -> None:
    """Give ``model`` (the base architecture) the module structure a packed description records:
    replay its transforms with new parameters on the meta device, then swap in the empty packed
    modules. ``source`` names the description in error messages."""
    with parameters_on_meta():
        for t in description["transforms"]:
            apply_transform(model, t["kind"], t["config"])
    _swap_in_packed_shells(model, description["packed"], source, mode, compute_dtype)


def _swap_in_packed_shells(model: nn.Module, packed: dict[str, dict[str, Any]], source: str | Path, mode: str,
                           compute_dtype: str) -> None:
    """Replace each module named in ``packed`` by an empty packed module of its shape, built on the
    meta device by the method that packed it (all of its tensors are in the checkpoint)."""
    modules = dict(model.named_modules())
    shells: dict[str, nn.Module] = {}
    for name, info in packed.items():
        if name not in modules:
            raise ModelError(f"{source}: packed module '{name}' is not in the rebuilt model; "
                             "the description is inconsistent")
        # Folders written before methods were named in the description hold quantized modules only.
        method = get_transform(info.get("method", "quant"))
        try:
            with torch.device("meta"):
                shells[name] = method.shell(modules[name], info, mode=mode, compute_dtype=compute_dtype)
        except ModelError as e:
            raise ModelError(f"{source}: '{name}': {e}") from None
    if shells:
        swap_modules(model, list(shells), lambda name, _: shells[name], what="packed module")


def tied_names(model: nn.Module) -> dict[str, str]:
    """name → the first name of the same tensor object, for every parameter or buffer that is
    reachable under two names (a tied head: GPT-2's ``lm_head.weight`` is the word embedding)."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, t in chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)):
        if id(t) in first:
            tied[name] = first[id(t)]
        else:
            first[id(t)] = name
    return tied


def _retie(model: nn.Module, tied: dict[str, str]) -> None:
    """``assign=True`` gives every state-dict name its own Parameter (sharing the storage at best);
    make tied tensors one object again, as the rebuilt architecture had them."""
    for name, source in tied.items():
        src_module, _, src_leaf = source.rpartition(".")
        module, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(module), leaf, getattr(model.get_submodule(src_module), src_leaf))
