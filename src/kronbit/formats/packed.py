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
import json
import struct
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelError
from .io import atomic_dir, write_json
from .checkpoint import save_base_config
from .models import KRONBIT_META, read_meta
from .modules import recorded_transforms, set_submodule

PACKED_WEIGHTS = "kronbit_packed.safetensors"
FORMAT = "kronbit-packed"
FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelError(f"dtype={name!r} is not supported; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def pack_model_(model: nn.Module, mode: str = "packed") -> dict[str, dict[str, Any]]:
    """Swap every quantized module with quantized weights for its packed form, in place; return
    the ``packed`` description (name → kind, bits, scale layout) that rebuilds the same shells."""
    from .quant.kron_layers import QuantKroneckerLinear
    from .quant.layers import FULL, QuantEmbedding, QuantLinear
    from .quant.packed import PackedEmbedding, PackedKroneckerLinear, PackedLinear

    info: dict[str, dict[str, Any]] = {}
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantKroneckerLinear) and m.w_bits < FULL:
            new = PackedKroneckerLinear.from_quant(m)
            info[name] = {"kind": "kron_linear", "bits": m.w_bits, "per_row": new.a_scale.dim() > 0,
                          "has_offset": new.a_offset is not None}
            set_submodule(model, name, new)
            continue
        if isinstance(m, QuantLinear) and m.w_bits < FULL:
            new = PackedLinear.from_quant(m, mode=mode)
            info[name] = {"kind": "linear", "bits": m.w_bits, "per_row": new.weight_scale.dim() > 0,
                          "has_offset": new.weight_offset is not None}
        elif isinstance(m, QuantEmbedding) and m.w_bits < FULL:
            new = PackedEmbedding.from_quant(m)
            info[name] = {"kind": "embedding", "bits": m.w_bits, "per_row": True,
                          "has_offset": new.weight_offset is not None}
        else:
            continue
        set_submodule(model, name, new)
    return info


def export_packed(model: nn.Module, path: str | Path, *, tokenizer=None, dtype: str = "float32",
                  meta: dict[str, Any] | None = None, transforms: list[dict] | None = None) -> dict[str, Any]:
    """Write ``model`` (fake-quantized, Kronecker, or both) as a packed directory at ``path``,
    atomically. The model itself is not changed. Returns the written ``kronbit.json`` content."""
    from safetensors.torch import save_file

    fdtype = _dtype(dtype)
    transforms = recorded_transforms(model) if transforms is None else transforms
    if not transforms:
        raise ModelError(f"{type(model).__name__} has no kronbit transforms (quantize_ / kroneckerize_); "
                         "there is nothing to pack — save it with save_pretrained instead")
    if not hasattr(model, "config"):
        raise ModelError("export_packed needs a Hugging Face model (with .config) to rebuild it on load")
    packed_model = copy.deepcopy(model).cpu().eval()
    packed = pack_model_(packed_model)
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_of: dict[tuple[int, int, tuple], str] = {}
    for name, t in packed_model.state_dict(keep_vars=False).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and key in first_of:  # a tied tensor: stored once
            aliases[name] = first_of[key]
            continue
        first_of[key] = name
        t = t.detach()
        if t.is_floating_point():
            t = t.to(fdtype)
        tensors[name] = t.contiguous().clone()
    description = {**(meta or {}), "format": FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype,
                   "transforms": transforms, "packed": packed, "aliases": aliases}
    with atomic_dir(path) as tmp:
        save_base_config(model, tmp)
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
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(f"{model_dir / KRONBIT_META}: packed format_version {version!r} is not supported "
                         f"(this kronbit reads {FORMAT_VERSION})")
    for key in ("transforms", "packed", "dtype"):
        if key not in meta:
            raise ModelError(f"{model_dir / KRONBIT_META}: missing '{key}'")
    return meta


def load_packed(path: str | Path, mode: str = "packed", compute_dtype: str = "float32") -> nn.Module:
    """Rebuild a packed model for inference. ``mode="packed"`` keeps weights packed (low-bit
    kernel for small batches); ``"dequantized"`` expands them once at load (fp32 memory, exact).
    ``compute_dtype="bfloat16"``: larger batches unpack codes to bf16 and use the bf16 matrix
    units (faster, not exact); see ``quant.packed``."""
    from .checkpoint import apply_transform, build_base

    d = packed_dir(path)
    if d is None:
        raise ModelError(f"{path}: no packed model here (expected {PACKED_WEIGHTS}; create one with kronbit export)")
    meta = read_packed_meta(d)
    _dtype(meta["dtype"])
    state = _read_packed_tensors(d / PACKED_WEIGHTS)
    with parameters_on_meta():
        model = build_base(d)
        for t in meta["transforms"]:
            apply_transform(model, t["kind"], t["config"])
    _swap_in_packed_shells(model, meta["packed"], d, mode, compute_dtype)
    for alias, orig in meta.get("aliases", {}).items():
        if orig in state:
            state[alias] = state[orig]
    tied = _tied_names(model)
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
    return model.eval()


def _read_packed_tensors(f: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, floats as float32, copied out of safetensors' file mapping: the model
    keeps these very tensors (``assign=True``), and a view of the mapped file would change with,
    or crash on, a later in-place rewrite or truncation of the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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


def _swap_in_packed_shells(model: nn.Module, packed: dict[str, dict[str, Any]], d: Path, mode: str,
                           compute_dtype: str) -> None:
    """Replace each quantized module named in ``packed`` by an empty packed module of its shape,
    built on the meta device (all of its tensors are in the checkpoint)."""
    from .quant.kron_layers import QuantKroneckerLinear
    from .quant.layers import QuantEmbedding, QuantLinear
    from .quant.packed import PackedEmbedding, PackedKroneckerLinear, PackedLinear

    modules = dict(model.named_modules())
    for name, info in packed.items():
        q = modules.get(name)
        with torch.device("meta"):
            if info["kind"] == "linear" and isinstance(q, QuantLinear):
                new = PackedLinear.shell_of(q, info["bits"], info["per_row"], info["has_offset"], mode, compute_dtype)
            elif info["kind"] == "kron_linear" and isinstance(q, QuantKroneckerLinear):
                new = PackedKroneckerLinear.shell_of(q, info["bits"], info["per_row"], info["has_offset"])
            elif info["kind"] == "embedding" and isinstance(q, QuantEmbedding):
                new = PackedEmbedding(q.num_embeddings, q.embedding_dim, info["bits"], q.padding_idx,
                                      info["has_offset"])
            else:
                raise ModelError(f"{d / KRONBIT_META}: packed module '{name}' ({info.get('kind')}) does not match "
                                 "the rebuilt model; the description is inconsistent")
        set_submodule(model, name, new)


def _tied_names(model: nn.Module) -> dict[str, str]:
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


# ------------------------------------------------------------------------------------------------
# Size report


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor table of a safetensors file, read without loading (or unpickling) anything."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ModelError(f"{path}: truncated safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise ModelError(f"{path}: truncated safetensors file (header says {n} bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ModelError(f"{path}: damaged safetensors header") from None
    header.pop("__metadata__", None)
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + n + end > size:
        raise ModelError(f"{path}: truncated safetensors file (tensors need {8 + n + end} bytes, file has {size})")
    return header


def _category(name: str, packed_names: set[str]) -> str:
    module = name.rsplit(".", 1)[0]
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("weight_scale", "weight_offset", "a_scale", "a_offset", "b_scale", "b_offset") or "_quantizer." in name:
        return "scales"
    if "embed" in name or module.endswith(("wte", "wpe")):
        return "embeddings"
    if leaf in ("packed_weight", "packed_a", "packed_b") or (leaf in ("a", "b") and module not in packed_names):
        return "encoder_weights"
    if leaf == "weight" and ("layer." in name or ".h." in name or "layers." in name) and "LayerNorm" not in name \
            and "norm" not in module.rsplit(".", 1)[-1].lower():
        return "encoder_weights"
    return "full_precision"


def fp32_reference_bytes(model_dir: Path) -> tuple[int, int]:
    """(parameters, bytes at fp32) of the uncompressed base model described by config.json,
    counted on the meta device (no memory, no weights); tied parameters count once."""
    from .checkpoint import build_base

    with torch.device("meta"):
        base = build_base(model_dir)
    n = sum(p.numel() for p in base.parameters())
    return n, 4 * n


def size_report(path: str | Path, in_memory: bool = True) -> dict[str, Any]:
    """On-disk and in-memory size of a packed, compressed or plain model directory, with a
    breakdown. ``ratio_vs_fp32`` = bytes of the same architecture stored as fp32 safetensors
    (parameters × 4) over this model's tensor file."""
    from .checkpoint import WEIGHTS_NAME

    p = Path(path)
    d = packed_dir(p)
    if d is not None:
        tensor_file, kind = d / PACKED_WEIGHTS, "packed"
        packed_names = set(read_packed_meta(d).get("packed", {}))
    else:
        cands = [c / f for c in (p, p / "model") for f in (WEIGHTS_NAME, "model.safetensors")]
        tensor_file = next((c for c in cands if c.is_file()), None)
        if tensor_file is None:
            raise ModelError(f"{p}: no model tensors found (a packed, compressed or Hugging Face safetensors dir)")
        d, packed_names = tensor_file.parent, set()
        kind = "compressed" if tensor_file.name == WEIGHTS_NAME else "huggingface"
    header = _safetensors_header(tensor_file)
    breakdown: dict[str, int] = {"embeddings": 0, "encoder_weights": 0, "scales": 0, "full_precision": 0}
    for name, v in header.items():
        a, b = v["data_offsets"]
        breakdown[_category(name, packed_names)] += b - a
    n_params, fp32 = fp32_reference_bytes(d)
    disk = tensor_file.stat().st_size
    report: dict[str, Any] = {
        "path": str(d), "kind": kind, "file": tensor_file.name,
        "disk_bytes": disk, "disk_mb": round(disk / 1e6, 3), "disk_mib": round(disk / 2**20, 3),
        "fp32_parameters": n_params, "fp32_bytes": fp32, "fp32_mb": round(fp32 / 1e6, 3),
        "ratio_vs_fp32": round(fp32 / disk, 3),
        "breakdown_mb": {k: round(v / 1e6, 3) for k, v in breakdown.items()},
        "breakdown_mib": {k: round(v / 2**20, 3) for k, v in breakdown.items()},
        "counts": "tensor file only (config/tokenizer JSON excluded); fp32 = the base architecture's parameters × 4 "
                  "bytes, tied parameters once",
    }
    if in_memory:
        if kind == "packed":
            model = load_packed(d)
        else:
            from .checkpoint import load_model

            model = load_model(d)
        mem = module_bytes(model)
        report.update(memory_bytes=mem, memory_mb=round(mem / 1e6, 3), memory_mib=round(mem / 2**20, 3),
                      memory_ratio_vs_fp32=round(fp32 / mem, 3))
    return report


def module_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (each storage once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


# ------------------------------------------------------------------------------------------------
# From a directory (the CLI), and ONNX


def export_model(model: str | Path, output_dir: str | Path, *, dtype: str = "float32", overwrite: bool = False,
                 onnx: bool = False, onnx_seq_len: int = 128) -> dict[str, Any]:
    """``kronbit export``: a run or compressed-model directory → a packed directory."""
    from .checkpoint import compressed_dir, load_compressed
    from .models import load_tokenizer

    _dtype(dtype)
    src = compressed_dir(model)
    if src is None:
        raise ModelError(f"{model}: not a kronbit compressed model or run directory (no kronbit_model.safetensors); "
                         "a plain full-precision checkpoint has nothing to pack")
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ModelError(f"{out} exists and is not empty; pass --overwrite to replace it")
    if out.resolve() == src.resolve():
        raise ModelError("the output directory is the source model directory; choose another")
    m = load_compressed(src)
    meta = {k: v for k, v in read_meta(src).items() if k not in ("format", "format_version", "transforms")}
    tokenizer = load_tokenizer(src)
    export_packed(m, out, tokenizer=tokenizer, dtype=dtype, meta={**meta, "source": str(src)})
    result: dict[str, Any] = {"output_dir": str(out), "dtype": dtype}
    if onnx:
        result["onnx"] = export_onnx(out, out / "model.onnx", seq_len=onnx_seq_len)
    report = size_report(out, in_memory=False)
    result.update({k: report[k] for k in ("disk_mb", "fp32_mb", "ratio_vs_fp32")})
    return result


def export_onnx(model_dir: str | Path, path: str | Path, seq_len: int = 128, check: bool = True) -> dict[str, Any]:
    """Export a packed model to ONNX (the weights stay packed in the graph: unpacking is shifts,
    masks and a multiply) and, if onnxruntime is installed, compare it with torch on one batch."""
    from .models import load_tokenizer

    d = packed_dir(model_dir)
    if d is None:
        raise ModelError(f"{model_dir}: not a packed model directory; run kronbit export first")
    model = load_packed(d, mode="packed")
    tok = load_tokenizer(d)
    batch = tok(["kronbit exports this sentence to onnx"] * 2, padding="max_length", truncation=True,
                max_length=seq_len, return_tensors="pt")
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch]
    inputs = tuple(batch[k] for k in names)

    class _Wrapper(nn.Module):  # positional inputs → logits tensor
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *xs):
            out = self.inner(**dict(zip(names, xs)))
            return out.logits if hasattr(out, "logits") else out[0]

    wrapper = _Wrapper(model).eval()
    path = Path(path)
    from .io import atomic_path

    with atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(wrapper, inputs, str(tmp), input_names=names, output_names=["logits"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}},
                          opset_version=18, dynamo=False)
    result: dict[str, Any] = {"path": str(path), "bytes": path.stat().st_size}
    if check:
        try:
            import onnxruntime as ort
        except ImportError:
            result["checked"] = "onnxruntime not installed"
            return result
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {n: x.numpy() for n, x in zip(names, inputs)})[0]
        with torch.no_grad():
            want = wrapper(*inputs).numpy()
        result["max_abs_diff_vs_torch"] = float(abs(got - want).max())
    return result
