"""Kronecker layers: the two-contraction forward equals the dense layer; swaps in and out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from kronbit.kron import KroneckerEmbedding, KroneckerLinear, KroneckerTiedHead
from kronbit.kron import layers as layers_mod
from kronbit.kron.layers import choose_order, contraction_flops, kron_linear
from kronbit.kron.nkp import kron_sum

f64 = torch.float64

SHAPES = [((2, 2), (3, 5), 1), ((4, 1), (2, 6), 2), ((1, 3), (5, 2), 3), ((6, 4), (1, 1), 1), ((3, 2), (2, 3), 6),
          ((3, 4), (1, 3), 2),   # B is a row (m2 = 1), a fast path in b_first
          ((4, 1), (2, 6), 1), ((1, 3), (5, 2), 1), ((1, 1), (3, 4), 1),   # rank-1 column / row A
          ((3, 4), (2, 1), 1), ((3, 4), (1, 1), 1)]   # rank-1 column B: the copy-free vector paths


@pytest.mark.parametrize("a_shape,b_shape,rank", SHAPES)
@pytest.mark.parametrize("order", ["b_first", "a_first"])
@pytest.mark.parametrize("lead", [(3, 5), (1, 1), (1,)], ids=["15-tokens", "1-token-3d", "1-token"])
@pytest.mark.parametrize("vector_a", [True, False], ids=["vector-factor-path", "general"])
def test_forward_and_backward_equal_dense_kron_layer(a_shape, b_shape, rank, order, lead, vector_a, monkeypatch):
    """Every path of kron_linear (general; rank-1 single token; rank-1 row or column A) against
    the dense A⊗B layer."""
    monkeypatch.setattr(layers_mod, "VECTOR_FACTOR_PATH", vector_a)
    (m1, n1), (m2, n2) = a_shape, b_shape
    layer = KroneckerLinear(n1 * n2, m1 * m2, a_shape, b_shape, rank, order=order, dtype=f64)
    x = torch.randn(*lead, n1 * n2, dtype=f64, requires_grad=True)
    y = layer(x)
    W = kron_sum(layer.a, layer.b)  # dense reference built with the same parameters
    ref = F.linear(x, W, layer.bias)
    assert y.shape == (*lead, m1 * m2)
    assert torch.allclose(y, ref, rtol=0, atol=1e-12)
    # gradients of the factors and of the input agree with autograd through the dense kron
    g = torch.randn_like(y)
    gx, ga, gb = torch.autograd.grad(y, (x, layer.a, layer.b), g)
    rx, ra, rb = torch.autograd.grad(ref, (x, layer.a, layer.b), g)
    for got, want in ((gx, rx), (ga, ra), (gb, rb)):
        assert torch.allclose(got, want, rtol=0, atol=1e-11)


def test_order_is_chosen_by_flops():
    # rank r: b_first = r·n1·m2·(n2+m1), a_first = r·m1·n2·(n1+m2)
    f = contraction_flops((2, 16), (48, 4), rank=3)
    assert f == {"b_first": 3 * 16 * 48 * (4 + 2), "a_first": 3 * 2 * 4 * (16 + 48), "dense": 96 * 64}
    assert choose_order((2, 16), (48, 4), 3) == "a_first"
    assert choose_order((16, 2), (4, 48), 3) == "b_first"
    layer = KroneckerLinear(64, 96, (2, 16), (48, 4), rank=3)
    assert layer.order == "a_first"


def test_single_token_and_no_bias():
    layer = KroneckerLinear(12, 6, (2, 3), (3, 4), bias=False, dtype=f64)
    x = torch.randn(12, dtype=f64)
    assert torch.allclose(layer(x), kron_sum(layer.a, layer.b) @ x, rtol=0, atol=1e-13)
    assert layer.bias is None


def test_parameter_count():
    layer = KroneckerLinear(768, 3072, (2, 2), (1536, 384), rank=2)
    assert sum(p.numel() for p in layer.parameters()) == 2 * (4 + 1536 * 384) + 3072


def test_from_linear_full_rank_round_trip():
    torch.manual_seed(0)
    lin = nn.Linear(12, 8).double()
    k = KroneckerLinear.from_module(lin, a_shape=(2, 3), rank="full")
    assert k.b_shape == (4, 4) and k.rank == 6 and not k.fan_in_fan_out
    x = torch.randn(4, 12, dtype=f64)
    assert torch.allclose(k(x), lin(x), rtol=0, atol=1e-12)
    back = k.to_module()
    assert type(back) is nn.Linear and back.weight.shape == (8, 12)
    assert torch.allclose(back.weight, lin.weight, rtol=0, atol=1e-13)
    assert torch.equal(back.bias, lin.bias)


def test_from_conv1d_keeps_layout():
    torch.manual_seed(0)
    conv = Conv1D(8, 12).double()      # nf=out=8, nx=in=12; weight stored (in, out)
    nn.init.normal_(conv.bias)
    k = KroneckerLinear.from_module(conv, b_shape=(2, 2), rank="full")
    assert k.fan_in_fan_out and (k.in_features, k.out_features) == (12, 8) and k.a_shape == (4, 6)
    x = torch.randn(3, 12, dtype=f64)
    assert torch.allclose(k(x), conv(x), rtol=0, atol=1e-12)
    back = k.to_dense()
    assert type(back) is Conv1D and back.weight.shape == (12, 8)
    assert torch.allclose(back.weight, conv.weight, rtol=0, atol=1e-13)
    assert torch.allclose(back(x), conv(x), rtol=0, atol=1e-12)


def test_low_rank_from_module_is_the_nearest_kronecker_product():
    torch.manual_seed(0)
    lin = nn.Linear(12, 8).double()
    k = KroneckerLinear.from_module(lin, (2, 3), (4, 4), rank=1)
    W = k.dense_weight()
    # W − Ŵ is orthogonal to every rank-1 direction in R-space: perturbing the factors never helps
    err = (lin.weight - W).norm()
    for _ in range(20):
        a = k.a + 0.01 * torch.randn_like(k.a)
        assert (lin.weight - kron_sum(a, k.b)).norm() >= err


def test_bf16_autocast_output_dtype_and_accuracy():
    torch.manual_seed(0)
    layer = KroneckerLinear(64, 32, (4, 8), (8, 8), rank=2)
    x = torch.randn(5, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        ref = F.linear(x, layer.dense_weight().detach(), layer.bias)
    assert y.dtype == ref.dtype == torch.bfloat16
    assert torch.allclose(y.float(), layer(x).detach(), rtol=0.05, atol=0.05)


def test_kron_linear_rejects_wrong_width():
    with pytest.raises(ValueError, match="expects 12"):
        kron_linear(torch.zeros(2, 10), torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))


# ---- embeddings


def test_embedding_lookup_equals_dense_table():
    emb = KroneckerEmbedding(50, 12, factor=3, rank=2).double()
    assert emb.a.shape == (2, 50, 4) and emb.b.shape == (2, 1, 3)
    ids = torch.tensor([[0, 7, 49], [3, 3, 1]])
    table = emb.dense_weight()
    assert table.shape == (50, 12)
    assert torch.allclose(emb(ids), table[ids], rtol=0, atol=1e-14)
    # gradient w.r.t. the factors matches the dense lookup
    g = torch.randn(2, 3, 12, dtype=f64)
    ga = torch.autograd.grad(emb(ids), emb.a, g)[0]
    ra = torch.autograd.grad(F.embedding(ids, kron_sum(emb.a, emb.b)), emb.a, g)[0]
    assert torch.allclose(ga, ra, rtol=0, atol=1e-13)


def test_embedding_from_module_kngpt2_shapes_and_round_trip():
    torch.manual_seed(0)
    dense = nn.Embedding(100, 32).double()
    k = KroneckerEmbedding.from_module(dense, factor=2)
    assert k.a_shape == (100, 16) and k.b_shape == (1, 2)
    assert sum(p.numel() for p in k.parameters()) == 100 * 16 + 2
    full = KroneckerEmbedding.from_module(dense, factor=2, rank=2)   # max rank = f = 2: exact
    ids = torch.arange(100)
    assert torch.allclose(full(ids), dense(ids), rtol=0, atol=1e-12)
    back = full.to_dense()
    assert type(back) is nn.Embedding and torch.allclose(back.weight, dense.weight, rtol=0, atol=1e-12)
    # a true Kronecker table is recovered exactly at rank 1
    true = KroneckerEmbedding(100, 32, factor=4).double()
    again = KroneckerEmbedding.from_module(true.to_dense(), factor=4)
    assert torch.allclose(again(ids), true(ids), rtol=0, atol=1e-12)


def test_embedding_output_dtype_under_autocast_matches_nn_embedding():
    emb = KroneckerEmbedding(10, 8, factor=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert emb(torch.tensor([1, 2])).dtype == nn.Embedding(10, 8)(torch.tensor([1])).dtype


def test_tied_head_reads_embedding_factors():
    emb = KroneckerEmbedding(50, 12, factor=3, rank=2).double()
    head = KroneckerTiedHead(emb)
    assert list(head.parameters()) == [] and list(head.state_dict()) == []
    h = torch.randn(4, 12, dtype=f64)
    assert torch.allclose(head(h), h @ emb.dense_weight().T, rtol=0, atol=1e-12)
    with torch.no_grad():
        emb.b.mul_(2)  # shared: the head sees updates to the embedding
    assert torch.allclose(head(h), h @ emb.dense_weight().T, rtol=0, atol=1e-12)
    dense_emb = emb.to_dense()
    lin = head.to_module(dense_emb)
    assert type(lin) is nn.Linear and lin.weight is dense_emb.weight


@pytest.mark.parametrize("a_shape,b_shape", [((2, 1), (6, 16)), ((1, 2), (12, 8)), ((6, 16), (2, 1))])
def test_vector_factor_path_under_autocast_keeps_the_gemm_dtype(a_shape, b_shape, monkeypatch):
    """The vector-factor path's output is bf16 under autocast, as the general path's, and both paths
    agree to bf16 rounding."""
    torch.manual_seed(0)
    layer = KroneckerLinear(16, 12, a_shape, b_shape)
    x = torch.randn(7, 16)
    out = {}
    for vector_a in (True, False):
        monkeypatch.setattr(layers_mod, "VECTOR_FACTOR_PATH", vector_a)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out[vector_a] = layer(x)
    assert out[True].dtype == out[False].dtype == torch.bfloat16
    assert torch.allclose(out[True].float(), out[False].float(), rtol=0.02, atol=0.02)
