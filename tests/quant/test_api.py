"""quantize_ / set_bits_ / dequantize_ on tiny BERT and GPT-2 models."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from kronbit.errors import ConfigError
from kronbit.modules import Conv1D
from kronbit.quant import QuantConfig, QuantEmbedding, QuantLinear, dequantize_, quantize_, set_bits_
from kronbit.quant.size import estimate_size


def bert(seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64)).eval()


def gpt2(seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
                                      bos_token_id=0, eos_token_id=0)).eval()


IDS = torch.randint(0, 60, (2, 9), generator=torch.Generator().manual_seed(1))


def test_default_targets_are_exactly_the_block_linears_of_bert():
    m = bert()
    swapped = quantize_(m, QuantConfig(w_bits=2))
    per_layer = ["attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense", "intermediate.dense", "output.dense"]
    assert swapped == [f"bert.encoder.layer.{i}.{p}" for i in range(2) for p in per_layer]
    assert isinstance(m.classifier, nn.Linear) and isinstance(m.bert.pooler.dense, nn.Linear)
    assert isinstance(m.bert.embeddings.word_embeddings, nn.Embedding)


def test_named_targets_and_embeddings():
    m = bert()
    swapped = quantize_(m, QuantConfig(w_bits=8, target_modules=["query", "value"], quantize_embeddings=True))
    assert len(swapped) == 5 and swapped[-1] == "bert.embeddings.word_embeddings"
    assert isinstance(m.bert.encoder.layer[0].attention.self.key, nn.Linear)
    assert isinstance(m.bert.embeddings.word_embeddings, QuantEmbedding)


def test_gpt2_conv1d_targets():
    m = gpt2()
    swapped = quantize_(m, QuantConfig(w_bits=4))
    assert swapped == [f"transformer.h.{i}.{p}" for i in range(2)
                       for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert all(m.transformer.h[0].attn.c_attn.fan_in_fan_out for _ in [0])
    assert isinstance(m.lm_head, nn.Linear)


def test_conv1d_and_linear_give_the_same_quantized_layer():
    torch.manual_seed(0)
    conv = Conv1D(24, 16)  # nf=out=24, nx=in=16; weight (in, out)
    lin = nn.Linear(16, 24)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())
        lin.bias.copy_(conv.bias)
    cfg = QuantConfig(w_bits=2, a_bits=8)
    x = torch.randn(3, 16)
    qa, qb = QuantLinear.from_module(conv, cfg), QuantLinear.from_module(lin, cfg)
    assert torch.equal(qa(x), qb(x))
    back = qa.to_module()
    assert isinstance(back, Conv1D) and back.weight.shape == (16, 24)


@pytest.mark.parametrize("make", [bert, gpt2])
def test_full_precision_bits_leave_outputs_unchanged(make):
    m = make()
    ids = IDS if make is bert else IDS % 100
    ref = m(input_ids=ids).logits
    quantize_(m, QuantConfig(w_bits=32, a_bits=32, quantize_embeddings=True))
    assert torch.equal(m(input_ids=ids).logits, ref)


@pytest.mark.parametrize("w_bits", [8, 4, 2, 1])
def test_fake_quant_equals_converted_model_exactly(w_bits):
    m = bert()
    quantize_(m, QuantConfig(w_bits=w_bits, quantize_embeddings=True))
    fake = m(input_ids=IDS).logits
    names = dequantize_(m)
    assert len(names) == 13 and not any(isinstance(x, (QuantLinear, QuantEmbedding)) for x in m.modules())
    assert torch.equal(m(input_ids=IDS).logits, fake)


@pytest.mark.parametrize("w_bits", [8, 4, 2, 1])
def test_codes_times_scale_is_the_fake_weight(w_bits):
    m = bert()
    quantize_(m, QuantConfig(w_bits=w_bits, quantize_embeddings=True))
    for mod in (m.bert.encoder.layer[0].intermediate.dense, m.bert.embeddings.word_embeddings):
        codes, scale, offset = mod.quantized_weight()
        rebuilt = codes.float() * scale + (0 if offset is None else offset)
        assert torch.equal(rebuilt, mod.quantized_weight_value())
        assert len(torch.unique(codes)) <= 2 ** w_bits


def test_set_bits_changes_behaviour_without_rebuilding():
    m = bert()
    quantize_(m, QuantConfig(w_bits=8))
    layer = m.bert.encoder.layer[0].attention.self.query
    out8 = m(input_ids=IDS).logits
    set_bits_(m, w_bits=1, a_bits=32)
    assert m.bert.encoder.layer[0].attention.self.query is layer  # same module object
    assert layer.w_bits == 1 and torch.unique(layer.quantized_weight()[0]).tolist() == [-1, 1]
    assert not torch.equal(m(input_ids=IDS).logits, out8)
    set_bits_(m, w_bits=1, a_bits=1)
    assert layer.input_quantizer is not None


def test_rebuild_from_config_and_load_is_exact(tmp_path):
    cfg = QuantConfig(w_bits=4, a_bits=8, weight_quantizer="lsq", act_quantizer="elastic", quantize_embeddings=True)
    m = bert()
    quantize_(m, cfg)
    m.train()
    for _ in range(2):  # learn scales a little so they differ from their initial values
        m(input_ids=IDS, labels=torch.tensor([0, 1])).loss.backward()
        with torch.no_grad():
            for p in m.parameters():
                if p.grad is not None:
                    p -= 0.01 * p.grad
    m.eval()
    expected = m(input_ids=IDS).logits
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp_path / "m.safetensors")
    fresh = bert(seed=5)
    quantize_(fresh, QuantConfig.from_dict(cfg.to_dict()))
    fresh.load_state_dict(load_file(tmp_path / "m.safetensors"), strict=True)
    assert torch.equal(fresh.eval()(input_ids=IDS).logits, expected)


@pytest.mark.parametrize("kwargs, message", [
    ({"w_bits": 3}, "w_bits=3 is not supported; choose one of 1, 2, 4, 8, 32"),
    ({"w_bits": 4, "weight_quantizer": "twn"}, "weight_quantizer 'twn' supports w_bits 2, not 4"),
    ({"a_bits": 1, "act_quantizer": "minmax"}, "act_quantizer 'minmax' supports a_bits 2, 4, 8, not 1; "
                                               "for 1 bits use auto or: elastic"),
    ({"weight_quantizer": "xnor"}, "weight_quantizer 'xnor' is unknown"),
    ({"granularity": "channel"}, "is not one of 'row', 'tensor'"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        QuantConfig.from_dict(kwargs)


def test_target_matching_nothing_is_an_error():
    with pytest.raises(ConfigError, match=r"matched no linear layer in BertForSequenceClassification; "
                                          r"candidates: query, key, value, dense"):
        quantize_(bert(), QuantConfig(w_bits=8, target_modules=["q_proj"]))


def test_set_bits_respects_explicit_quantizers():
    m = bert()
    quantize_(m, QuantConfig(w_bits=2, weight_quantizer="twn"))
    with pytest.raises(ConfigError, match="'twn' supports w_bits 2, not 1"):
        set_bits_(m, 1, 32)


def test_size_estimate_arithmetic():
    m = bert()
    total_fp = sum(p.numel() for p in m.parameters()) * 4
    assert estimate_size(m)["total_bytes"] == total_fp
    quantize_(m, QuantConfig(w_bits=1))
    est = estimate_size(m)
    qlin = [x for x in m.modules() if isinstance(x, QuantLinear)]
    n_q = sum(x.weight.numel() for x in qlin)
    assert est["quantized_weight_bytes"] == n_q // 8
    assert est["scale_bytes"] == 4 * sum(x.weight.shape[0] for x in qlin)
    assert est["fp32_bytes"] == total_fp - 4 * n_q
