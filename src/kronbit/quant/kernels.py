"""Bit-level CPU kernels for packed layers: the binary GEMM (W1A1) and the 2-bit x int8 GEMM (W2A8).

What they compute (C++ in ``csrc/``, exact integer accumulation, float32 epilogue):

  * W1A1 (``bwn`` weights, 1-bit ``elastic`` activations): the fake-quant layer computes
    ``linear(α·sign(x - β), s_o·c_o) + b``. The kernel packs the sign bits of the float32 difference
    x - β (bit 1 = +1; +0 → +1, -0 → -1, as ``copysign``) 64 to a word per token, and
    D = Σ_k a_k·c_k = K - 2·popcount(A XOR W) exactly in int32; y = fl(α·s_o)·D + b.
    AND-popcount ({0, 1} activations: BiT's unsigned binarizer, ``ElasticUnsignedAct``, on the FFN
    down-projection's input, bit = (x - β) / α > 0.5): D = 2·popcount(A AND W) - popcount(A)
    (``binary_gemm(mode="and")``; a layer whose input binarizer is unsigned plans ``Kernel.unsigned``).
  * Binary attention (``attention_scores``, ``attention_values``): per (batch, head), Q·Kᵀ of ±a
    operands as XOR-popcount over the head dimension, P·V as AND-popcount over the keys with P's
    bits p / α > 0.5; the same tile kernels on the words layout (avx512, else portable).
  * W2A8 (``twn`` or any 2-bit codes in [-2, 1], 8-bit symmetric ``minmax`` activations): the
    activation scale s = clamp_min(clip_ratio·max|x| / 127, EPS) over the whole tensor, codes
    q = clamp(round(x / s), ±127) (round half to even), as ``MinMaxAct``; D = Σ_k q_k·c_k in int32;
    y = fl(s·α_o)·D + b.

Both equal the fake-quant output up to float32 rounding: the fake-quant product sums K float
terms (±fl(α·s_o), or fl(fl(q·s)·α_o)) in the BLAS's order with a rounding at every partial sum,
the kernel rounds once (the integer D is exact). Relative differences per layer are ~1e-7; a
downstream binarizer can flip a sign where a pre-activation sits within that distance of its
threshold, which is where whole-model outputs can differ more. Whole models with trained (non-zero)
biases agree within 1e-5 relative on the logits (tests/quant/test_kernels.py). Where they do not:
a random-init model whose biases are all zero, where D = 0 happens often and gives exactly 0 on
the kernel against the BLAS's ±1e-9, so the next binarizer's sign flips (the 0.1.0 fixture in
tests/fixtures, hidden size 16: 2e-3 relative) — exact arithmetic against rounded, not an error.

Code paths, chosen at run time from the CPU's flags (every path is compiled with function-level
target attributes, so the built library runs on any x86-64 machine; non-x86 gets ``portable``):
binary: avx512 (VPOPCNTDQ) > avx2 (nibble lookup tables) > portable; ternary: avx512 (VNNI) >
avxvnni > avx2 (VPMADDUBSW) > portable. ``KRONBIT_KERNEL_PATH=portable|avx2|avxvnni|avx512``
forces one (an error if this CPU lacks it), ``off`` disables the kernels; ``path=`` arguments do the
same per call. All paths produce bit-identical outputs.

Across layers (``quant.fused``): a W1A1 FFN's up-projection can emit its output already through
GELU and the down-projection's binarizer, as packed bits (``binary_linear_bits``; the consumer
takes them through ``binary_linear_words``), exactly the bits the unfused path packs.

Weights are re-laid out once at load (the same bits, permuted, plus padding to whole blocks) and
the layer keeps only that copy; ``unprepare`` restores the file's layout for saving.
"""

from __future__ import annotations

import operator
import os
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..core.errors import ConfigError
from . import pack
from .build import load_extension
from .quantizers import ElasticAct, ElasticUnsignedAct, MinMaxAct

PATHS = {"portable": 0, "avx2": 1, "avxvnni": 2, "avx512": 3}
PATH_NAMES = {v: k for k, v in PATHS.items()}
ENV_PATH = "KRONBIT_KERNEL_PATH"
BIT_SOURCES = ("bitkernels.cpp", "binary_gemm.cpp", "ternary_gemm.cpp")


def extension():
    return load_extension("kronbit_bitkernels", BIT_SOURCES)


def available_paths(kind: str = "binary") -> list[str]:
    """The code paths this CPU runs for ``kind`` ("binary" or "ternary"); [] without the extension."""
    ext = extension()
    if ext is None:
        return []
    key = (id(ext), kind)
    if key not in _AVAILABLE:  # asked on every kernel call: the CPU's answer does not change
        _AVAILABLE[key] = [PATH_NAMES[p] for p in ext.available(kind == "binary")]
    return list(_AVAILABLE[key])


_AVAILABLE: dict[tuple[int, str], list[str]] = {}


def resolve_path(path: str | None, kind: str) -> int | None:
    """The path to use: the argument, else ``KRONBIT_KERNEL_PATH``, else the CPU's best (-1 lets the
    library choose). None = kernels off."""
    name = path if path is not None else os.environ.get(ENV_PATH, "").strip().lower() or None
    if name == "off":
        return None
    if name is None or name == "auto":
        return -1
    if name not in PATHS:
        raise ConfigError(f"{ENV_PATH}/path={name!r}; choose one of auto, off, {', '.join(PATHS)}")
    if name not in available_paths(kind):
        raise ConfigError(f"kernel path {name!r} is not available on this CPU for the {kind} kernel "
                           f"(available: {', '.join(available_paths(kind))})")
    return PATHS[name]


def best_path(kind: str) -> str:
    return available_paths(kind)[-1]


# ------------------------------------------------------------------------------------------------
# Weight layouts (see csrc/bitkernels.h). Inputs are the file's packed rows: (out, ceil(in/8))
# uint8 for 1 bit, (out, ceil(in/4)) uint8 for 2 bits.


def _words(k: int) -> int:
    return -(-k // 64)


def binary_words(packed: torch.Tensor, k: int) -> torch.Tensor:
    """(out, bytes) → [out/8][KW][8] int64: 8 rows interleaved per 64-bit word (portable, avx512)."""
    if sys.byteorder != "little":
        raise RuntimeError("the binary kernels assume a little-endian machine")
    o, b = packed.shape
    kw, ob = _words(k), -(-o // 8)
    p = F.pad(packed, (0, kw * 8 - b, 0, ob * 8 - o))
    return p.view(ob, 8, kw, 8).permute(0, 2, 1, 3).contiguous().view(torch.int64).view(ob, kw, 8)


def binary_words_inverse(w: torch.Tensor, o: int, k: int) -> torch.Tensor:
    ob, kw, _ = w.shape
    p = w.contiguous().view(torch.uint8).view(ob, kw, 8, 8).permute(0, 2, 1, 3).reshape(ob * 8, kw * 8)
    return p[:o, : pack.packed_cols(k, 1)].contiguous()


def binary_nibbles(packed: torch.Tensor, k: int) -> torch.Tensor:
    """(out, bytes) → [out/64][16·KW][32] uint8: byte j of group g = nibble g of row 64b+j (low
    4 bits) and of row 64b+32+j (high 4 bits) (avx2)."""
    o, b = packed.shape
    kw, ob = _words(k), -(-o // 64)
    g = 16 * kw
    p = F.pad(packed, (0, kw * 8 - b, 0, ob * 64 - o))
    nib = torch.stack((p & 15, p >> 4), -1).view(ob, 2, 32, g)
    return (nib[:, 0] | (nib[:, 1] << 4)).permute(0, 2, 1).contiguous()


def binary_nibbles_inverse(w: torch.Tensor, o: int, k: int) -> torch.Tensor:
    ob, g, _ = w.shape
    nib = torch.stack((w & 15, w >> 4), 1).permute(0, 1, 3, 2).reshape(ob * 64, g)
    p = nib[:, 0::2] | (nib[:, 1::2] << 4)
    return p[:o, : pack.packed_cols(k, 1)].contiguous()


def ternary_chunks(packed: torch.Tensor, k: int) -> torch.Tensor:
    """(out, ceil(in/4)) 2-bit rows → [out/8][KP/16][32] uint8: byte 4r+i of chunk c holds, at bits
    2s..2s+1, the field (code + 2) of row 8b+r at input 16c+4s+i."""
    o = packed.shape[0]
    u = pack.unpack_fields(packed, 2, k)
    kp, ob = -(-k // 16) * 16, -(-o // 8)
    u = F.pad(u, (0, kp - k, 0, ob * 8 - o), value=2).view(ob, 8, kp // 16, 4, 4)  # (b, r, c, s, i)
    u = u.permute(0, 2, 1, 4, 3)  # (b, c, r, i, s)
    out = u[..., 0] | (u[..., 1] << 2) | (u[..., 2] << 4) | (u[..., 3] << 6)
    return out.reshape(ob, kp // 16, 32).contiguous()


def ternary_chunks_inverse(w: torch.Tensor, o: int, k: int) -> torch.Tensor:
    ob, kc, _ = w.shape
    fields = torch.stack([(w >> (2 * s)) & 3 for s in range(4)], -1).view(ob, kc, 8, 4, 4)  # (b, c, r, i, s)
    u = fields.permute(0, 2, 1, 4, 3).reshape(ob * 8, kc * 16)[:o, :k]
    return pack.pack_codes(u.to(torch.int16) - 2, 2)


# ------------------------------------------------------------------------------------------------
# Per-layer plans


_MISSING = object()


def _home(module, name: str) -> dict:
    """The dict ``module.name`` lives in: its parameters, buffers or submodules, else its __dict__."""
    d = module.__dict__
    for key in ("_parameters", "_buffers", "_modules"):
        sub = d.get(key)
        if sub is not None and name in sub:
            return sub
    return d


@dataclass(frozen=True, eq=False)
class Stamp:
    """What a cached plan was built from: each input as (the dict it was found in, its name, the
    object found there), and the version counters of the tensors among them. Checking it costs a
    dict lookup per input and reads no tensor through ``Module.__getattr__``."""

    refs: tuple
    tensors: tuple
    versions: tuple


def stamp(refs) -> Stamp | None:
    """A stamp of ``refs``, (module, attribute name) pairs, taken *before* the plan is built from
    them (a change made while it is built then shows at the next check). None when one of the
    tensors was made under torch.inference_mode: it has no version counter (and may still change in
    place there), so whatever depends on it is rebuilt on every call."""
    found, tensors = [], []
    for module, name in refs:
        d = _home(module, name)
        value = d.get(name, _MISSING)
        found.append((d, name, value))
        if isinstance(value, torch.Tensor):
            if value.is_inference():
                return None
            tensors.append(value)
    return Stamp(tuple(found), tuple(tensors), tuple(map(_VERSION, tensors)))


_VERSION = operator.attrgetter("_version")


def fresh(s: Stamp | None) -> bool:
    """Whether a plan stamped ``s`` may still be used: every input is still the same object in the
    same place (not re-assigned, deleted, set to None, swapped by ``functional_call`` or ``.to()``),
    and no tensor among them changed in place."""
    return (s is not None and all(d.get(n, _MISSING) is v for d, n, v in s.refs)
            and tuple(map(_VERSION, s.tensors)) == s.versions)


@dataclass
class Kernel:
    """How one PackedLinear runs on a kernel: kind ("binary" / "ternary"), the chosen path, and
    the layer shape. The prepared weight lives in the layer's ``packed_weight`` buffer."""

    kind: str
    path: int
    out_features: int
    in_features: int
    unsigned: bool = False  # binary with a {0, α} input binarizer (AND-popcount), not ±α (XOR)
    _cache: tuple | None = field(default=None, repr=False, compare=False)  # (stamp, operands)

    @property
    def path_name(self) -> str:
        return PATH_NAMES[self.path]

    def prepare(self, packed: torch.Tensor) -> torch.Tensor:
        if self.kind == "ternary":
            return ternary_chunks(packed, self.in_features)
        if self.path == PATHS["avx2"]:
            return binary_nibbles(packed, self.in_features)
        return binary_words(packed, self.in_features)

    def unprepare(self, w: torch.Tensor) -> torch.Tensor:
        o, k = self.out_features, self.in_features
        if self.kind == "ternary":
            return ternary_chunks_inverse(w, o, k)
        if self.path == PATHS["avx2"]:
            return binary_nibbles_inverse(w, o, k)
        return binary_words_inverse(w, o, k)

    def _operands(self, layer) -> tuple | None:
        """(input β as float32 or an empty tensor, α as float32, bias) of a binary layer, or None
        before its input binarizer is initialised from data; kept until one of them changes, so a
        call costs no device sync and no copies."""
        cached = self._cache
        if cached is None or not fresh(cached[0]):
            q = layer.input_quantizer
            st = stamp(((layer, "input_quantizer"), (q, "alpha"), (q, "beta"), (q, "initialized"), (layer, "bias")))
            ops = None
            if bool(q.initialized):
                beta = torch.zeros(0) if q.beta is None else q.beta.detach().float().contiguous().reshape(-1)
                ops = (beta, q.alpha.detach().float(), None if layer.bias is None else layer.bias.detach())
            cached = self._cache = (st, ops)
        return cached[1]

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor | None:
        """The layer's output from its raw input (input quantizer included), or None when this
        call must take the ordinary path (an elastic binarizer not yet initialised from data)."""
        ext = extension()
        if self.kind == "binary":
            ops = self._operands(layer)
            if ops is None:
                return None
            beta, alpha, bias = ops
            w, s = layer.packed_weight, layer.weight_scale
            if x.dtype == torch.int64:  # the input's bits, packed by the layer before (quant.fused)
                y = ext.binary_linear_words(x.reshape(-1, x.shape[-1]), self.in_features, alpha, w, self.out_features,
                                            s, bias, self.path, int(self.unsigned))
                return y.view(*x.shape[:-1], self.out_features)
            flat = x.reshape(-1, self.in_features)
            if flat.dtype != torch.float32 or not flat.is_contiguous():
                flat = flat.float().contiguous()
            if self.unsigned:
                y = ext.binary_linear_unsigned(flat, beta, alpha, w, self.out_features, s, bias, self.path)
            else:
                y = ext.binary_linear(flat, beta, alpha, w, self.out_features, s, bias, self.path)
            return y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        q = layer.input_quantizer
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != torch.float32 or not flat.is_contiguous():
            flat = flat.float().contiguous()
        bias = None if layer.bias is None else layer.bias.detach()
        cv = -1.0 if q.clip_val is None else float(q.clip_val)
        y = ext.ternary_linear(flat, float(q.clip_ratio), cv, layer.packed_weight, self.out_features,
                               layer.weight_scale, bias, self.path)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)


def kind_of(layer) -> str | None:
    """"binary" / "ternary" when a PackedLinear can run on a kernel, else None."""
    q = getattr(layer, "input_quantizer", None)
    if getattr(layer, "weight_offset", None) is not None or layer.in_features >= 65536:
        return None
    if layer.bits == 1 and type(q) in (ElasticAct, ElasticUnsignedAct) and q.bits == 1:
        return "binary"
    if layer.bits == 2 and type(q) is MinMaxAct and q.bits == 8 and q.symmetric:
        return "ternary"
    return None


def plan(layer, path: str | None = None) -> Kernel | None:
    """The kernel for ``layer`` (a PackedLinear), or None if it has none here (layer kind, kernels
    off, or no extension)."""
    kind = kind_of(layer)
    if kind is None or extension() is None:  # no compiler: the torch path (build logged one warning)
        return None
    p = resolve_path(path, kind)
    if p is None:
        return None
    if p < 0:
        p = PATHS[best_path(kind)]
    unsigned = type(getattr(layer, "input_quantizer", None)) is ElasticUnsignedAct
    return Kernel(kind, p, layer.out_features, layer.in_features, unsigned)


# ------------------------------------------------------------------------------------------------
# Building blocks (tests, benchmarks, binary attention)


def pack_signs(x: torch.Tensor, beta: torch.Tensor, path: str | None = None) -> torch.Tensor:
    """Sign bits of x - β as (tokens, ceil(K/64)) int64 words (bit 1 = +1)."""
    p = resolve_path(path, "binary")
    return extension().pack_signs(x.float().contiguous(), beta.float().contiguous().reshape(-1), -1 if p is None else p)


def pack_unsigned(x: torch.Tensor, alpha: float, beta: torch.Tensor | None = None,
                  path: str | None = None) -> torch.Tensor:
    """Bits of round(clamp((x - β) / α, 0, 1)) (``ElasticUnsignedAct`` at 1 bit: 1 iff (x - β) / α > 0.5;
    no β: no offset)."""
    p = resolve_path(path, "binary")
    b = torch.zeros(0) if beta is None else beta.detach().float().contiguous().reshape(-1)
    return extension().pack_unsigned(x.float().contiguous(), b, float(alpha), -1 if p is None else p)


_NO_SCALES = torch.zeros(0)


def binary_gemm(act: torch.Tensor, k: int, weights: torch.Tensor, out_features: int, v: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, mode: str = "xor", path: str | None = None) -> torch.Tensor:
    """D (int32, when ``v`` is None) or v·D + bias (float32) for packed activation words and
    weights prepared for ``path`` (``prepare_binary``)."""
    p = resolve_path(path, "binary")
    p = -1 if p is None else p
    ret_d = v is None
    v = _NO_SCALES if v is None else v.float().contiguous()  # D alone: the kernel reads no scales
    return extension().binary_gemm(act, k, {"xor": 0, "and": 1}[mode], weights, out_features, v, bias, p, ret_d)


def attention_scores(q: torch.Tensor, k: torch.Tensor, c: float, path: str | None = None) -> torch.Tensor | None:
    """c · sign(Q)·sign(K)ᵀ per head for q (B, H, S, d) and k (B, H_kv, S_kv, d) float32 whose every
    element is ±(its first element's magnitude): the integer dot products exact, one rounding by c.
    None when either is not binary. Words-layout paths only (avx512, else portable)."""
    p = resolve_path(path, "binary")
    out = extension().binary_attention_scores(_heads(q), _heads(k), float(c), -1 if p is None else p)
    return None if out.numel() == 0 and q.numel() else out


def attention_values(probs: torch.Tensor, alpha: float, v: torch.Tensor, c: float,
                     path: str | None = None) -> torch.Tensor | None:
    """c · bits(P)·sign(V) per head: P's bits are p / α > 0.5 (``ElasticUnsignedAct`` at 1 bit, no
    offset), v (B, H_kv, S_kv, d) ±a; None when v is not binary."""
    p = resolve_path(path, "binary")
    out = extension().binary_attention_values(probs.float().contiguous(), float(alpha), _heads(v), float(c),
                                              -1 if p is None else p)
    return None if out.numel() == 0 and probs.numel() else out


def attention_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None, c: float,
                    alpha: float, c_out: float, path: str | None = None) -> torch.Tensor | None:
    """The whole binary attention, c_out · bits(softmax(c · sign(Q)·sign(K)ᵀ) / α > 0.5)·sign(V), with
    each row's probability threshold found from the counts of its integer scores (no float scores,
    no softmax). Operands: float32 ±a (c and c_out carry the product of the scales with them), or
    uint8 sign bytes (1 = +, 0 = -; c and c_out carry the scales). ``keep``: (batch, key_len)
    bool/uint8 of the real keys, or None for all. None when a float operand is not binary or a
    batch row has no real key (the float path then runs)."""
    p = resolve_path(path, "binary")
    keep = torch.zeros(0, dtype=torch.uint8) if keep is None else keep.to(torch.uint8).contiguous()
    q, k, v = (_heads(t) if q.dtype != torch.uint8 else _sign_heads(t) for t in (q, k, v))
    out = extension().binary_attention_fused(q, k, v, keep, float(c), float(alpha), float(c_out), -1 if p is None else p)
    return None if out.numel() == 0 and q.numel() else out


def _sign_heads(t: torch.Tensor) -> torch.Tensor:
    if t.dtype != torch.uint8:
        raise TypeError(f"sign-byte attention operands must all be uint8, got {t.dtype}")
    return t if t.size(-1) <= 1 or t.stride(-1) == 1 else t.contiguous()


def _heads(t: torch.Tensor) -> torch.Tensor:
    """A (batch, heads, seq, head_dim) float32 operand as the attention kernels read it: any strides
    (the projections' transposed views are read in place) as long as head_dim is contiguous."""
    t = t.float()
    return t if t.size(-1) <= 1 or t.stride(-1) == 1 else t.contiguous()


def prepare_binary(packed: torch.Tensor, k: int, path: str) -> torch.Tensor:
    return binary_nibbles(packed, k) if path == "avx2" else binary_words(packed, k)


def quantize_int8(x: torch.Tensor, clip_ratio: float = 1.0, clip_val: float | None = None, path: str | None = None):
    """(q (T, K rounded up to 16) int8, Σq per token int32, scale) as ``MinMaxAct(8)`` computes them."""
    p = resolve_path(path, "ternary")
    return extension().quantize_int8(x.float().contiguous(), float(clip_ratio), -1.0 if clip_val is None else clip_val,
                                     -1 if p is None else p)


def ternary_gemm(q: torch.Tensor, sq: torch.Tensor, weights: torch.Tensor, out_features: int,
                 v: torch.Tensor | None = None, bias: torch.Tensor | None = None, path: str | None = None):
    """D = Σ q·c (int32, when ``v`` is None) or v·D + bias, weights from ``ternary_chunks``."""
    p = resolve_path(path, "ternary")
    ret_d = v is None
    v = _NO_SCALES if v is None else v.float().contiguous()  # D alone: the kernel reads no scales
    return extension().ternary_gemm(q, sq, weights, out_features, v, bias, -1 if p is None else p, ret_d)
