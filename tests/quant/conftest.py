"""Tiny random-init BERT (``make_tiny_bert``) and GPT-2 models for the quantization tests."""

from __future__ import annotations

import pytest
import torch
from helpers import single_thread


_one_thread = pytest.fixture(autouse=True)(single_thread)


@pytest.fixture
def make_bert(tiny_bert):
    """Factory: the tiny BertForSequenceClassification of ``tests/conftest.py::make_tiny_bert``
    (via its ``tiny_bert`` fixture; ``import conftest`` is ambiguous with one conftest per test
    folder), eval mode; ``seed`` gives a fresh random init of the same architecture instead."""
    from transformers import BertConfig, BertForSequenceClassification

    def make(seed: int | None = None):
        if seed is None:
            return BertForSequenceClassification.from_pretrained(tiny_bert).eval()
        torch.manual_seed(seed)
        return BertForSequenceClassification(BertConfig.from_pretrained(tiny_bert)).eval()

    return make


@pytest.fixture
def make_gpt2():
    """Factory: tiny GPT-2 (Conv1D projections, LM head tied to the word embeddings), eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def make(seed: int = 0):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
                                          bos_token_id=0, eos_token_id=0)).eval()

    return make


@pytest.fixture
def ids() -> torch.Tensor:
    """Token ids valid for both tiny models (the BERT vocabulary has 31 entries)."""
    return torch.randint(5, 29, (2, 9), generator=torch.Generator().manual_seed(1))
