"""Tiny random-init BERT classifiers for the format tests (export, ONNX, size, damaged files)."""

from __future__ import annotations

import pytest
import torch
from helpers import single_thread


_one_thread = pytest.fixture(autouse=True)(single_thread)


@pytest.fixture
def make_bert(tiny_bert):
    """Factory: the tiny BertForSequenceClassification saved by the ``tiny_bert`` fixture, eval mode."""
    from transformers import BertForSequenceClassification

    return lambda: BertForSequenceClassification.from_pretrained(tiny_bert).eval()


@pytest.fixture
def calibrate():
    """One forward pass, as training would have done: learned activation quantizers take their
    initial scales from the first batch."""

    def run(model):
        with torch.no_grad():
            model(input_ids=torch.randint(5, 29, (2, 9), generator=torch.Generator().manual_seed(1)))
        return model

    return run
