"""Tiny random-init decoders for the Kronecker tests."""

from __future__ import annotations

import pytest
import torch
from helpers import single_thread


_one_thread = pytest.fixture(autouse=True)(single_thread)


def _make_gpt2(seed: int = 0, dtype=torch.float32):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32, bos_token_id=0,
                     eos_token_id=0)
    cfg.architectures = ["GPT2LMHeadModel"]
    return GPT2LMHeadModel(cfg).to(dtype).eval()


def _make_llama(seed: int = 0, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=100)
    cfg.architectures = ["LlamaForCausalLM"]
    return LlamaForCausalLM(cfg).to(dtype).eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def make_gpt2():
    """Factory: the tiny GPT-2 of the brief (Conv1D projections, tied head), seeded, eval mode."""
    return _make_gpt2


@pytest.fixture
def make_llama():
    """Factory: the tiny Llama of the brief (nn.Linear projections, untied head), seeded, eval mode."""
    return _make_llama
