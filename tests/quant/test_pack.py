"""Bit packing round trips and the low-bit matmul, on hand-made codes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kronbit.core.errors import ModelError
from kronbit.quant import pack


def _codes(bits, rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    lo, hi = pack.code_range(bits)
    c = torch.randint(lo, hi + 1, (rows, cols), generator=g, dtype=torch.int8)
    if bits == 1:
        c = torch.where(c == 0, torch.ones_like(c), c)
    return c


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(pack.PACK_BITS), rows=st.integers(1, 7), cols=st.integers(1, 70),
       seed=st.integers(0, 10_000))
def test_pack_unpack_round_trip(bits, rows, cols, seed):
    c = _codes(bits, rows, cols, seed)
    p = pack.pack_codes(c, bits)
    assert p.shape == (rows, pack.packed_cols(cols, bits))
    assert p.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert torch.equal(pack.unpack_codes(p, bits, cols), c)


def test_bytes_per_weight():
    # 8 binary, 4 ternary, 2 four-bit codes per byte; rows padded to whole bytes
    assert [pack.packed_cols(768, b) for b in (1, 2, 4, 8)] == [96, 192, 384, 768]
    assert pack.packed_cols(9, 1) == 2 and pack.packed_cols(5, 2) == 2 and pack.packed_cols(3, 4) == 2


def test_known_bit_layout():
    # 1 bit: +1 -> 1, -1 -> 0, little-endian in the byte
    assert pack.pack_codes(torch.tensor([[1, -1, -1, 1, 1, 1, -1, -1]], dtype=torch.int8), 1).tolist() == [[0b00111001]]
    # ternary: code + 2 in 2-bit fields: [-1, 0, 1, 1] -> [1, 2, 3, 3]
    assert pack.pack_codes(torch.tensor([[-1, 0, 1, 1]], dtype=torch.int8), 2).tolist() == [[1 | 2 << 2 | 3 << 4 | 3 << 6]]
    # 4 bits: code + 8: [-8, 7] -> [0, 15]
    assert pack.pack_codes(torch.tensor([[-8, 7]], dtype=torch.int8), 4).tolist() == [[0xF0]]


@pytest.mark.parametrize("bits, bad", [(1, [1, 0]), (2, [2]), (4, [-9]), (8, [200])])
def test_codes_outside_the_width_are_refused(bits, bad):
    with pytest.raises(ModelError, match=f"{bits}-bit range"):
        pack.pack_codes(torch.tensor([bad], dtype=torch.int16), bits)


def test_unpack_checks_the_row_length():
    with pytest.raises(ModelError, match="need"):
        pack.unpack_codes(torch.zeros(2, 3, dtype=torch.uint8), 1, 30)
    with pytest.raises(ModelError, match="cannot pack 3-bit"):
        pack.pack_codes(torch.zeros(1, 2, dtype=torch.int8), 3)


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("cols", [8, 13, 64])
def test_lut_matmul_equals_the_integer_product(bits, cols):
    c = _codes(bits, 11, cols, seed=cols + bits)
    planes = pack.to_planes(pack.pack_codes(c, bits), bits, cols)
    assert planes.shape == (bits, 11, -(-cols // 8))
    a, z = pack.signed_affine(bits)
    u = ((c.int() + z) // a).float()
    x = torch.randn(3, cols, generator=torch.Generator().manual_seed(1))
    want = x @ u.t()
    torch.testing.assert_close(pack._lut_matmul_torch(x, planes, cols), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pack.lut_matmul(x, planes, cols), want, rtol=1e-5, atol=1e-5)
    # and the signed codes follow from a·S − z·Σx
    s = pack.lut_matmul(x, planes, cols)
    torch.testing.assert_close(a * s - z * x.sum(-1, keepdim=True), x @ c.float().t(), rtol=1e-5, atol=1e-4)
