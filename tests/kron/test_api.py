"""kroneckerize_ / densify_ on tiny GPT-2 (Conv1D, tied head) and Llama (nn.Linear) models.

Tolerances: "unchanged" means max |Δlogit| ≤ 1e-10 with the model in float64 (full-rank
decomposition reorders the sums, so bit-equality is not expected); a save/load round trip is
bit-exact (torch.equal).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from kronbit.core.errors import ConfigError
from kronbit.kron import (KroneckerConfig, KroneckerEmbedding, KroneckerLinear, KroneckerTiedHead, densify_,
                          kroneckerize_)
from kronbit.kron.api import block_index
from kronbit.kron.nkp import balanced_shapes
from kronbit.core.swap import count_parameters

KNGPT2 = dict(compression=2, layers="odd", embeddings=True, embedding_factor=2)
TOL = 1e-10


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def perturb_(model, seed=3):
    """Stand-in for training: move every parameter so a round trip cannot pass by luck."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ---- exactness at full rank


def test_full_rank_conv1d_and_linear_leave_gpt2_outputs_unchanged(make_gpt2, ids):
    model = make_gpt2(dtype=torch.float64)
    ref = logits(model, ids)
    cfg = KroneckerConfig(target_modules=["c_attn", "c_proj", "c_fc", "lm_head"], a_shape=[2, 2], rank="full")
    report = kroneckerize_(model, cfg)
    names = [r.name for r in report.layers]
    assert len(names) == 9 and "lm_head" in names
    assert {r.kind for r in report.layers} == {"conv1d", "linear"}
    assert isinstance(model.transformer.h[0].attn.c_attn, KroneckerLinear)
    assert model.transformer.h[0].attn.c_attn.fan_in_fan_out and not model.lm_head.fan_in_fan_out
    assert all(r.relative_error < 1e-14 for r in report.layers)
    assert (logits(model, ids) - ref).abs().max() <= TOL
    # the head's Hugging Face tie is dropped (its weight is gone): tie_weights() must not plant one
    model.tie_weights()
    assert "lm_head.weight" not in model.state_dict() and not model.config.tie_word_embeddings
    assert (logits(model, ids) - ref).abs().max() <= TOL


def test_full_rank_leaves_llama_outputs_unchanged(make_llama, ids):
    model = make_llama(dtype=torch.float64)
    ref = logits(model, ids)
    report = kroneckerize_(model, KroneckerConfig(b_shape=[2, 2], rank="full"))
    assert len(report.layers) == 2 * 7   # q k v o gate up down in each block (default targets)
    assert isinstance(model.model.layers[1].mlp.down_proj, KroneckerLinear)
    assert type(model.lm_head) is nn.Linear
    assert (logits(model, ids) - ref).abs().max() <= TOL


def test_full_rank_without_shapes_picks_the_most_balanced_shape(make_llama, ids):
    model = make_llama(dtype=torch.float64)
    ref = logits(model, ids)
    report = kroneckerize_(model, KroneckerConfig(rank="full"))
    assert len(report.layers) == 2 * 7
    for r in report.layers:
        assert (tuple(r.a_shape), tuple(r.b_shape)) == balanced_shapes(*r.shape)
    by_name = {r.name.rsplit(".", 1)[-1]: r for r in report.layers}
    assert by_name["q_proj"].a_shape == [4, 8] and by_name["q_proj"].b_shape == [8, 4]  # 32×32: 32 entries each
    assert (logits(model, ids) - ref).abs().max() <= TOL
    # the frozen config names the shapes, so a rebuild does not depend on the pick
    frozen = report.config.layer_shapes
    assert frozen["model.layers.0.self_attn.q_proj"][:4] == [*by_name["q_proj"].a_shape, *by_name["q_proj"].b_shape]


# ---- KnGPT2: compression 2, odd blocks, embedding (+ tied head)


def test_kngpt2_config_on_gpt2_params_and_structure(make_gpt2, ids):
    model = make_gpt2()
    before = count_parameters(model)
    report = kroneckerize_(model, KroneckerConfig(**KNGPT2))
    h = model.transformer.h
    assert isinstance(h[0].attn.c_attn, Conv1D) and isinstance(h[1].attn.c_attn, KroneckerLinear)
    assert isinstance(model.transformer.wte, KroneckerEmbedding)
    assert isinstance(model.lm_head, KroneckerTiedHead)
    assert report.params_before == before and report.params_after == count_parameters(model)
    saved = sum(r.params_before - r.params_after for r in report.layers)
    assert report.params_before - report.params_after == saved
    for r in report.layers:
        if r.kind == "conv1d":
            weight = r.shape[0] * r.shape[1]
            assert r.params_after - r.shape[0] <= weight / 2 * 1.01      # minus bias: factor 2
            assert r.flops_speedup >= 1.25
            assert 0 < r.relative_error < 1
    emb = next(r for r in report.layers if r.kind == "embedding")
    assert emb.a_shape == [100, 16] and emb.b_shape == [1, 2] and emb.params_after == 100 * 16 + 2
    assert "transformer.wte" in str(report) and "smaller" in str(report)
    assert json.loads(json.dumps(report.to_dict()))["params_after"] == report.params_after
    # trainable end to end: gradients reach the embedding factors through lookup and head
    model.train()
    out = model(ids, labels=ids)
    out.loss.backward()
    assert model.transformer.wte.a.grad is not None and model.transformer.wte.b.grad.abs().sum() > 0
    assert h[1].mlp.c_fc.a.grad is not None
    # Hugging Face's own tie_weights() leaves the Kronecker tie alone
    model.tie_weights()
    assert isinstance(model.lm_head, KroneckerTiedHead)


def test_tie_head_false_keeps_a_dense_untied_head(make_gpt2, ids):
    model = make_gpt2()
    old_weight = model.lm_head.weight.detach().clone()
    report = kroneckerize_(model, KroneckerConfig(target_modules=[], embeddings=True, tie_head=False))
    assert type(model.lm_head) is nn.Linear and torch.equal(model.lm_head.weight, old_weight)
    assert not model.config.tie_word_embeddings and report.notes
    assert report.config.tie_head is False
    model.tie_weights()
    assert type(model.lm_head) is nn.Linear


def test_filter_fn_and_explicit_layers(make_gpt2):
    model = make_gpt2()
    report = kroneckerize_(model, KroneckerConfig(a_shape=[2, 1], layers=[0]),
                           filter_fn=lambda module, name: ".mlp." in name)
    assert [r.name for r in report.layers] == ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    assert block_index("transformer.h.11.mlp.c_fc") == 11 and block_index("lm_head") is None


def test_explicit_per_layer_shapes_and_ranks(make_gpt2):
    model = make_gpt2()
    shapes = {"transformer.h.0.mlp.c_fc": [4, 2, 32, 16, 3], "transformer.h.1.mlp.c_fc": [1, 32, 128, 1]}
    report = kroneckerize_(model, KroneckerConfig(target_modules=["c_fc"], rank=2, layer_shapes=shapes))
    got = {r.name: (r.a_shape, r.b_shape, r.rank) for r in report.layers}
    assert got == {"transformer.h.0.mlp.c_fc": ([4, 2], [32, 16], 3),
                   "transformer.h.1.mlp.c_fc": ([1, 32], [128, 1], 2)}
    assert model.transformer.h[1].mlp.c_fc.a.shape == (2, 1, 32)


# ---- rebuild from config + state dict


def test_rebuild_from_frozen_config_and_safetensors_gpt2(make_gpt2, ids, tmp_path):
    model = make_gpt2(seed=0)
    report = kroneckerize_(model, KroneckerConfig(**KNGPT2))
    perturb_(model)
    ref = logits(model, ids)
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    (tmp_path / "kron.json").write_text(json.dumps(report.config.to_dict()))
    # the frozen config names every layer's shapes: the chooser is not rerun on the new weights
    frozen = KroneckerConfig.from_dict(json.loads((tmp_path / "kron.json").read_text()))
    assert frozen.layer_shapes and frozen.compression is None and frozen.tie_head is True

    fresh = make_gpt2(seed=1)
    kroneckerize_(fresh, frozen)
    fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors")), strict=True)
    assert torch.equal(logits(fresh, ids), ref)


def test_rebuild_llama_with_save_model(make_llama, ids, tmp_path):
    model = make_llama(seed=0)
    report = kroneckerize_(model, KroneckerConfig(compression=2, embeddings=True, embedding_factor=4))
    assert type(model.lm_head) is nn.Linear   # Llama's head is untied here: left dense
    perturb_(model)
    ref = logits(model, ids)
    save_model(model, str(tmp_path / "m.safetensors"))
    fresh = make_llama(seed=5)
    kroneckerize_(fresh, report.config.to_dict())
    load_model(fresh, str(tmp_path / "m.safetensors"), strict=True)
    assert torch.equal(logits(fresh, ids), ref)


def test_compressed_checkpoint_round_trip(make_gpt2, ids, tmp_path):
    """Through kronbit.formats.compressed: config.json + transforms replayed on a model built from it."""
    from kronbit.formats.compressed import load_compressed, save_compressed

    model = make_gpt2()
    report = kroneckerize_(model, KroneckerConfig(**KNGPT2))
    perturb_(model)
    ref = logits(model, ids)
    save_compressed(model, None, tmp_path / "ckpt", {"method": "kngpt2"},
                    [{"kind": "kron", "config": report.config.to_dict()}])
    loaded = load_compressed(tmp_path / "ckpt")
    assert isinstance(loaded.lm_head, KroneckerTiedHead)
    assert torch.equal(logits(loaded, ids), ref)


def test_compressed_round_trip_with_dense_tied_embedding(ids, tmp_path):
    """Blocks decomposed, the tied embedding left dense: the file may hold the tie under the head's
    name only; the embedding must still come back with the trained values (regression test)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from kronbit.formats.compressed import load_compressed, save_compressed

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                         max_position_embeddings=64)).eval()
    report = kroneckerize_(model, KroneckerConfig(compression=2, layers=[1, 2]))
    perturb_(model)
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(0.5)  # trained away from any fresh initialisation
    ref = logits(model, ids)
    save_compressed(model, None, tmp_path / "ckpt", {"method": "kngpt2"},
                    [{"kind": "kron", "config": report.config.to_dict()}])
    loaded = load_compressed(tmp_path / "ckpt")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert torch.equal(logits(loaded, ids), ref)


# ---- densify


def test_densify_restores_types_ties_and_outputs(make_gpt2, ids):
    model = make_gpt2(dtype=torch.float64)
    kroneckerize_(model, KroneckerConfig(**KNGPT2))
    perturb_(model)
    kron_out = logits(model, ids)
    swapped = densify_(model)
    assert set(swapped) >= {"transformer.wte", "lm_head", "transformer.h.1.mlp.c_fc"}
    assert type(model.transformer.h[1].mlp.c_fc) is Conv1D and type(model.transformer.wte) is nn.Embedding
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.config.tie_word_embeddings and model.all_tied_weights_keys == {
        "lm_head.weight": "transformer.wte.weight"}
    assert (logits(model, ids) - kron_out).abs().max() <= TOL
    model.tie_weights()
    assert (logits(model, ids) - kron_out).abs().max() <= TOL
    assert densify_(model) == []


# ---- bad configs: one line, naming the layer and the valid choices, nothing swapped


def one_line_error(fn) -> str:
    with pytest.raises(ConfigError) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_factor_shape_names_layer_and_choices_and_changes_nothing(make_gpt2):
    model = make_gpt2()
    # divides c_attn (96×32) but not the next layer, attn.c_proj (32×32): fails before any swap
    msg = one_line_error(lambda: kroneckerize_(model, KroneckerConfig(a_shape=[3, 1])))
    assert msg.startswith("layer transformer.h.0.attn.c_proj (W 32×32 as out×in): a_shape (3, 1) does not divide")
    assert "d1 dividing 32 (1, 2, 4, 8, 16, 32)" in msg
    assert not any(isinstance(m, KroneckerLinear) for m in model.modules())


def test_rank_above_max(make_gpt2):
    msg = one_line_error(lambda: kroneckerize_(make_gpt2(), KroneckerConfig(a_shape=[2, 2], rank=5)))
    assert "transformer.h.0.attn.c_attn" in msg and "rank 5 is above the maximum 4" in msg


def test_target_matching_nothing_lists_candidates(make_gpt2):
    msg = one_line_error(lambda: kroneckerize_(make_gpt2(), KroneckerConfig(target_modules=["q_proj"],
                                                                          compression=2)))
    assert "matched no linear layer" in msg and "c_attn" in msg and "c_fc" in msg


@pytest.mark.parametrize("kwargs,expected", [
    (dict(compression=2, layers=[5]), "layers [5] out of range: GPT2LMHeadModel has blocks 0-1"),
    (dict(target_modules=[], embeddings=True, embedding_factor=5),
     "embedding_factor 5 does not divide the embedding dim 32 of transformer.wte; valid: 2, 4, 8, 16, 32"),
    (dict(target_modules=[], embeddings=True, embedding_rank=3), "rank 3 is above the maximum 2"),
    (dict(compression=2, layer_shapes={"h.0.nope": [1, 1, 1, 1]}), "layer_shapes names 'h.0.nope'"),
    (dict(compression=1000), "no factor shape of W (96, 32) fits"),
    (dict(layer_shapes={"transformer.h.0.attn.c_attn": [2, 2, 48, 16]}),
     "layer transformer.h.0.attn.c_proj (W 32×32 as out×in): no factor shapes for it"),
    (dict(target_modules=["c_fc"], layer_shapes={"transformer.h.0.mlp.c_fc": [2, 2, 64, 8]}),
     "A (2, 2) ⊗ B (64, 8) is (128, 16), not W (128, 32)"),
    (dict(target_modules=["lm_head"], a_shape=[2, 2], embeddings=True),
     "lm_head is both in target_modules and tied"),
])
def test_model_dependent_config_errors(make_gpt2, kwargs, expected):
    assert expected in one_line_error(lambda: kroneckerize_(make_gpt2(), KroneckerConfig(**kwargs)))


@pytest.mark.parametrize("data,expected", [
    ({"compresion": 2}, "did you mean 'compression'"),
    ({"compression": 2, "a_shape": [2, 2]}, "not both"),
    ({"compression": 2, "rank": "full"}, "rank 'full'"),
    ({"rank": 0, "a_shape": [2, 2]}, "rank must be an integer ≥ 1 or 'full'"),
    ({"rank": "max", "a_shape": [2, 2]}, "rank must be an integer ≥ 1 or 'full'"),
    ({}, "set a_shape and/or b_shape, or compression"),
    ({"rank": 2}, "or rank: full"),
    ({"compression": 0.5}, "compression must be > 1"),
    ({"compression": 2, "layers": "odds"}, "is not one of odd, even, all"),
    ({"compression": 2, "min_speedup": 0.9}, "min_speedup must be ≥ 1"),
    ({"a_shape": [2, 2, 2]}, "a_shape must be two positive integers"),
    ({"compression": 2, "tie_head": True}, "tie_head applies only with embeddings"),
    ({"compression": 2, "version": 3}, "version 3 is not supported"),
    ({"compression": 2, "shape_speed": "guess"}, "shape_speed: 'guess' is not one of flops, measured"),
    ({"compression": 2, "shape_speed": "measured", "version": 1}, "shape_speed needs KroneckerConfig version 2"),
])
def test_config_validation(data, expected):
    assert expected in one_line_error(lambda: KroneckerConfig.from_dict(data))


def test_config_round_trips_through_dict():
    cfg = KroneckerConfig(**KNGPT2)
    assert KroneckerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.version == 2
    old = KroneckerConfig.from_dict({**cfg.to_dict(), "version": 1})  # a version-1 config still reads
    assert old.version == 1 and old.shape_speed == "flops"
