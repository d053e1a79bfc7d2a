"""Checkpoints written by kronbit 0.1.0 (before the package was reorganised into layers) still load
and compute what they computed then. The fixtures in tests/fixtures/v0.1.0 were written by that
release's own code (tiny random-init models: a W1A1 BERT with quantized embeddings, compressed and
packed, and a GPT-2 with its odd blocks Kronecker-decomposed), together with their logits."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import kronbit

FIXTURES = Path(__file__).parent / "fixtures" / "v0.1.0"


@pytest.fixture(scope="module")
def expected():
    return load_file(str(FIXTURES / "expected.safetensors"))


def _bert_inputs(expected):
    return {k: expected[f"bert_{k}"] for k in ("input_ids", "attention_mask", "token_type_ids")}


@pytest.mark.parametrize("name", ["bert-w1a1-compressed", "bert-w1a1-packed"])
def test_old_bert_checkpoints_reproduce_their_logits(name, expected, monkeypatch):
    # Bit for bit on the torch path. The bit-level W1A1 kernel (what load_packed picks by default)
    # rounds once where the BLAS rounds per partial sum: on this random-init model, whose biases
    # are all zero, an exact zero pre-activation against the BLAS's ±1e-9 flips the next sign.
    monkeypatch.setenv("KRONBIT_KERNEL_PATH", "off")
    model = kronbit.load_model(FIXTURES / name)
    with torch.no_grad():
        logits = model(**_bert_inputs(expected)).logits
    assert torch.equal(logits, expected["bert_logits"])


def test_old_kronecker_gpt2_reproduces_its_logits(expected):
    model = kronbit.load_model(FIXTURES / "gpt2-kron-compressed")
    with torch.no_grad():
        logits = model(input_ids=expected["gpt2_input_ids"]).logits
    # To float32 rounding, not bit for bit: the BLAS sums in an order that depends on the thread
    # count (1 thread differs from the 2 the fixture was written with by ~1e-8 of logits ~0.3).
    torch.testing.assert_close(logits, expected["gpt2_logits"], rtol=1e-5, atol=1e-6)


def test_load_model_takes_a_task_by_name(expected, monkeypatch):
    # "sst2" (two labels) names the head the checkpoint already has: it comes back as saved; an
    # unknown name is a one-line error naming the known tasks, not an AttributeError.
    monkeypatch.setenv("KRONBIT_KERNEL_PATH", "off")
    model = kronbit.load_model(FIXTURES / "bert-w1a1-compressed", task="sst2")
    with torch.no_grad():
        logits = model(**_bert_inputs(expected)).logits
    assert torch.equal(logits, expected["bert_logits"])
    from kronbit.core.errors import DataError
    with pytest.raises(DataError, match="unknown task 'sst-3'; did you mean 'sst2'"):
        kronbit.load_model(FIXTURES / "bert-w1a1-compressed", task="sst-3")
