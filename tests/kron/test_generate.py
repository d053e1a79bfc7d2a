"""Greedy decoding with the KV cache through Kronecker layers (embedding, tied head, blocks)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kronbit.kron import KroneckerConfig, kroneckerize_


def test_kv_cache_decoding_equals_recomputing_every_step():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    kroneckerize_(model, KroneckerConfig(compression=2, layers="odd", embeddings=True, embedding_factor=2))
    prompt = torch.randint(0, 48, (1, 5))
    kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kw)
        fresh = model.generate(prompt, use_cache=False, **kw)
        # and every step's logits agree with a full forward over the generated sequence
        steps = model.generate(prompt, use_cache=True, output_logits=True, return_dict_in_generate=True, **kw)
        full = model(cached).logits[0, prompt.shape[1] - 1:-1]
    assert torch.equal(cached, fresh) and cached.shape[1] == 17
    assert torch.allclose(torch.cat(steps.logits), full, atol=1e-5)
