"""The lean encoder-layer forward of packed true-W1A1 models (quant.lean_layer): the same output
as the Hugging Face forward bit for bit, used only where nothing could tell the difference, and
plans that notice a tensor or module assigned after they were built."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers.models.bert import modeling_bert
from transformers.models.roberta import modeling_roberta

from kronbit.formats import export_packed, load_packed
from kronbit.quant import kernels
from kronbit.quant.lean_layer import MARK, wire_lean_layers_
from kronbit.quant.packed import PackedLinear, select_kernels_

from test_binary_attention import KINDS, _batch, _binary, _logits

SELF_OUTPUT = {"bert": modeling_bert.BertSelfOutput, "roberta": modeling_roberta.RobertaSelfOutput}

pytestmark = pytest.mark.skipif(kernels.extension() is None, reason="no C++ extension here")


def _layers(model):
    return [m for m in model.modules() if type(m).__name__ in ("BertLayer", "RobertaLayer")]


@pytest.fixture
def packed(request, tmp_path):
    kind = request.param
    model = _binary(kind)
    export_packed(model, tmp_path / "p")
    return kind, load_packed(tmp_path / "p")


def _hf_calls(kind, monkeypatch) -> list:
    """Counts calls of the Hugging Face self-output forward, which only the class forward makes."""
    calls, cls = [], SELF_OUTPUT[kind]
    original = cls.forward

    def counted(self, *a, **k):
        calls.append(1)
        return original(self, *a, **k)
    monkeypatch.setattr(cls, "forward", counted)
    return calls


def _hf_logits(model, batch):
    wire_lean_layers_(model, on=False)
    try:
        return _logits(model, batch)
    finally:
        wire_lean_layers_(model)


@pytest.mark.parametrize("packed", KINDS, indirect=True)
def test_lean_forward_equals_the_hugging_face_forward_bit_for_bit(packed, monkeypatch):
    kind, model = packed
    assert all(layer.__dict__.get(MARK) for layer in _layers(model))
    batch = _batch(5)
    calls = _hf_calls(kind, monkeypatch)
    lean = _logits(model, batch)
    assert calls == []  # the lean forward ran: no Hugging Face sub-forward
    want = _hf_logits(model, batch)
    assert len(calls) == len(_layers(model))
    assert torch.equal(lean, want)
    with torch.inference_mode():  # and under inference mode (no version counters), twice
        assert torch.equal(model(**batch).logits, want) and torch.equal(model(**batch).logits, want)


@pytest.mark.parametrize("packed", KINDS, indirect=True)
def test_anything_observable_takes_the_hugging_face_forward(packed, monkeypatch):
    kind, model = packed
    batch = _batch(5)
    want = _logits(model, batch)
    calls = _hf_calls(kind, monkeypatch)
    layers = _layers(model)
    seen = []
    handle = layers[0].attention.self.query.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert torch.equal(_logits(model, batch), want)
    handle.remove()
    assert len(seen) == 1 and len(calls) == 1  # the hooked layer only
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True, output_attentions=True)
    assert torch.equal(out.logits, want) and len(out.hidden_states) == len(layers) + 1
    assert len(calls) == 1 + len(layers)
    model.train()
    with torch.no_grad():
        model(**batch)
    model.eval()
    assert len(calls) == 1 + 2 * len(layers)
    _logits(model, batch)
    assert len(calls) == 1 + 2 * len(layers)  # back on the lean forward


@pytest.mark.parametrize("packed", ["bert"], indirect=True)
def test_assigned_modules_and_parameters_are_seen_at_once(packed):
    _, model = packed
    batch = _batch(5)
    _logits(model, batch)  # plans and paths built
    layer = _layers(model)[-1]
    torch.manual_seed(1)
    ln = nn.LayerNorm(layer.output.LayerNorm.normalized_shape, eps=layer.output.LayerNorm.eps)
    nn.init.normal_(ln.weight)
    layer.output.LayerNorm = ln  # a new module: the lean path must use it
    dense = layer.attention.output.dense
    assert isinstance(dense, PackedLinear)
    dense.bias = nn.Parameter(dense.bias.detach() + 0.5)  # a new parameter: the kernel's plan must use it
    got = _logits(model, batch)
    assert torch.equal(got, _hf_logits(model, batch))
    select_kernels_(model, "off")  # off the kernels: the float path, the same model
    want = _logits(model, batch)
    assert ((got - want).abs().max() / want.abs().max()) < 1e-5


@pytest.mark.parametrize("packed", ["bert"], indirect=True)
def test_off_the_kernels_no_layer_is_lean(packed):
    _, model = packed
    select_kernels_(model, "off")
    assert not any(layer.__dict__.get(MARK) or "forward" in layer.__dict__ for layer in _layers(model))
    select_kernels_(model)
    assert all(layer.__dict__.get(MARK) for layer in _layers(model))


@pytest.mark.parametrize("packed", ["bert"], indirect=True)
def test_a_deep_copy_runs_its_own_modules(packed):
    _, model = packed
    batch = _batch(5)
    want = _logits(model, batch)
    twin = copy.deepcopy(model)
    assert all(layer.forward.__self__ is layer for layer in _layers(twin))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the original changes; the copy must not
    assert torch.equal(_logits(twin, batch), want)
