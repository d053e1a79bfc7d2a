"""quantize_ / set_bits_ / dequantize_ / QuantConfig on a tiny BERT and a tiny GPT-2."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kronbit.core.errors import ConfigError
from kronbit.core.swap import Conv1D
from kronbit.quant import (QuantConfig, QuantEmbedding, QuantLinear, bits_summary, dequantize_, quant_state,
                           quantize_, quantized_modules, quantizer_parameters, set_bits_)
from kronbit.quant.size import estimate_size

BERT_LINEARS = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense"]
GPT2_LINEARS = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_default_targets_are_exactly_the_encoder_linears_of_bert(make_bert):
    m = make_bert()
    swapped = quantize_(m, QuantConfig(w_bits=2, quantize_embeddings=False))
    assert swapped == [f"bert.encoder.layer.{i}.{p}" for i in range(2) for p in BERT_LINEARS]
    assert [n for n, _ in quantized_modules(m)] == swapped
    assert type(m.classifier) is nn.Linear and type(m.bert.pooler.dense) is nn.Linear
    assert type(m.bert.embeddings.word_embeddings) is nn.Embedding
    assert type(m.bert.encoder.layer[0].output.LayerNorm) is nn.LayerNorm


def test_below_4_bits_the_embeddings_are_quantized_unless_told_otherwise(make_bert, make_gpt2):
    from kronbit.core.transforms import recorded_transforms
    from kronbit.quant import QuantEmbedding

    m = make_bert()
    quantize_(m, QuantConfig(w_bits=1, a_bits=1))
    assert type(m.bert.embeddings.word_embeddings) is QuantEmbedding
    assert recorded_transforms(m)[0]["config"]["quantize_embeddings"] is True  # recorded resolved
    m = make_bert()
    quantize_(m, QuantConfig(w_bits=4))
    assert type(m.bert.embeddings.word_embeddings) is nn.Embedding
    assert recorded_transforms(m)[0]["config"]["quantize_embeddings"] is False
    g = make_gpt2()  # its LM head is the embedding matrix: the head needs it in full precision
    quantize_(g, QuantConfig(w_bits=2))
    assert type(g.get_input_embeddings()) is nn.Embedding


def test_auto_embeddings_survive_a_schedule_and_a_rebuild(make_bert, tmp_path, tiny_bert):
    """4-bit start (auto: embedding off), then 2 bits: the rebuilt model has the same modules."""
    from transformers import AutoTokenizer

    from kronbit.core.transforms import recorded_transforms
    from kronbit.formats.compressed import load_compressed, save_compressed

    m = make_bert()
    quantize_(m, QuantConfig(w_bits=4))
    set_bits_(m, w_bits=2, a_bits=8)
    save_compressed(m, AutoTokenizer.from_pretrained(tiny_bert), tmp_path / "c", {}, recorded_transforms(m))
    back = load_compressed(tmp_path / "c")
    assert type(back.bert.embeddings.word_embeddings) is nn.Embedding
    ids = torch.randint(5, 29, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, m(input_ids=ids).logits)


def test_named_targets_filter_and_embeddings(make_bert):
    m = make_bert()
    swapped = quantize_(m, QuantConfig(w_bits=8, target_modules=["query", "value"], quantize_embeddings=True),
                        filter_fn=lambda module, name: ".layer.1." not in name)
    assert swapped == ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value",
                       "bert.embeddings.word_embeddings"]
    assert type(m.bert.encoder.layer[1].attention.self.query) is nn.Linear
    assert isinstance(m.bert.embeddings.word_embeddings, QuantEmbedding)


def test_gpt2_conv1d_targets_and_tied_head(make_gpt2):
    m = make_gpt2()
    swapped = quantize_(m, QuantConfig(w_bits=4, quantize_embeddings=True))
    assert swapped == [f"transformer.h.{i}.{p}" for i in range(2) for p in GPT2_LINEARS] + ["transformer.wte"]
    assert all(mod.fan_in_fan_out for _, mod in quantized_modules(m) if isinstance(mod, QuantLinear))
    assert type(m.lm_head) is nn.Linear and m.lm_head.weight is m.transformer.wte.weight  # still tied, head FP
    assert type(m.transformer.wpe) is nn.Embedding


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_32_bits_leaves_outputs_unchanged_exactly(model, make_bert, make_gpt2, ids):
    m = make_bert() if model == "bert" else make_gpt2()
    ref = logits(m, ids)
    quantize_(m, QuantConfig(quantize_embeddings=True, quantize_attention=True))
    assert len(quantized_modules(m)) == (13 if model == "bert" else 9)
    assert torch.equal(logits(m, ids), ref)


@pytest.mark.parametrize("w_bits, weight_quantizer", [(8, "auto"), (4, "auto"), (2, "auto"), (1, "auto"),
                                                      (4, "lsq"), (2, "uniform")])
@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_fake_quant_equals_dequantized_model_exactly(model, w_bits, weight_quantizer, make_bert, make_gpt2, ids):
    m = make_bert() if model == "bert" else make_gpt2()
    quantize_(m, QuantConfig(w_bits=w_bits, weight_quantizer=weight_quantizer, quantize_embeddings=True))
    fake = logits(m, ids)
    names = dequantize_(m)
    assert len(names) == (13 if model == "bert" else 9) and not quantized_modules(m)
    if model == "gpt2":
        assert all(type(m.transformer.h[0].get_submodule(p)) is Conv1D for p in GPT2_LINEARS)
    assert torch.equal(logits(m, ids), fake)


def test_dequantize_refuses_to_silently_drop_activation_quantizers(make_bert, ids):
    m = make_bert()
    quantize_(m, QuantConfig(w_bits=2, a_bits=8, quantize_embeddings=False))
    with pytest.raises(ConfigError, match="12 layers quantize activations .* drop_activation_quantizers=True"):
        dequantize_(m)
    assert len(quantized_modules(m)) == 12  # nothing was swapped
    weight_only = make_bert()
    quantize_(weight_only, QuantConfig(w_bits=2, quantize_embeddings=False))
    dequantize_(m, drop_activation_quantizers=True)
    assert torch.equal(logits(m, ids), logits(weight_only, ids))


def test_set_bits_changes_behaviour_without_rebuilding(make_bert, ids):
    m = make_bert()
    ref = logits(m, ids)
    quantize_(m, QuantConfig(w_bits=8))
    modules = dict(quantized_modules(m))
    out8 = logits(m, ids)
    assert set_bits_(m, w_bits=1, a_bits=32) == list(modules)
    assert dict(quantized_modules(m)) == modules  # the same module objects
    query = m.bert.encoder.layer[0].attention.self.query
    assert torch.unique(query.quantized_weight()[0]).tolist() == [-1, 1]
    out1 = logits(m, ids)
    assert not torch.allclose(out1, out8)
    set_bits_(m, w_bits=1, a_bits=1)
    assert quant_state(m)["bert.encoder.layer.0.attention.self.query"] == {
        "kind": "QuantLinear", "w_bits": 1, "a_bits": 1, "weight_quantizer": "bwn", "act_quantizer": "elastic",
        "quantize_output": False}
    assert bits_summary(m) == {"w1a1": 12}
    assert not torch.allclose(logits(m, ids), out1)
    set_bits_(m, None, None)  # back to full precision: the latent weights are the original ones
    assert torch.equal(logits(m, ids), ref)


def test_set_bits_validates_before_changing_anything(make_bert):
    m = make_bert()
    quantize_(m, QuantConfig(w_bits=2, weight_quantizer="twn", quantize_embeddings=True))
    with pytest.raises(ConfigError, match="w_bits=3 is not supported; choose one of 1, 2, 4, 8, 32"):
        set_bits_(m, 3, 32)
    with pytest.raises(ConfigError, match="weight_quantizer 'twn' supports w_bits 2, not 1"):
        set_bits_(m, 1, 32)
    assert bits_summary(m) == {"w2a32": 13}
    with pytest.raises(ConfigError, match="no quantized modules; call quantize_ first"):
        set_bits_(make_bert(), 2, 32)


def test_rebuild_from_config_and_load_is_exact(make_bert, ids, tmp_path):
    cfg = QuantConfig(w_bits=4, a_bits=2, weight_quantizer="lsq", act_quantizer="elastic", quantize_embeddings=True,
                      quantize_attention=True)
    m = make_bert()
    quantize_(m, cfg)
    m.train()
    params = dict(quantizer_parameters(m))
    logits(m, ids)  # first batch initialises the step sizes
    initial = {n: p.detach().clone() for n, p in params.items()}
    for _ in range(2):  # train a little so the learned scales differ from their initial values
        m(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
        with torch.no_grad():
            for p in m.parameters():
                if p.grad is not None:
                    p -= 0.05 * p.grad
                    p.grad = None
    assert any(not torch.equal(p, initial[n]) for n, p in params.items())
    m.eval()
    expected = logits(m, ids)
    save_file(m.state_dict(), tmp_path / "model.safetensors")
    saved_config = cfg.to_dict()

    fresh = make_bert(seed=5)
    quantize_(fresh, QuantConfig.from_dict(saved_config))
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    assert torch.equal(logits(fresh.eval(), ids), expected)


def test_rebuild_after_set_bits_uses_the_current_bits(make_bert, ids, tmp_path):
    """The progressive schedule: quantize at 8 bits, lower to W1A1 in place, save; a fresh model
    quantized straight at W1A1 with the same options loads that state exactly."""
    cfg = QuantConfig(w_bits=8, quantize_embeddings=True, quantize_attention=True)
    m = make_bert()
    quantize_(m, cfg)
    set_bits_(m, w_bits=1, a_bits=1)
    m.train()
    m(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()  # initialises α, gives β a gradient
    with torch.no_grad():
        for _, p in quantizer_parameters(m):
            p -= 0.1 * p.grad
    expected = logits(m.eval(), ids)
    save_file(m.state_dict(), tmp_path / "model.safetensors")
    fresh = make_bert(seed=3)
    quantize_(fresh, cfg.replace(w_bits=1, a_bits=1))
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    assert torch.equal(logits(fresh.eval(), ids), expected)


def test_quantizer_parameters_are_found_by_name(make_bert):
    m = make_bert()
    quantize_(m, QuantConfig(w_bits=2, a_bits=1, quantize_attention=True))
    names = [n for n, _ in quantizer_parameters(m)]
    # elastic input quantizer (α, β) on 12 layers + output quantizer on query, key, value of 2 layers
    assert len(names) == 2 * (12 + 6)
    assert "bert.encoder.layer.0.attention.self.key.output_quantizer.alpha" in names
    assert all(".weight_quantizer." not in n for n in names)  # TWN has nothing to learn


@pytest.mark.parametrize("kwargs, message", [
    ({"w_bits": 3}, r"w_bits=3 is not supported; choose one of 1, 2, 4, 8, 32 \(32 = full precision\)"),
    ({"a_bits": 16}, "a_bits=16 is not supported"),
    ({"w_bits": 4, "weight_quantizer": "twn"},
     "weight_quantizer 'twn' supports w_bits 2, not 4; for w_bits=4 use auto or one of: uniform, lsq"),
    ({"a_bits": 1, "act_quantizer": "minmax"},
     "act_quantizer 'minmax' supports a_bits 2, 4, 8, not 1; for a_bits=1 use auto or one of: elastic"),
    ({"weight_quantizer": "xnor"}, r"weight_quantizer 'xnor' is unknown; choose auto or one of: uniform \(2, 4, 8 "
                                   r"bits\), lsq \(2, 4, 8 bits\), twn \(2 bits\), bwn \(1 bit\)"),
    ({"granularity": "channel"}, "is not one of 'row', 'tensor'"),
    ({"clip_ratio": 1.5}, r"clip_ratio=1.5 must be in \(0, 1\]"),
    ({"clip_val": 0}, "clip_val=0.0 must be a positive number"),
    ({"version": 3}, "QuantConfig version 3 is not supported"),
    ({"attention": "ternary"}, "attention: 'ternary' is not one of 'full', 'binary'"),
    ({"attention": "binary", "version": 1},
     "attention / ffn_act_quantizer / embedding_bits / ffn_activation need QuantConfig version 2"),
    ({"ffn_activation": "tanh"}, "ffn_activation"),
    ({"ffn_act_quantizer": "relu"}, "ffn_act_quantizer 'relu' is unknown"),
    ({"ffn_act_quantizer": "minmax", "a_bits": 1}, "ffn_act_quantizer 'minmax' supports a_bits 2, 4, 8, not 1"),
    ({"target_modules": []}, "target_modules is empty"),
    ({"w_bit": 2}, "unknown key 'w_bit'; did you mean 'w_bits'"),
])
def test_config_validation_messages(kwargs, message):
    with pytest.raises(ConfigError, match=message) as err:
        QuantConfig.from_dict(kwargs)
    assert "\n" not in str(err.value)


def test_config_round_trip():
    cfg = QuantConfig(w_bits=1, a_bits=1, clip_val=2.5, target_modules=["query", "key"], quantize_embeddings=True)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg


def test_targets_matching_nothing_and_double_quantization_are_errors(make_bert):
    with pytest.raises(ConfigError, match="matched no linear layer or embedding in BertForSequenceClassification; "
                                          "candidates: word_embeddings, position_embeddings, token_type_embeddings, "
                                          "query, key, value, dense"):
        quantize_(make_bert(), QuantConfig(w_bits=8, target_modules=["q_proj"]))
    m = make_bert()
    quantize_(m, QuantConfig(w_bits=8))
    with pytest.raises(ConfigError, match="already quantized; change bits with set_bits_"):
        quantize_(m, QuantConfig(w_bits=4))


def test_size_estimate_arithmetic(make_bert, make_gpt2):
    m = make_bert()
    fp = 4 * sum(p.numel() for p in m.parameters())
    assert estimate_size(m)["total_bytes"] == fp
    quantize_(m, QuantConfig(w_bits=1, quantize_embeddings=False))
    est = estimate_size(m)
    layers = [x for _, x in quantized_modules(m)]
    n_q = sum(x.weight.numel() for x in layers)
    assert est["quantized_weight_bytes"] == n_q // 8
    assert est["scale_bytes"] == 4 * sum(x.out_features for x in layers)  # one fp32 α per row
    assert est["fp32_bytes"] == fp - 4 * n_q
    g = make_gpt2()
    quantize_(g, QuantConfig(w_bits=2, target_modules=["c_fc"], quantize_embeddings=True))
    wte = g.transformer.wte.weight.numel()
    # the tied head still needs the latent embedding in fp32: it counts once at fp32, once packed
    assert estimate_size(g)["quantized_weight_bytes"] == (wte + 2 * 32 * 128) * 2 // 8
    assert estimate_size(g)["fp32_bytes"] == 4 * (sum(p.numel() for p in g.parameters()) - 2 * 32 * 128)


def test_embeddings_named_in_targets_are_quantized(make_bert):
    m = make_bert()
    swapped = quantize_(m, QuantConfig(w_bits=1, target_modules=r".*(layer\.\d+\..*|position_embeddings)"))
    assert "bert.embeddings.position_embeddings" in swapped
    pos = m.bert.embeddings.position_embeddings
    assert isinstance(pos, QuantEmbedding) and pos.w_bits == 1
    ids = torch.arange(5).unsqueeze(0)
    assert torch.equal(pos(ids)[0], pos.fake_quant_weight()[:5])


def test_embedding_bits_keep_the_table_above_the_linears_through_every_stage(make_bert):
    from kronbit.quant import set_bits_

    m = make_bert()
    quantize_(m, QuantConfig(w_bits=1, a_bits=1, embedding_bits=2))
    emb = m.bert.embeddings.word_embeddings
    assert type(emb) is QuantEmbedding and emb.w_bits == 2 and emb.weight_quantizer_name == "twn"
    assert {mod.w_bits for n, mod in quantized_modules(m) if mod is not emb} == {1}
    set_bits_(m, w_bits=32, a_bits=32)
    assert emb.w_bits == 32 and emb.weight_quantizer is None  # full precision stays full precision
    set_bits_(m, w_bits=4, a_bits=32)
    assert emb.w_bits == 4  # max(w_bits, embedding_bits)
    set_bits_(m, w_bits=1, a_bits=1)
    assert emb.w_bits == 2


@pytest.mark.parametrize("kwargs,match", [
    (dict(embedding_bits=3), "embedding_bits=3 is not supported"),
    (dict(embedding_bits=32), "embedding_bits=32 is not supported"),
    (dict(w_bits=1, embedding_bits=2, version=1), "need QuantConfig version 2"),
    (dict(w_bits=1, embedding_bits=2, weight_quantizer="bwn"), "weight_quantizer 'bwn' supports embedding_bits 1"),
])
def test_embedding_bits_are_checked_eagerly(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantConfig(**kwargs)
