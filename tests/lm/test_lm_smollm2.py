"""The real packaged decoder: SmolLM2-135M from its GGUF file (slow: ~20 s to dequantize)."""

from __future__ import annotations

import os

import pytest
import torch

from kronbit.models import decoders, gguf
from kronbit.models.packaged import packaged_path
from kronbit.data.lm import read_text
from kronbit.core.errors import ModelError
from kronbit.core.swap import count_parameters
from kronbit.workflows.perplexity import perplexity


@pytest.fixture(scope="module")
def smollm2_gguf():
    try:
        path = packaged_path("smollm2")
        gguf._require_gguf_reader()
    except ModelError as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))
    return path


@pytest.mark.slow
@torch.no_grad()
def test_smollm2_converts_to_plain_llama_caches_and_scores_wikitext(smollm2_gguf, wikitext_test,
                                                                    tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    monkeypatch.setenv("KRONBIT_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(max(1, os.cpu_count() or 1))  # a real model: use the cores
    raw = gguf.load_gguf_model(smollm2_gguf)
    plain = gguf.to_plain_causal_lm(raw)
    ids = torch.tensor([[504, 3458, 282, 4649, 314, 3820, 30, 378, 2734]])
    assert torch.equal(raw(input_ids=ids).logits, plain(input_ids=ids).logits)
    assert type(plain) is LlamaForCausalLM and not hasattr(plain.config, "quantization_config")
    assert plain.config.num_hidden_layers == 30 and 134e6 < count_parameters(plain) < 135e6
    del raw

    # What a cache miss does (convert_gguf), then a load that must come from the cache.
    folder = gguf.save_causal_lm(plain, gguf.load_gguf_tokenizer(smollm2_gguf),
                                     gguf.gguf_cache_dir(smollm2_gguf), gguf._gguf_source(smollm2_gguf))
    assert folder.parent == tmp_path / "cache" / "models" and (folder / "model.safetensors").is_file()

    def no_reconvert(*a, **k):
        raise AssertionError("the cached conversion was not used")

    monkeypatch.setattr(gguf, "convert_gguf", no_reconvert)
    model = decoders.load_causal_lm("packaged:smollm2")
    tok = decoders.load_causal_tokenizer("packaged:smollm2")
    assert torch.equal(model(input_ids=ids).logits, plain(input_ids=ids).logits)

    # Blocks of 256 keep this cheap. Measured on the first 4096 tokens: blocks of 256 -> 36.1,
    # blocks of 512 -> 27.6, windows of 1024 with stride 512 -> 18.1.
    r = perplexity(model, tok, read_text(wikitext_test), max_length=256, stride=256, max_tokens=1000)
    assert r["tokens"] == 1000 and r["tokens_scored"] == 996 and r["windows"] == 4
    assert 15 < r["ppl"] < 80, r
