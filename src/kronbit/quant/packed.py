"""Packed modules: the inference form of ``QuantLinear`` / ``QuantEmbedding``.

A packed module holds its weight as packed integer codes (``quant.pack``: 1-bit 8 per byte,
2-bit 4 per byte, 4-bit 2 per byte, 8-bit as int8) plus the scale (and offset) that turn codes into
values — never the latent full-precision weight. Activation quantizers are kept as they are (their
learned α/β/step sizes are part of the model).

Forward of ``PackedLinear``, by case:
  * ``mode="packed"`` with a bit-level kernel (``quant.kernels``; a packed layer selects its
    kernel itself when its tensors are loaded, so ``load_packed`` runs on them): W1A1 layers (BWN
    weights, elastic binary activations) run the XOR-popcount GEMM and W2A8 layers (2-bit weights,
    8-bit symmetric min-max activations) the 2-bit x int8 GEMM, at every batch size: exact integer
    accumulation, one float32 rounding for the scales (relative differences to the fake-quant
    output ~1e-7, from the BLAS's float summation). The layer then holds its weight in the
    kernel's layout only (``state_dict`` and ``codes()`` give the file's layout back).
  * ``mode="packed"`` and at most ``lut_max_tokens`` tokens and ≤ 4 bits: the lookup-table
    matmul straight from the bit-planes (``pack.lut_matmul``); the weight is never expanded.
    Equal to the fake-quant output up to float summation order (a different order of the same
    additions: relative differences ~1e-6).
  * ``compute_dtype="bfloat16"`` (or inside a CPU bf16 autocast) with more tokens: the codes
    are unpacked straight into bfloat16 (one table lookup per byte; ±1, {-1, 0, 1} and every
    code up to 8 bits are exact in bf16), multiplied with the bf16-rounded input on the CPU's
    bf16 matrix units, and the fp32 scales are applied to the result. Not exact: the input and
    the product are rounded to bf16 (about 3 significant digits), as under bf16 autocast.
  * otherwise (many tokens, 8-bit weights, or ``mode="dequantized"``): codes · scale (+ offset)
    as a float matrix, then the same matmul call QuantLinear makes. With fp32 scales this is the
    fake-quant output *bit for bit*, since the weight is the same tensor computed by the same
    expression. ``mode="dequantized"`` computes it once and keeps it (fast, fp32-sized memory);
    ``mode="packed"`` recomputes it per call, which a large batch amortises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.allocator import keep_freed_memory
from ..core.errors import ModelError
from ..kron.layers import kron_linear
from . import fused, kernels, pack
from .attention import wire_binary_attention_, wire_sign_bytes_
from .lean_layer import wire_lean_layers_
from .layers import FULL, QuantEmbedding, QuantLinear

MODES = ("packed", "dequantized")
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LUT_MAX_TOKENS = 8  # above this a dense matmul on the unpacked weight is faster here


class _PackedWeight(nn.Module):
    """Buffers ``packed_weight`` (uint8 / int8), ``weight_scale`` and optional ``weight_offset``."""

    bits: int
    rows: int
    cols: int

    def _init_packed(self, bits: int, rows: int, cols: int, scale_shape: tuple[int, ...], has_offset: bool,
                     dtype: torch.dtype = torch.float32) -> None:
        self.bits, self.rows, self.cols = bits, rows, cols
        pdtype = torch.int8 if bits == 8 else torch.uint8
        self.register_buffer("packed_weight", torch.zeros(rows, pack.packed_cols(cols, bits), dtype=pdtype))
        self.register_buffer("weight_scale", torch.ones(scale_shape, dtype=dtype))
        self.register_buffer("weight_offset", torch.zeros(scale_shape, dtype=dtype) if has_offset else None)

    def _set_codes(self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> None:
        self.packed_weight = pack.pack_codes(codes, self.bits)
        self.weight_scale = scale.detach().float().clone()
        self.weight_offset = None if offset is None else offset.detach().float().clone()

    def standard_packed(self) -> torch.Tensor:
        """The packed codes in the file's layout (the buffer may hold a kernel's layout)."""
        k = getattr(self, "kernel", None)
        return self.packed_weight if k is None else k.unprepare(self.packed_weight)

    def codes(self) -> torch.Tensor:
        return pack.unpack_codes(self.standard_packed(), self.bits, self.cols)

    def dequantized_weight(self) -> torch.Tensor:
        """codes · scale (+ offset) in float32 — the expression the quantizers use, so with fp32
        scales it equals the fake-quant weight exactly."""
        w = self.codes().float() * self.weight_scale.float()
        return w if self.weight_offset is None else w + self.weight_offset.float()

    def weight_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed_weight, self.weight_scale, self.weight_offset)
                   if t is not None)


class PackedLinear(_PackedWeight):
    def __init__(self, in_features: int, out_features: int, bits: int, *, bias: bool = True,
                 fan_in_fan_out: bool = False, per_row: bool = True, has_offset: bool = False,
                 mode: str = "packed", compute_dtype: str = "float32"):
        super().__init__()
        if mode not in MODES:
            raise ModelError(f"mode={mode!r}; choose one of {', '.join(MODES)}")
        if compute_dtype not in COMPUTE_DTYPES:
            raise ModelError(f"compute_dtype={compute_dtype!r}; choose one of {', '.join(COMPUTE_DTYPES)}")
        self.compute_dtype = compute_dtype
        self.in_features, self.out_features = in_features, out_features
        self.fan_in_fan_out, self.mode = fan_in_fan_out, mode
        self.lut_max_tokens = LUT_MAX_TOKENS
        self._init_packed(bits, out_features, in_features, (out_features, 1) if per_row else (), has_offset)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.register_module("input_quantizer", None)
        self.register_module("output_quantizer", None)
        self._planes: torch.Tensor | None = None
        self._dense: torch.Tensor | None = None
        self.kernel: kernels.Kernel | None = None
        self.fused_next: fused.BitsFusion | fused.WorkspaceFusion | None = None  # emit the next layer's input bits (quant.fused)
        self.sign_output: fused.SignOutput | None = None  # the output binarizer in the kernel's epilogue

    @classmethod
    def from_quant(cls, q: QuantLinear, mode: str = "packed") -> "PackedLinear":
        """Pack a trained ``QuantLinear`` (its activation quantizers move over as they are)."""
        if q.w_bits >= FULL:
            raise ModelError("PackedLinear: the layer's weight is full precision (w_bits=32); nothing to pack")
        codes, scale, offset = q.quantized_weight()
        m = cls(q.in_features, q.out_features, q.w_bits, bias=q.bias is not None, fan_in_fan_out=q.fan_in_fan_out,
                per_row=scale.dim() > 0, has_offset=offset is not None, mode=mode)
        m._set_codes(codes, scale, offset)
        if q.bias is not None:
            m.bias = nn.Parameter(q.bias.detach().clone())
        m.input_quantizer, m.output_quantizer = q.input_quantizer, q.output_quantizer
        return m

    @classmethod
    def shell_of(cls, q: QuantLinear, bits: int, per_row: bool, has_offset: bool, mode: str,
                 compute_dtype: str = "float32") -> "PackedLinear":
        """An empty PackedLinear shaped like ``q`` (its tensors come from a checkpoint next)."""
        m = cls(q.in_features, q.out_features, bits, bias=q.bias is not None, fan_in_fan_out=q.fan_in_fan_out,
                per_row=per_row, has_offset=has_offset, mode=mode, compute_dtype=compute_dtype)
        m.input_quantizer, m.output_quantizer = q.input_quantizer, q.output_quantizer
        return m

    def use_kernel(self, path: str | None = None) -> bool:
        """Run this layer on its bit-level kernel if it has one here (see ``kernels.plan``); the
        weight buffer is re-laid out in place (no second copy). Returns whether it does; a layer with
        no kernel for ``path`` (e.g. "off") leaves the one it had and goes back to the file's layout."""
        k = kernels.plan(self, path)
        if self.packed_weight.is_meta:
            return False
        if k is None:
            self.drop_kernel()
            return False
        std = self.standard_packed()
        self.kernel = None
        self.packed_weight = k.prepare(std)
        self.kernel = k
        return True

    def drop_kernel(self) -> None:
        if self.kernel is not None:
            self.packed_weight = self.standard_packed()
            self.kernel = None

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.kernel is not None:  # checkpoints always hold the file's layout
            destination[prefix + "packed_weight"] = self.standard_packed()

    def _load_from_state_dict(self, *args, **kwargs):
        path = None if self.kernel is None else self.kernel.path_name
        self.drop_kernel()  # the incoming tensor is in the file's layout
        super()._load_from_state_dict(*args, **kwargs)
        self._planes = self._dense = None  # derived caches belong to the old tensors
        if self.mode == "packed":  # loaded (load_packed): onto the bit-level kernel, if it has one
            self.use_kernel(path)

    def _matmul_dense(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.fan_in_fan_out:  # QuantLinear's Conv1D arithmetic, for bit-exact equality
            bias = self.bias if self.bias is not None else w.new_zeros(self.out_features)
            y = torch.addmm(bias, x.reshape(-1, self.in_features), w.t().contiguous())
            return y.view(*x.shape[:-1], self.out_features)
        return F.linear(x, w, self.bias)

    def _finish(self, x: torch.Tensor, flat: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
        """Σ c·x (tokens, out) → y = scale·Σ c·x (+ offset·Σx) + bias, shaped like the input."""
        y = cx * (self.weight_scale.float().reshape(1, -1) if self.weight_scale.dim() else self.weight_scale.float())
        if self.weight_offset is not None:
            y = y + flat.float().sum(-1, keepdim=True) * self.weight_offset.float().reshape(1, -1)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def _matmul_lut(self, x: torch.Tensor) -> torch.Tensor:
        if self._planes is None:
            self._planes = pack.to_planes(self.standard_packed(), self.bits, self.in_features)
        flat = x.reshape(-1, self.in_features).float()
        s = pack.lut_matmul(flat, self._planes, self.in_features)  # Σ u·x
        a, z = pack.signed_affine(self.bits)
        return self._finish(x, flat, a * s - z * flat.sum(-1, keepdim=True))

    def _matmul_bf16(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        codes = pack.unpack_codes_as(self.standard_packed(), self.bits, self.in_features, torch.bfloat16)
        with torch.autocast("cpu", enabled=False):
            cx = F.linear(flat.to(torch.bfloat16), codes).float()
        return self._finish(x, flat, cx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None and self.mode == "packed" and not (torch.jit.is_tracing()
                                                                        or torch.onnx.is_in_onnx_export()):
            if self.fused_next is not None:
                bits = self.fused_next.forward(self, x)
                if bits is not None:
                    return bits
            if self.sign_output is not None:
                y = self.sign_output.forward(self, x)
                if y is not None:
                    return y
            y = self.kernel.forward(self, x)  # the input quantizer is part of the kernel
            if y is not None:
                return y if self.output_quantizer is None else self.output_quantizer(y)
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        tokens = x.numel() // self.in_features
        if self.mode == "dequantized":
            if self._dense is None:
                self._dense = self.dequantized_weight()
            y = self._matmul_dense(x, self._dense)
        elif torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            y = self._matmul_dense(x, self.dequantized_weight().to(x.dtype))
        elif self.bits <= 4 and tokens <= self.lut_max_tokens:
            y = self._matmul_lut(x)
        elif self.compute_dtype == "bfloat16" or (torch.is_autocast_enabled("cpu")
                                                  and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            y = self._matmul_bf16(x)
        else:
            y = self._matmul_dense(x, self.dequantized_weight().to(x.dtype))
        if self.output_quantizer is not None:
            y = self.output_quantizer(y)
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"bias={self.bias is not None}, mode={self.mode}, compute_dtype={self.compute_dtype}"
                + (", conv1d" if self.fan_in_fan_out else "")
                + ("" if self.kernel is None else f", kernel={self.kernel.kind}/{self.kernel.path_name}"))


class PackedEmbedding(_PackedWeight):
    """Packed word embeddings: a lookup unpacks only the looked-up rows (per-row scales)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int, padding_idx: int | None = None,
                 has_offset: bool = False):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self._init_packed(bits, num_embeddings, embedding_dim, (num_embeddings, 1), has_offset)

    @classmethod
    def from_quant(cls, q: QuantEmbedding) -> "PackedEmbedding":
        if q.w_bits >= FULL:
            raise ModelError("PackedEmbedding: the embedding is full precision (w_bits=32); nothing to pack")
        codes, scale, offset = q.quantized_weight()
        m = cls(q.num_embeddings, q.embedding_dim, q.w_bits, q.padding_idx, has_offset=offset is not None)
        m._set_codes(codes, scale.reshape(-1, 1), None if offset is None else offset.reshape(-1, 1))
        return m

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        codes = pack.unpack_codes(self.packed_weight[flat], self.bits, self.embedding_dim)
        rows = codes.float() * self.weight_scale[flat].float()
        if self.weight_offset is not None:
            rows = rows + self.weight_offset[flat].float()
        return rows.view(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, padding_idx={self.padding_idx}"


class PackedKroneckerLinear(nn.Module):
    """A quantized Kronecker layer with packed factor codes: the factors are dequantized (they are
    small) and contracted as in ``KroneckerLinear``, so outputs equal the fake-quant layer's."""

    def __init__(self, in_features: int, out_features: int, a_shape, b_shape, rank: int, bits: int, *,
                 bias: bool = True, order: str = "b_first", per_row: bool = True, has_offset: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.bits, self.order = in_features, out_features, bits, order
        self.a_shape, self.b_shape, self.rank = tuple(a_shape), tuple(b_shape), rank
        pdtype = torch.int8 if bits == 8 else torch.uint8
        for f, (m, n) in (("a", self.a_shape), ("b", self.b_shape)):
            scale_shape = (rank, 1, 1) if per_row else ()
            self.register_buffer(f"packed_{f}", torch.zeros(rank, m, pack.packed_cols(n, bits), dtype=pdtype))
            self.register_buffer(f"{f}_scale", torch.ones(scale_shape))
            self.register_buffer(f"{f}_offset", torch.zeros(scale_shape) if has_offset else None)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.register_module("input_quantizer", None)

    @classmethod
    def from_quant(cls, q) -> "PackedKroneckerLinear":
        codes = q.factor_codes()
        (_, sa, oa) = codes["a"]
        m = cls(q.in_features, q.out_features, q.a_shape, q.b_shape, q.rank, q.w_bits, bias=q.bias is not None,
                order=q.order, per_row=sa.dim() > 0, has_offset=oa is not None)
        for f, (c, s, o) in codes.items():
            setattr(m, f"packed_{f}", pack.pack_codes(c, q.w_bits))
            setattr(m, f"{f}_scale", s.detach().float().clone())
            setattr(m, f"{f}_offset", None if o is None else o.detach().float().clone())
        if q.bias is not None:
            m.bias = nn.Parameter(q.bias.detach().clone())
        m.input_quantizer = q.input_quantizer
        return m

    @classmethod
    def shell_of(cls, q, bits: int, per_row: bool, has_offset: bool) -> "PackedKroneckerLinear":
        m = cls(q.in_features, q.out_features, q.a_shape, q.b_shape, q.rank, bits, bias=q.bias is not None,
                order=q.order, per_row=per_row, has_offset=has_offset)
        m.input_quantizer = q.input_quantizer
        return m

    def factor(self, f: str) -> torch.Tensor:
        n = (self.a_shape if f == "a" else self.b_shape)[1]
        w = pack.unpack_codes(getattr(self, f"packed_{f}"), self.bits, n).float() * getattr(self, f"{f}_scale").float()
        offset = getattr(self, f"{f}_offset")
        return w if offset is None else w + offset.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return kron_linear(x, self.factor("a").to(x.dtype), self.factor("b").to(x.dtype), self.bias, self.order)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, A={self.a_shape}, " \
               f"B={self.b_shape}, rank={self.rank}, bits={self.bits}"


def select_kernels_(model: nn.Module, path: str | None = None) -> dict[str, str]:
    """Put every eligible PackedLinear of ``model`` (mode="packed") on its kernel, in place; returns
    name → path. ``path`` forces one (see ``kernels.resolve_path``); ``load_packed`` needs no call
    (a loaded layer selects its kernel), this re-selects, e.g. to force a path; ``"off"`` takes
    every layer off its kernel (and undoes the FFN fusions that needed one)."""
    chosen = {}
    for name, m in model.named_modules():
        if isinstance(m, PackedLinear) and m.mode == "packed" and m.use_kernel(path):
            chosen[name] = m.kernel.path_name
    after_load(model)
    return chosen


def kernel_paths(model: nn.Module) -> dict[str, int]:
    """How many PackedLinear layers run on each path ("binary/avx512", ..., "torch" off a kernel):
    what a benchmark records beside its times, since the path decides them."""
    out: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, PackedLinear):
            key = "torch" if m.kernel is None else f"{m.kernel.kind}/{m.kernel.path_name}"
            out[key] = out.get(key, 0) + 1
    return out


def after_load(model: nn.Module) -> int:
    """What a loaded packed model needs before its first forward (the quant method's ``after_load``):
    the FFN fusions (returns how many pairs) and, once any layer runs on a bit-level kernel, glibc
    told to keep freed memory. A kernel's output is a fresh tensor every call, and above glibc's
    mmap threshold each one is mapped and page-faulted in anew: at 32 x 128 tokens that cost more
    than the binary GEMM itself (``core.allocator``; ``KRONBIT_MALLOC=system`` opts out)."""
    pairs = fused.fuse_ffn_(model)
    fused.wire_sign_outputs_(model)  # Q, K, V binarizers in the GEMM epilogue (BiT's true W1A1)
    binary = any(isinstance(m, PackedLinear) and m.kernel is not None and m.kernel.kind == "binary"
                 for m in model.modules())
    wire_binary_attention_(model, on=binary)  # both attention matmuls on the binary kernel too
    wire_sign_bytes_(model)  # ... reading Q, K, V as sign bytes straight from their projections
    wire_lean_layers_(model)  # ... and such layers' forward without the Hugging Face plumbing
    if any(isinstance(m, PackedLinear) and m.kernel is not None for m in model.modules()):
        keep_freed_memory()
    return pairs

