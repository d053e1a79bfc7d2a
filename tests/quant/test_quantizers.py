"""Quantizer arithmetic on small hand-checked tensors."""

import pytest
import torch

from kronbit.quant.quantizers import (BWNWeight, ElasticAct, LSQWeight, MinMaxAct, TWNWeight, UniformWeight,
                                      round_ste, sign_ste)


def test_twn_threshold_and_scale_per_tensor():
    w = torch.tensor([[0.1, -0.5, 1.0], [-2.0, 0.05, 0.3]])
    # mean|w| = (0.1+0.5+1+2+0.05+0.3)/6 = 3.95/6; Δ = 0.7·that = 0.460833...
    # above Δ: 0.5, 1.0, 2.0 -> α = 3.5/3
    q = TWNWeight(granularity="tensor")(w)
    a = 3.5 / 3
    expected = torch.tensor([[0, -a, a], [-a, 0, 0]])
    assert torch.allclose(q, expected)
    codes, scale, offset = TWNWeight(granularity="tensor").codes(w)
    assert codes.tolist() == [[0, -1, 1], [-1, 0, 0]] and offset is None
    assert float(scale) == pytest.approx(a)


def test_twn_per_row():
    w = torch.tensor([[1.0, -1.0, 0.1, 0.1], [0.0, 4.0, 0.0, 0.0]])
    # row 0: mean|w| = 0.55, Δ = 0.385 -> keeps ±1, α = 1. row 1: mean 1, Δ 0.7 -> keeps 4, α 4.
    q = TWNWeight(granularity="row")(w)
    assert torch.equal(q, torch.tensor([[1.0, -1.0, 0, 0], [0, 4.0, 0, 0]]))


@pytest.mark.parametrize("centre, expected", [
    (False, [[0.95, 0.95, 0.95, -0.95]]),        # α = mean|w| = 3.8/4, sign(w)
    (True, [[1.125, -1.125, -1.125, -1.125]]),   # μ = 0.75: w-μ = 2.25,-.55,-.55,-1.15 → α = 4.5/4
])
def test_bwn_scale_with_and_without_mean_centring(centre, expected):
    w = torch.tensor([[3.0, 0.2, 0.2, -0.4]])
    q = BWNWeight(granularity="row", mean_centering=centre)(w)
    assert torch.allclose(q, torch.tensor(expected))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_uniform_symmetric_levels(bits):
    w = torch.randn(16, 64)
    quant = UniformWeight(bits, granularity="row", symmetric=True)
    codes, scale, _ = quant.codes(w)
    qp = 2 ** (bits - 1) - 1
    assert int(codes.min()) >= -qp and int(codes.max()) <= qp
    assert len(torch.unique(codes)) <= 2 ** bits
    # Each row's largest |w| lands exactly on the top level.
    assert torch.equal(codes.abs().amax(1), torch.full((16,), qp, dtype=codes.dtype))
    assert torch.equal(quant(w), codes.float() * scale)


def test_uniform_asymmetric_uses_all_2k_levels():
    w = torch.linspace(-1, 3, 256).reshape(1, -1)
    codes, scale, offset = UniformWeight(2, granularity="tensor", symmetric=False).codes(w)
    assert sorted(torch.unique(codes).tolist()) == [0, 1, 2, 3]
    assert torch.allclose(UniformWeight(2, "tensor", symmetric=False)(w), codes.float() * scale + offset)


def test_ste_gradients():
    x = torch.tensor([0.2, 1.7, -3.4], requires_grad=True)
    round_ste(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]
    u = torch.tensor([-2.0, -0.5, 0.0, 0.9, 1.5], requires_grad=True)
    y = sign_ste(u)
    assert y.tolist() == [-1, -1, 1, 1, 1]
    y.sum().backward()
    assert u.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # clipped outside |u| ≤ 1


def test_weight_ste_is_identity_for_twn_and_bwn():
    for q in (TWNWeight(), BWNWeight()):
        w = torch.randn(4, 8, requires_grad=True)
        (q(w) * torch.arange(32.0).reshape(4, 8)).sum().backward()
        assert torch.equal(w.grad, torch.arange(32.0).reshape(4, 8))


def test_lsq_forward_clipping_and_scale_gradient():
    q = LSQWeight(4, granularity="tensor", shape=(2, 2))
    with torch.no_grad():
        q.scale.fill_(0.5)
        q.initialized.fill_(True)
    w = torch.tensor([[0.26, -0.74], [10.0, -10.0]], requires_grad=True)
    out = q(w)
    # codes: round(0.52)=1, round(-1.48)=-1, clip(20)=7, clip(-20)=-8
    assert torch.allclose(out, torch.tensor([[0.5, -0.5], [3.5, -4.0]]))
    out.sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0], [0.0, 0.0]]  # no gradient where clipped
    assert q.scale.grad is not None and float(q.scale.grad) != 0


def test_minmax_activation_levels():
    x = torch.tensor([-1.0, 0.5, 0.25, 1.0])
    y = MinMaxAct(2)(x)  # qp = 1: levels {-1, 0, 1}·max|x|; torch rounds half to even
    assert y.tolist() == [-1.0, 0.0, 0.0, 1.0]
    y8 = MinMaxAct(8)(x)
    assert torch.allclose(y8, torch.round(x * 127) / 127)


def test_elastic_binary_activation_levels_and_gradients():
    q = ElasticAct(1)
    x = torch.tensor([0.0, 1.0, 2.0, 3.0], requires_grad=True)
    y = q(x)  # first batch: β = mean = 1.5, α = mean|x-β| = 1.0 → levels 0.5 and 2.5
    assert float(q.beta) == 1.5 and float(q.alpha) == 1.0
    assert y.tolist() == [0.5, 0.5, 2.5, 2.5]
    y.sum().backward()
    # u = (x-1.5)/1 = -1.5, -.5, .5, 1.5: gradient passes only for |u| ≤ 1
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert q.alpha.grad is not None and q.beta.grad is not None
