"""Bit packing of integer weight codes, and the low-bit matmul that runs from packed bits.

Storage format (little-endian within a byte, packed along the *last* dimension, each row padded
to whole bytes so rows stay independent — an embedding lookup unpacks only the rows it needs):

  * 1 bit:  codes ±1 stored as u = (code + 1) / 2, 8 codes per byte;
  * 2 bits: codes in [-2, 1] (ternary {-1, 0, 1} included) stored as u = code + 2, 4 per byte;
  * 4 bits: codes in [-8, 7] stored as u = code + 8, 2 per byte;
  * 8 bits: codes stored as int8 as they are.

Code ``i`` of a row lives in byte ``i // per_byte`` at bit offset ``(i % per_byte) * bits``.

The matmul (``lut_matmul``) is a lookup-table GEMV in the T-MAC / LUT-GEMM manner. Write the
unsigned code as bit-planes, u = Σ_b 2^b·p_b with p_b ∈ {0, 1}. Then for one input vector x

    Σ_j u_j x_j = Σ_b 2^b Σ_g T_g[P_b[g]],   T_g[m] = Σ_{i: bit i of m set} x[8g + i]

where P_b[g] is the byte of plane b covering inputs 8g..8g+7. Each 256-entry table T_g costs 255
additions per token and replaces 8 multiply-adds per output row by one lookup, so the weight is
never expanded: it stays at ``bits`` bits per weight in memory. The signed code is c = a·u − z
((a, z) = (2, 1) for 1 bit, (1, 2^(k-1)) otherwise), hence Σ c_j x_j = a·S − z·Σx.

The kernel is a small C++ extension compiled on first use (and cached); where no compiler is
available the same arithmetic runs in plain torch, and large batches, where a dense matmul
amortises an unpack, go through ``unpack`` + matmul instead.
"""

from __future__ import annotations

import torch

from ..core.errors import ModelError
from .build import load_extension

PACK_BITS = (1, 2, 4, 8)


def per_byte(bits: int) -> int:
    return 8 // bits


def packed_cols(cols: int, bits: int) -> int:
    """Bytes per row for ``cols`` codes of ``bits`` bits."""
    if bits == 8:
        return cols
    return -(-cols // per_byte(bits))


def code_range(bits: int) -> tuple[int, int]:
    """The codes a ``bits``-bit field can hold: ±1 for one bit, [-2^(k-1), 2^(k-1) - 1] otherwise."""
    return (-1, 1) if bits == 1 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def signed_affine(bits: int) -> tuple[int, int]:
    """(a, z) with code = a·u - z for the stored unsigned field u."""
    return (2, 1) if bits == 1 else (1, 2 ** (bits - 1))


def _check_bits(bits: int) -> None:
    if bits not in PACK_BITS:
        raise ModelError(f"cannot pack {bits}-bit codes; packable widths are {', '.join(map(str, PACK_BITS))}")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes (any integer dtype, last dim = row length) → packed ``uint8`` (``int8`` for
    8 bits). Raises if a code does not fit the width (a 1-bit code must be exactly ±1)."""
    _check_bits(bits)
    if codes.dtype.is_floating_point:
        raise ModelError(f"pack_codes needs integer codes, got {codes.dtype}")
    lo, hi = code_range(bits)
    c = codes.to(torch.int16)
    if c.numel() and (int(c.min()) < lo or int(c.max()) > hi or (bits == 1 and bool((c == 0).any()))):
        raise ModelError(f"codes outside the {bits}-bit range [{lo}, {hi}]"
                         + (" (1-bit codes must be ±1)" if bits == 1 else ""))
    if bits == 8:
        return c.to(torch.int8).contiguous()
    a, z = signed_affine(bits)
    u = ((c + z) // a).to(torch.uint8)
    n = per_byte(bits)
    cols = u.shape[-1]
    pad = packed_cols(cols, bits) * n - cols
    if pad:
        u = torch.nn.functional.pad(u, (0, pad))
    u = u.reshape(*u.shape[:-1], -1, n)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=u.device)
    return (u << shifts).sum(dim=-1, dtype=torch.uint8).contiguous()  # fields never overlap: sum == or


def unpack_fields(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """The unsigned fields u (uint8) of the first ``cols`` codes of each row. Uses only shifts and
    masks, so it also exports to ONNX (BitShift / BitwiseAnd) with the bits kept packed."""
    n = per_byte(bits)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    u = (packed.unsqueeze(-1) >> shifts) & torch.tensor((1 << bits) - 1, dtype=torch.uint8)
    return u.reshape(*packed.shape[:-1], packed.shape[-1] * n)[..., :cols]


def unpack_codes(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: int8 codes with ``cols`` columns per row."""
    _check_bits(bits)
    if bits == 8:
        return packed.to(torch.int8)[..., :cols]
    expect = packed_cols(cols, bits)
    if packed.shape[-1] != expect:
        raise ModelError(f"packed rows have {packed.shape[-1]} bytes; {cols} codes of {bits} bits need {expect}")
    a, z = signed_affine(bits)
    return (unpack_fields(packed, bits, cols).to(torch.int8) * a - z).to(torch.int8)


_BYTE_TABLES: dict[tuple[int, torch.dtype], torch.Tensor] = {}


def byte_table(bits: int, dtype: torch.dtype) -> torch.Tensor:
    """(256, 8 // bits): the signed codes held by each possible byte, in ``dtype``."""
    key = (bits, dtype)
    if key not in _BYTE_TABLES:
        fields = unpack_fields(torch.arange(256, dtype=torch.uint8).unsqueeze(1), bits, per_byte(bits))
        a, z = signed_affine(bits)
        _BYTE_TABLES[key] = (fields.to(torch.int16) * a - z).to(dtype)
    return _BYTE_TABLES[key]


def unpack_codes_as(packed: torch.Tensor, bits: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """The codes as a ``dtype`` matrix in one table lookup per byte (the fast unpack). Codes are
    small integers, exact in bfloat16 (which holds every integer up to 256)."""
    if bits == 8:
        return packed[..., :cols].to(dtype)
    rows = packed.shape[0]
    codes = torch.nn.functional.embedding(packed.to(torch.int32), byte_table(bits, dtype))
    codes = codes.reshape(rows, -1)
    return codes if codes.shape[1] == cols else codes[:, :cols]


def to_planes(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """(out, bytes) packed fields → (bits, out, ceil(cols/8)) uint8 bit-planes for ``lut_matmul``."""
    u = unpack_fields(packed, bits, cols).to(torch.int16)
    groups = -(-cols // 8)
    pad = groups * 8 - cols
    if pad:
        u = torch.nn.functional.pad(u, (0, pad))
    u = u.reshape(u.shape[0], groups, 8)
    weights = (1 << torch.arange(8, dtype=torch.int16))
    planes = [(((u >> b) & 1) * weights).sum(-1).to(torch.uint8) for b in range(bits)]
    return torch.stack(planes).contiguous()


# ------------------------------------------------------------------------------------------------
# The LUT matmul


def _extension():
    """The compiled LUT kernel, or None (no compiler, or ``KRONBIT_NO_EXTENSION=1``); see ``build``."""
    return load_extension("kronbit_lut_matmul", ("lut_matmul.cpp",))


def lut_matmul(x: torch.Tensor, planes: torch.Tensor, cols: int) -> torch.Tensor:
    """S[t, o] = Σ_j u[o, j]·x[t, j] for x (tokens, cols) float32 and bit-planes of u."""
    ext = _extension()
    x = x.contiguous()
    if ext is not None:
        return ext.lut_matmul(x, planes)
    return _lut_matmul_torch(x, planes, cols)


def _lut_matmul_torch(x: torch.Tensor, planes: torch.Tensor, cols: int) -> torch.Tensor:
    """The same arithmetic with torch ops (slow; the fallback and the kernel's reference)."""
    bits, out, groups = planes.shape
    pad = groups * 8 - cols
    xp = torch.nn.functional.pad(x, (0, pad)) if pad else x
    xg = xp.reshape(x.shape[0], groups, 8)
    masks = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).to(x.dtype)  # (256, 8)
    tables = xg @ masks.t()  # (tokens, groups, 256)
    idx = planes.long() + torch.arange(groups).mul(256)  # (bits, out, groups) into the flat tables
    flat = tables.reshape(x.shape[0], -1)
    s = torch.zeros(x.shape[0], out, dtype=x.dtype)
    for b in range(bits):
        s += (2 ** b) * flat[:, idx[b]].sum(-1)
    return s
