"""Quantizer arithmetic on small hand-checked tensors, and the straight-through gradients."""

import math

import pytest
import torch

from kronbit.core.errors import ConfigError
from kronbit.quant.quantizers import (BWNWeight, ElasticAct, ElasticUnsignedAct, LSQAct, LSQWeight, MinMaxAct,
                                      TWNWeight, UniformWeight)
from kronbit.quant.registry import (ACT_QUANTIZERS, AUTO_ACT, AUTO_WEIGHT, WEIGHT_QUANTIZERS, build_act_quantizer,
                                    build_weight_quantizer, check_quantizer)
from kronbit.quant.ste import grad_scale, round_ste, ste


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# ---- TWN -----------------------------------------------------------------------------------------

W_TWN = t([0.2, -0.6, 1.2, 0.0], [-1.8, 0.1, 0.3, -0.1])


def test_twn_threshold_and_scale_per_tensor():
    # mean|w| = 4.3/8 = 0.5375 → Δ = 0.37625; kept: 0.6, 1.2, 1.8 → α = 3.6/3 = 1.2
    codes, alpha, offset = TWNWeight(granularity="tensor").codes(W_TWN)
    assert codes.dtype == torch.int8 and offset is None
    assert codes.tolist() == [[0, -1, 1, 0], [-1, 0, 0, 0]]
    assert float(alpha) == pytest.approx(1.2)
    assert torch.allclose(TWNWeight(granularity="tensor")(W_TWN), t([0, -1.2, 1.2, 0], [-1.2, 0, 0, 0]))


def test_twn_threshold_and_scale_per_row():
    # row 0: mean 0.5, Δ 0.35 → keeps 0.6, 1.2, α = 0.9; row 1: mean 0.575, Δ 0.4025 → keeps 1.8
    codes, alpha, _ = TWNWeight(granularity="row").codes(W_TWN)
    assert codes.tolist() == [[0, -1, 1, 0], [-1, 0, 0, 0]]
    assert alpha.shape == (2, 1) and torch.allclose(alpha, t([0.9], [1.8]))


def test_twn_clip_val_as_ternarybert():
    q = TWNWeight(granularity="tensor", clip_val=1.0)
    # clipped: |w| = .2 .6 1 0 1 .1 .3 .1 → mean 0.4125, Δ 0.28875 → kept .6 1 1 .3 → α = 0.725
    codes, alpha, _ = q.codes(W_TWN)
    assert codes.tolist() == [[0, -1, 1, 0], [-1, 0, 1, 0]] and float(alpha) == pytest.approx(0.725)
    w = W_TWN.clone().requires_grad_()
    q(w).sum().backward()
    assert w.grad.tolist() == [[1, 1, 0, 1], [0, 1, 1, 1]]  # no gradient where |w| > clip_val


def test_twn_all_zero_row_stays_zero():
    codes, alpha, _ = TWNWeight().codes(t([0, 0, 0], [1, -2, 0.1]))
    assert codes[0].tolist() == [0, 0, 0] and float(alpha[0]) == 0.0


# ---- BWN -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("centre, signs", [
    (False, [1, 1, 1, -1]),    # BinaryBERT: sign(w)
    (True, [1, -1, -1, -1]),   # BiT: sign(w - mean), mean = 0.75
])
def test_bwn_scale_with_and_without_mean_centring(centre, signs):
    w = t([3.0, 0.2, 0.2, -0.4])
    codes, alpha, offset = BWNWeight(mean_centering=centre).codes(w)
    assert codes.tolist() == [signs] and offset is None
    assert float(alpha) == pytest.approx(0.95)  # α = mean|w| = 3.8/4 in both cases
    assert torch.allclose(BWNWeight(mean_centering=centre)(w), 0.95 * t(signs))


def test_bwn_per_row_and_per_tensor_and_sign_of_zero():
    w = t([1.0, -3.0], [0.0, -0.5])
    _, row_alpha, _ = BWNWeight(granularity="row", mean_centering=False).codes(w)
    _, tensor_alpha, _ = BWNWeight(granularity="tensor", mean_centering=False).codes(w)
    assert torch.allclose(row_alpha, t([2.0], [0.25])) and float(tensor_alpha) == pytest.approx(1.125)
    codes, _, _ = BWNWeight(granularity="row", mean_centering=False).codes(w)
    assert codes.tolist() == [[1, -1], [1, -1]]  # sign(0) = +1: every code is one bit


def test_weight_ste_is_identity_for_twn_and_bwn():
    g = torch.arange(32.0).reshape(4, 8)
    for q in (TWNWeight(), BWNWeight()):
        w = torch.randn(4, 8, requires_grad=True)
        (q(w) * g).sum().backward()
        assert torch.equal(w.grad, g)


# ---- uniform -------------------------------------------------------------------------------------

def test_uniform_symmetric_hand_checked():
    # max|w| = 1.4 → s = 1.4/7 = 0.2: codes round(7, -3.1, 1.3, -4.7)
    codes, scale, offset = UniformWeight(4, "tensor").codes(t([1.4, -0.62, 0.26, -0.94]))
    assert codes.tolist() == [[7, -3, 1, -5]] and offset is None and float(scale) == pytest.approx(0.2)


def test_uniform_asymmetric_hand_checked():
    # range [0, 3] in 4 levels: s = 1, code -2 sits at 0 (offset = 0 + 2·s)
    w = t([0.0, 0.4, 1.0, 3.0])
    codes, scale, offset = UniformWeight(2, "tensor", symmetric=False).codes(w)
    assert codes.tolist() == [[-2, -2, -1, 1]] and float(scale) == 1.0 and float(offset) == 2.0
    assert UniformWeight(2, "tensor", symmetric=False)(w).tolist() == [[0.0, 0.0, 1.0, 3.0]]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_uniform_symmetric_levels(bits):
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    codes, _, _ = UniformWeight(bits, "row").codes(w)
    qp = 2 ** (bits - 1) - 1
    assert codes.dtype == torch.int8 and int(codes.min()) >= -qp and int(codes.max()) <= qp
    assert torch.equal(codes.abs().amax(1), torch.full((16,), qp, dtype=torch.int8))  # row max on the top level


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_uniform_asymmetric_uses_exactly_2_to_the_k_levels(bits):
    w = torch.linspace(-1, 3, 1024).reshape(1, -1)
    codes, scale, offset = UniformWeight(bits, "tensor", symmetric=False).codes(w)
    assert codes.dtype == torch.int8  # 8-bit asymmetric codes are signed too
    assert torch.unique(codes).tolist() == list(range(-2 ** (bits - 1), 2 ** (bits - 1)))
    assert torch.allclose(codes.float() * scale + offset, w, atol=float(scale) / 2 + 1e-6)


def test_uniform_clip_ratio_clips_and_stops_gradient_outside():
    q = UniformWeight(2, "tensor", clip_ratio=0.5)  # r = 0.5·max|w| = 0.5 → s = 0.5, codes in {-1, 0, 1}
    w = t([-1.0, -0.3, 0.2, 0.5, 1.0]).requires_grad_()
    out = q(w)
    assert out.tolist() == [[-0.5, -0.5, 0.0, 0.5, 0.5]]
    out.sum().backward()
    assert w.grad.tolist() == [[0, 1, 1, 1, 0]]  # identity inside [-0.5, 0.5], zero outside


# ---- LSQ -----------------------------------------------------------------------------------------

def test_lsq_initial_step_size():
    w = t([1.0, -3.0], [0.5, 0.5])
    per_row = LSQWeight(2, "row", shape=(2, 2))
    per_row.codes(w)
    assert per_row.scale.detach().tolist() == [[4.0], [1.0]]  # 2·mean|row| / sqrt(Qp = 1)
    per_tensor = LSQWeight(4, "tensor", shape=(2, 2))
    per_tensor(w)
    assert per_tensor.scale.item() == pytest.approx(2 * 1.25 / math.sqrt(7))
    assert bool(per_tensor.initialized)


def test_lsq_forward_clipping_and_step_size_gradient():
    q = LSQWeight(4, "tensor", shape=(2, 2))  # Qn = 8, Qp = 7
    with torch.no_grad():
        q.scale.fill_(0.5)
        q.initialized.fill_(True)
    w = t([0.26, -0.74], [10.0, -10.0]).requires_grad_()
    out = q(w)
    # w/s = 0.52, -1.48, 20, -20 → codes 1, -1, 7 (clipped), -8 (clipped)
    assert out.tolist() == [[0.5, -0.5], [3.5, -4.0]]
    out.sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0], [0.0, 0.0]]  # no gradient where clipped
    # d out/ds: round(u) - u inside (0.48 + 0.48), Qp and -Qn outside; scaled by 1/sqrt(numel·Qp)
    assert float(q.scale.grad) == pytest.approx((0.48 + 0.48 + 7 - 8) / math.sqrt(4 * 7), rel=1e-5)


def test_lsq_per_row_gradient_scale_counts_one_row():
    q = LSQWeight(2, "row", shape=(2, 3))  # Qn = 2, Qp = 1
    with torch.no_grad():
        q.scale.copy_(t([1.0], [1.0]))
        q.initialized.fill_(True)
    w = t([5.0, 5.0, 5.0], [0.0, 0.0, 0.0])
    q(w).sum().backward()
    # row 0: all clipped at Qp = 1 → Σ = 3; row 1: round(0) - 0 = 0; g = 1/sqrt(3·1)
    assert torch.allclose(q.scale.grad, t([3 / math.sqrt(3)], [0.0]))


# ---- fake == codes·scale (+ offset), exactly ---------------------------------------------------

CASES = [("uniform", b, g, s) for b in (2, 4, 8) for g in ("row", "tensor") for s in (True, False)] + \
        [("lsq", b, g, True) for b in (2, 4, 8) for g in ("row", "tensor")] + \
        [("twn", 2, g, True) for g in ("row", "tensor")] + [("bwn", 1, g, True) for g in ("row", "tensor")]


@pytest.mark.parametrize("name, bits, granularity, symmetric", CASES)
def test_fake_quant_is_exactly_codes_times_scale(name, bits, granularity, symmetric):
    w = torch.randn(24, 40, generator=torch.Generator().manual_seed(bits)) * 0.05
    q = build_weight_quantizer(bits, name, granularity=granularity, symmetric=symmetric, shape=tuple(w.shape))
    if name == "lsq":  # move the step size away from its initial value first
        q(w).pow(2).sum().backward()
        with torch.no_grad():
            q.scale -= 0.1 * q.scale.grad
    codes, scale, offset = q.codes(w)
    assert codes.dtype == torch.int8
    assert len(torch.unique(codes)) <= 2 ** bits
    rebuilt = codes.float() * scale if offset is None else codes.float() * scale + offset
    assert torch.equal(q(w), rebuilt)


# ---- activations ---------------------------------------------------------------------------------

def test_minmax_symmetric_activation():
    x = t([-1.0, 0.5, 0.25, 1.0])
    assert MinMaxAct(2)(x).tolist() == [[-1.0, 0.0, 0.0, 1.0]]  # qp = 1; round half to even
    assert torch.allclose(MinMaxAct(8)(x), torch.round(x * 127) / 127)


def test_minmax_asymmetric_activation_uses_2_to_the_k_levels():
    x = torch.linspace(-0.5, 2.5, 301)
    assert len(torch.unique(MinMaxAct(2, symmetric=False)(x))) == 4
    assert len(torch.unique(MinMaxAct(4, symmetric=False)(x))) == 16


def test_minmax_clip_val_as_ternarybert():
    x = torch.tensor([-4.0, -1.0, 0.5, 2.0, 3.0], requires_grad=True)
    y = MinMaxAct(2, clip_val=2.5)(x)  # clipped to [-2.5, 2.5]; s = 2.5
    assert y.tolist() == [-2.5, 0.0, 0.0, 2.5, 2.5]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_lsq_activation_initialises_from_first_batch_only():
    q = LSQAct(8)
    x = torch.tensor([-1.0, 2.0, 0.5, -0.5])
    q(x)
    first = q.scale.item()
    assert first == pytest.approx(2 * 1.0 / math.sqrt(127))
    q(10 * x)
    assert q.scale.item() == first


def test_elastic_binary_levels_and_bit_gradients():
    q = ElasticAct(1, features=4)
    x = t([-3.0, -0.5, 0.5, 1.0]).requires_grad_()
    y = q(x)  # first batch: β = 0, α = 2·mean|x - β| = 2.5 (BiT's initialisation)
    assert q.alpha.item() == 2.5
    assert y.tolist() == [[-2.5, -2.5, 2.5, 2.5]]
    (y * t([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [[0.0, 2.0, 3.0, 4.0]]    # passes only where |x - β| ≤ α
    assert q.beta.grad.tolist() == [0.0, -2.0, -3.0, -4.0]
    assert float(q.alpha.grad) == pytest.approx((-1 - 2 + 3 + 4) / math.sqrt(4))  # Σ sign·g / sqrt(numel)


def test_elastic_offset_is_a_learnable_threshold():
    q = ElasticAct(1, features=3)
    with torch.no_grad():
        q.alpha.fill_(0.5)
        q.beta.copy_(torch.tensor([0.0, 1.0, -1.0]))
        q.initialized.fill_(True)
    # sign(x - β) · α, the offset itself is not added back (BiT)
    assert q(t([0.5, 0.5, -0.5])).tolist() == [[0.5, -0.5, 0.5]]


def test_elastic_two_bit():
    q = ElasticAct(2)
    with torch.no_grad():
        q.alpha.fill_(0.5)
        q.initialized.fill_(True)
    x = torch.tensor([-2.0, -0.6, 0.1, 0.7, 3.0])
    assert q(x).tolist() == [-1.0, -0.5, 0.0, 0.5, 0.5]  # α·clamp(round(x/α), -2, 1)


def test_elastic_unsigned_binary_for_probabilities():
    q = ElasticUnsignedAct(1, offset=False)
    assert q.beta is None and [n for n, _ in q.named_parameters()] == ["alpha"]
    x = torch.tensor([0.1, 0.6, 0.3, 0.0]).requires_grad_()
    y = q(x)
    assert y.tolist() == [0.0, 1.0, 0.0, 0.0]  # α = 4·mean = 1.0 (BiT's initialisation); levels {0, α}
    assert q.alpha.item() == 1.0
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 4.0]  # 0 ≤ x/α ≤ 1 everywhere: the gradient passes
    # α: LSQ's round(q) - q inside the range, / sqrt(numel·Qp) = /2
    want = (1 * (0 - 0.1) + 2 * (1 - 0.6) + 3 * (0 - 0.3) + 4 * 0) / 2
    assert float(q.alpha.grad) == pytest.approx(want)


def test_elastic_unsigned_learnable_threshold_per_feature():
    """X̂ = α·round(clip((X - β)/α, 0, 1)): a feature's output is α where X > β + α/2."""
    q = ElasticUnsignedAct(1, features=3)
    with torch.no_grad():
        q.alpha.fill_(0.5)
        q.beta.copy_(torch.tensor([0.0, 0.4, -0.3]))
        q.initialized.fill_(True)
    x = t([0.3, 0.6, -0.1], [0.2, 0.7, -0.2]).requires_grad_()
    y = q(x)
    # thresholds β + α/2 = 0.25, 0.65, -0.05; the offset is not added back
    assert y.tolist() == [[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]
    y.sum().backward()
    # (x - β)/α = [[.6, .4, .4], [.4, .6, .2]] all inside [0, 1]: β gets -1 per element
    assert q.beta.grad.tolist() == [-2.0, -2.0, -2.0]
    x2 = t([2.0, 0.0, -1.0]).requires_grad_()  # (x-β)/α = 4, -0.8, -1.4: outside on both sides
    y2 = q(x2)
    assert y2.tolist() == [[0.5, 0.0, 0.0]]
    y2.sum().backward()
    assert x2.grad.tolist() == [[0.0, 0.0, 0.0]]  # clipped: no gradient to the input


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_elastic_unsigned_initialises_as_bit_from_the_first_batch_only(bits):
    """BiT initialises an unsigned elastic α to 4·mean|x|/sqrt(2^b - 1) on the first batch (on
    the input after its learnable bias, zero then); later batches leave it alone."""
    q = build_act_quantizer(bits, "elastic_unsigned", features=2)
    assert isinstance(q, ElasticUnsignedAct) and q.beta.shape == (2,)
    x = t([0.0, 1.0], [0.5, 0.7])
    q(x)
    assert q.alpha.item() == pytest.approx(4 * 0.55 / math.sqrt(2 ** bits - 1))
    q(10 * x)
    assert q.alpha.item() == pytest.approx(4 * 0.55 / math.sqrt(2 ** bits - 1)) and bool(q.initialized)


def test_elastic_unsigned_two_bit_subtracts_the_minimum():
    q = ElasticUnsignedAct(2, offset=False)
    with torch.no_grad():
        q.alpha.fill_(0.25)
        q.initialized.fill_(True)
    x = torch.tensor([-0.2, 0.1, 0.4, 2.0])
    # above the minimum -0.2: 0, .3, .6, 2.2 → round(clamp(u/α, 0, 3)) = 0, 1, 2, 3; + minimum
    assert q(x).tolist() == pytest.approx([-0.2, 0.05, 0.3, 0.55])


# ---- primitives and the registry ----------------------------------------------------------------

def test_ste_primitives():
    x = torch.tensor([0.2, 1.7, -3.4], requires_grad=True)
    round_ste(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]
    x.grad = None
    y = ste(x, torch.tensor([9.0, 8.0, 7.0]), torch.tensor([True, False, True]))
    assert y.tolist() == [9.0, 8.0, 7.0]
    (2 * y).sum().backward()
    assert x.grad.tolist() == [2.0, 0.0, 2.0]
    s = torch.tensor(0.3, requires_grad=True)
    z = grad_scale(s, 0.25)
    assert torch.equal(z, s.detach())  # exactly the same value, not s - s·g + s·g
    z.backward()
    assert float(s.grad) == 0.25


def test_registry_bits_and_auto():
    assert {n: s.bits for n, s in WEIGHT_QUANTIZERS.items()} == {"uniform": (2, 4, 8), "lsq": (2, 4, 8),
                                                                   "twn": (2,), "bwn": (1,)}
    assert {n: s.bits for n, s in ACT_QUANTIZERS.items()} == {"minmax": (2, 4, 8), "lsq": (2, 4, 8),
                                                                "elastic": (1, 2, 4, 8),
                                                                "elastic_unsigned": (1, 2, 4, 8)}
    for bits, name in AUTO_WEIGHT.items():
        assert bits in WEIGHT_QUANTIZERS[name].bits
    for bits, name in AUTO_ACT.items():
        assert bits in ACT_QUANTIZERS[name].bits
    with pytest.raises(ConfigError, match="weight_quantizer 'bwn' supports w_bits 1, not 2; "
                                          "for w_bits=2 use auto or one of: uniform, lsq, twn"):
        check_quantizer("weight_quantizer", "bwn", 2, WEIGHT_QUANTIZERS, "w_bits")
