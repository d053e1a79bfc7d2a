"""Sliding-window perplexity against hand computations on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import tiny_gpt2, tiny_llama
from kronbit.core.errors import ConfigError
from kronbit.workflows.perplexity import perplexity, sliding_windows

N, V = 50, 64


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    build = tiny_gpt2 if request.param == "gpt2" else tiny_llama
    return build(vocab_size=V, max_position_embeddings=64) if request.param == "llama" else \
        build(vocab_size=V, n_positions=64)


def _logprob_sum(model, ctx_ids, targets):
    logits = model(input_ids=ctx_ids.unsqueeze(0)).logits[0].float()
    return F.cross_entropy(logits, targets, reduction="sum").item()


@torch.no_grad()
def test_stride_equal_to_max_length_is_blockwise_nll(model, ids):
    r = perplexity(model, ids, max_length=16, stride=16)
    total, count = 0.0, 0
    for b in range(0, N, 16):
        block = ids[b:b + 16]
        total += _logprob_sum(model, block[:-1], block[1:])
        count += len(block) - 1
    assert r["tokens_scored"] == count == 46 and r["windows"] == 4
    assert r["nll_sum"] == pytest.approx(total, rel=1e-5)
    assert r["ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)


@torch.no_grad()
def test_small_stride_scores_each_token_once_with_its_window_context(model, ids):
    L, S = 16, 5
    r = perplexity(model, ids, max_length=L, stride=S)
    total = 0.0
    for j in range(1, N):
        begin = max(0, math.ceil((j - L + 1) / S) * S)  # first window (start multiple of S) holding j
        logits = model(input_ids=ids[begin:j].unsqueeze(0)).logits[0, -1]
        total += -torch.log_softmax(logits.float(), -1)[ids[j]].item()
    assert r["tokens_scored"] == N - 1
    assert r["nll_sum"] == pytest.approx(total, rel=1e-5)
    scored = [t for _, e, f in sliding_windows(N, L, S) for t in range(f, e)]
    assert scored == list(range(1, N))  # every token but the first, exactly once, in order


@torch.no_grad()
def test_batching_and_logit_trimming_do_not_change_the_result(model, ids):
    one = perplexity(model, ids, max_length=16, stride=4, batch_size=1)
    many = perplexity(model, ids, max_length=16, stride=4, batch_size=3)
    assert many["nll_sum"] == pytest.approx(one["nll_sum"], rel=1e-5)

    class NoTrim(nn.Module):  # a model whose forward has no logits_to_keep argument
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, use_cache=False):
            return self.inner(input_ids=input_ids, use_cache=use_cache)

    full = perplexity(NoTrim(model).eval(), ids, max_length=16, stride=4)
    assert full["nll_sum"] == pytest.approx(one["nll_sum"], rel=1e-5)


@torch.no_grad()
def test_one_window_equals_the_models_own_loss(model, ids):
    r = perplexity(model, ids, max_length=N, stride=N)
    loss = model(input_ids=ids.unsqueeze(0), labels=ids.unsqueeze(0)).loss.item()
    assert r["nll"] == pytest.approx(loss, rel=1e-5) and r["windows"] == 1


@torch.no_grad()
def test_text_with_tokenizer_equals_ids_and_bf16_is_close(gpt2_tok):
    model = tiny_gpt2(vocab_size=len(gpt2_tok), n_positions=64)
    text = "The quick brown fox jumps over the lazy dog. " * 12
    ids = gpt2_tok(text)["input_ids"]
    a = perplexity(model, gpt2_tok, text, max_length=32, stride=16, max_tokens=100)
    b = perplexity(model, ids[:100], max_length=32, stride=16)
    assert a["tokens"] == 100 and a["nll_sum"] == b["nll_sum"]
    c = perplexity(model, ids[:100], max_length=32, stride=16, bf16=True)
    assert c["nll"] == pytest.approx(b["nll"], rel=0.05)


def test_bad_settings_are_config_errors(ids):
    model = tiny_gpt2(vocab_size=V, n_positions=32)
    with pytest.raises(ConfigError, match="stride must be between 1 and max_length"):
        perplexity(model, ids, max_length=16, stride=17)
    with pytest.raises(ConfigError, match="exceeds the model's context of 32"):
        perplexity(model, ids, max_length=64)
    assert perplexity(model, ids)["max_length"] == 32  # default: the model's context (<= 1024)
