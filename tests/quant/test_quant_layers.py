"""QuantLinear (from nn.Linear and Conv1D) and QuantEmbedding."""

import pytest
import torch
from torch import nn

from kronbit.core.errors import ConfigError, ModelError
from kronbit.core.swap import Conv1D
from kronbit.quant import SCALE_PARAM_SUFFIXES, QuantConfig, QuantEmbedding, QuantLinear
from kronbit.quant.quantizers import BWNWeight, ElasticAct, LSQWeight, MinMaxAct, TWNWeight, UniformWeight


def pair(seed=0, n_in=16, n_out=24):
    """A Conv1D and the nn.Linear holding the same map."""
    torch.manual_seed(seed)
    conv = Conv1D(n_out, n_in)  # weight stored (in, out)
    nn.init.normal_(conv.bias)
    lin = nn.Linear(n_in, n_out)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())
        lin.bias.copy_(conv.bias)
    return conv, lin


X = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(2))
X2D = torch.randn(3, 16, generator=torch.Generator().manual_seed(3))  # F.linear and Conv1D differ in the last bit here


@pytest.mark.parametrize("w_bits, a_bits", [(8, 32), (2, 8), (1, 1)])
def test_conv1d_and_linear_give_the_same_quantized_layer(w_bits, a_bits):
    conv, lin = pair()
    cfg = QuantConfig(w_bits=w_bits, a_bits=a_bits)
    qc, ql = QuantLinear.from_module(conv, cfg), QuantLinear.from_module(lin, cfg)
    assert qc.fan_in_fan_out and not ql.fan_in_fan_out
    assert qc.weight.shape == ql.weight.shape == (24, 16)
    assert torch.equal(qc.fake_quant_weight(), ql.fake_quant_weight())
    # Same values; the Conv1D one computes like Conv1D (addmm on (in, out)), so the last bit of
    # a sum may differ.
    assert torch.allclose(qc(X), ql(X), atol=1e-5)


@pytest.mark.parametrize("use_conv", [True, False])
def test_32_bits_is_the_original_layer_exactly(use_conv):
    conv, lin = pair()
    orig = conv if use_conv else lin
    q = QuantLinear.from_module(orig, QuantConfig())
    assert q.weight_quantizer is None and q.input_quantizer is None
    assert torch.equal(q(X), orig(X))
    back = q.to_module()
    assert type(back) is type(orig) and back.weight.shape == orig.weight.shape
    assert torch.equal(back.weight, orig.weight) and torch.equal(back.bias, orig.bias)


@pytest.mark.parametrize("use_conv", [True, False])
@pytest.mark.parametrize("w_bits", [8, 4, 2, 1])
def test_to_module_reproduces_the_fake_quant_output_exactly(use_conv, w_bits):
    conv, lin = pair()
    q = QuantLinear.from_module(conv if use_conv else lin, QuantConfig(w_bits=w_bits))
    back = q.to_module()
    assert type(back) is (Conv1D if use_conv else nn.Linear)
    assert torch.equal(back(X), q(X)) and torch.equal(back(X2D), q(X2D))
    codes, scale, offset = q.quantized_weight()
    assert torch.equal(codes.float() * scale + (0 if offset is None else offset), q.fake_quant_weight())


def test_auto_quantizers_per_bit_width():
    _, lin = pair()
    kinds = {}
    for w_bits, a_bits in [(8, 8), (4, 4), (2, 2), (1, 1)]:
        q = QuantLinear.from_module(lin, QuantConfig(w_bits=w_bits, a_bits=a_bits))
        kinds[w_bits] = (type(q.weight_quantizer), type(q.input_quantizer))
    assert kinds == {8: (UniformWeight, MinMaxAct), 4: (UniformWeight, MinMaxAct), 2: (TWNWeight, MinMaxAct),
                     1: (BWNWeight, ElasticAct)}


def test_set_bits_in_place():
    _, lin = pair()
    q = QuantLinear.from_module(lin, QuantConfig(w_bits=4, a_bits=8, weight_quantizer="lsq", act_quantizer="lsq"))
    q(X)
    scale = q.weight_quantizer.scale
    q.set_bits(4, 4)  # same weight bits: the learned step size is kept
    assert q.weight_quantizer.scale is scale and q.a_bits == 4
    q.set_bits(2, None)  # None = full precision
    assert isinstance(q.weight_quantizer, LSQWeight) and q.weight_quantizer.bits == 2
    assert q.input_quantizer is None and q.a_bits == 32
    q.set_bits(32, 32)
    assert torch.equal(q(X), lin(X))  # the latent weight was never touched


def test_set_bits_rejects_what_the_quantizer_cannot_do_and_changes_nothing():
    _, lin = pair()
    q = QuantLinear.from_module(lin, QuantConfig(w_bits=2, a_bits=8, weight_quantizer="twn"))
    before = (q.weight_quantizer, q.input_quantizer)
    with pytest.raises(ConfigError, match="'twn' supports w_bits 2, not 4"):
        q.set_bits(4, 4)
    assert (q.weight_quantizer, q.input_quantizer) == before and (q.w_bits, q.a_bits) == (2, 8)


def test_output_quantizer_for_attention_inputs():
    _, lin = pair()
    q = QuantLinear.from_module(lin, QuantConfig(w_bits=8, a_bits=4), quantize_output=True)
    assert isinstance(q.output_quantizer, MinMaxAct)
    assert len(torch.unique(q(X))) <= 15  # symmetric 4-bit: at most 2·7 + 1 levels
    q.set_bits(8, 32)
    assert q.output_quantizer is None


def test_learnable_quantizer_parameters_follow_the_naming_convention():
    _, lin = pair()
    cfg = QuantConfig(w_bits=4, a_bits=1, weight_quantizer="lsq", act_quantizer="elastic")
    q = QuantLinear.from_module(lin, cfg, quantize_output=True)
    names = {n for n, _ in q.named_parameters()}
    assert names == {"weight", "bias", "weight_quantizer.scale", "input_quantizer.alpha", "input_quantizer.beta",
                     "output_quantizer.alpha", "output_quantizer.beta"}
    assert {n for n in names if n.endswith(SCALE_PARAM_SUFFIXES)} == names - {"weight", "bias"}
    assert q.input_quantizer.beta.shape == (16,) and q.output_quantizer.beta.shape == (24,)
    assert q.weight_quantizer.scale.shape == (24, 1)


def test_quantized_weight_of_a_full_precision_layer_is_an_error():
    _, lin = pair()
    with pytest.raises(ModelError, match="full precision"):
        QuantLinear.from_module(lin, QuantConfig(a_bits=8)).quantized_weight()


def test_quant_embedding_rows_padding_and_shared_weight():
    torch.manual_seed(0)
    emb = nn.Embedding(12, 6, padding_idx=0)
    q = QuantEmbedding.from_module(emb, QuantConfig(w_bits=2, granularity="tensor"))
    assert q.weight is emb.weight  # shared: a tied LM head keeps using the latent weight
    assert q.padding_idx == 0 and q.a_bits == 32
    codes, scale, _ = q.quantized_weight()
    assert scale.shape == (12, 1)  # embeddings are always quantized per row (per token vector)
    ids = torch.tensor([[0, 3, 11], [5, 5, 1]])
    out = q(ids)
    assert torch.equal(out, (codes.float() * scale)[ids])
    assert torch.equal(out[0, 0], torch.zeros(6))  # the padding row is zero and stays zero
    back = q.to_module()
    assert isinstance(back, nn.Embedding) and back.padding_idx == 0 and back.weight is not emb.weight
    assert torch.equal(back(ids), out)


@pytest.mark.parametrize("w_bits, weight_quantizer, symmetric", [(1, "bwn", True), (2, "twn", True),
                                                                 (4, "lsq", True), (8, "uniform", False)])
def test_embedding_quantizes_only_the_looked_up_rows_with_the_same_result(w_bits, weight_quantizer, symmetric):
    torch.manual_seed(0)
    emb = nn.Embedding(50, 12, padding_idx=1)
    cfg = QuantConfig(w_bits=w_bits, weight_quantizer=weight_quantizer, symmetric=symmetric)
    q = QuantEmbedding.from_module(emb, cfg)
    ids = torch.tensor([[3, 3, 1, 49], [0, 7, 22, 3]])
    g = torch.randn(2, 4, 12)
    (q(ids) * g).sum().backward()
    # Reference: quantize the whole table, then look up (what to_module() holds).
    ref_w = emb.weight.detach().clone().requires_grad_()
    ref_q = QuantEmbedding.from_module(nn.Embedding(50, 12, padding_idx=1, _weight=ref_w), cfg)
    ref = torch.nn.functional.embedding(ids, ref_q.weight_quantizer(ref_w), padding_idx=1)
    (ref * g).sum().backward()
    assert torch.equal(q(ids), ref)
    assert torch.allclose(emb.weight.grad, ref_w.grad)
    if weight_quantizer == "lsq":
        assert torch.allclose(q.weight_quantizer.scale.grad, ref_q.weight_quantizer.scale.grad)
