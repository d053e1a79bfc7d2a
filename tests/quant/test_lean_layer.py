"""The lean encoder-layer forward of packed true-W1A1 models (quant.lean_layer): the same output
as the Hugging Face forward bit for bit, used only where nothing could tell the difference, and
plans that notice a tensor or module assigned after they were built."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn
from transformers.models.bert import modeling_bert
from transformers.models.roberta import modeling_roberta

from kronbit.formats import export_packed, load_packed
from kronbit.quant import kernels
from kronbit.quant.lean_layer import MARK, wire_lean_layers_
from kronbit.quant.packed import PackedLinear, kernel_paths, select_kernels_

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
def test_kernel_paths_count_every_packed_layer_by_the_path_it_runs(packed):
    _, model = packed
    n = sum(isinstance(m, PackedLinear) for m in model.modules())
    chosen = select_kernels_(model)
    paths = kernel_paths(model)
    assert sum(paths.values()) == n and paths.get("torch", 0) == n - len(chosen)
    assert all(k == "torch" or k.split("/")[1] in set(chosen.values()) for k in paths)
    select_kernels_(model, "off")
    assert kernel_paths(model) == {"torch": n}


@pytest.mark.parametrize("packed", ["bert"], indirect=True)
def test_a_deep_copy_or_a_pickle_runs_its_own_modules(packed):
    _, model = packed
    batch = _batch(5)
    want = _logits(model, batch)
    twin = copy.deepcopy(model)
    assert all(layer.forward.args[0] is layer for layer in _layers(twin))
    back = pickle.loads(pickle.dumps(model))  # in memory, bytes this test made (files go through safetensors)
    assert all(layer.forward.args[0] is layer for layer in _layers(back))
    assert torch.equal(_logits(back, batch), want)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the original changes; the copy must not
    assert torch.equal(_logits(twin, batch), want)


@pytest.mark.parametrize("packed", ["bert"], indirect=True)
def test_other_calls_and_states_take_the_hugging_face_forward(packed, monkeypatch):
    kind, model = packed
    batch = _batch(5)
    want = _logits(model, batch)
    calls = _hf_calls(kind, monkeypatch)
    layers = _layers(model)
    layer, hidden = layers[0], torch.randn(3, 10, 32)
    with torch.no_grad():
        base = layer(hidden)
        assert calls == []
        layer(hidden, None, None, output_attentions=False, use_cache=False)  # inert flags: still lean
        assert calls == []
        seen = []

        class Cache:  # stands in for a key/value cache: records what reaches it
            def update(self, k, v, *a, **kw):
                seen.append(k.shape)
                return k, v

        for kwargs in ({"position_ids": torch.arange(10)}, {"output_attentions": True}, {"cache": Cache()},
                       {"past_key_values": Cache()}):
            calls.clear()
            layer(hidden, **kwargs)
            assert calls == [1], kwargs
        assert len(seen) == 2  # both spellings of the cache reached the class forward
        calls.clear()
        assert torch.equal(layer(hidden, None, torch.randn(3, 4, 32)), base)  # encoder states: ignored by
        assert calls == [1]  # an encoder layer's class forward, which is the one that must decide that
    calls.clear()
    with torch.enable_grad():  # gradients on: backward hooks could see the difference
        model(**batch)
    assert len(calls) == len(layers)
    calls.clear()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        assert torch.equal(_logits(model, batch), want) and len(calls) == len(layers)
    finally:
        handle.remove()
    calls.clear()
    layer.chunk_size_feed_forward = 5  # divides the batch's 10 tokens
    _logits(model, batch)
    layer.chunk_size_feed_forward = 0
    assert calls == [1]


@pytest.mark.parametrize("packed", ["bert"], indirect=True)
def test_a_changed_structure_takes_the_hugging_face_forward(packed, monkeypatch):
    kind, model = packed
    batch = _batch(5)
    cls = SELF_OUTPUT[kind]

    class Shifted(cls):
        def forward(self, hidden_states, input_tensor):
            return super().forward(hidden_states, input_tensor) + 0.5

    layer = _layers(model)[0]
    shifted = Shifted(model.config)
    shifted.load_state_dict(layer.attention.output.state_dict(), strict=False)
    shifted.dense = layer.attention.output.dense
    shifted.eval()
    layer.attention.output = shifted  # a subclass with its own forward
    assert torch.equal(_logits(model, batch), _hf_logits(model, batch))
    layer.attention.output = shifted.__class__.__bases__[0](model.config).eval()
    layer.attention.output.dense = shifted.dense
    layer.attention.output.LayerNorm = shifted.LayerNorm
    calls = _hf_calls(kind, monkeypatch)
    _logits(model, batch)
    assert calls == []  # the family's own class again: lean
    layer.attention.output.forward = lambda h, i: cls.forward(layer.attention.output, h, i) * 2  # instance forward
    assert torch.equal(_logits(model, batch), _hf_logits(model, batch)) and calls
    del layer.attention.output.forward
    calls.clear()
    layer.output.dropout = nn.Tanh()  # not an identity in eval mode
    assert torch.equal(_logits(model, batch), _hf_logits(model, batch)) and calls


@pytest.mark.parametrize("packed", ["bert"], indirect=True)
def test_a_foreign_instance_forward_is_left_alone(packed):
    _, model = packed
    layer = _layers(model)[0]
    theirs = layer.forward = lambda *a, **k: type(layer).forward(layer, *a, **k)
    wire_lean_layers_(model)
    assert layer.forward is theirs
    wire_lean_layers_(model, on=False)
    assert layer.forward is theirs


# ------------------------------------------------------------------------------------------------
# The per-layer plans every packed forward keeps (kernel operands, epilogue thresholds, attention
# scales, the lean path): rebuilt exactly when what they were built from changes.


@pytest.mark.parametrize("packed", ["bert"], indirect=True)
def test_plans_survive_unrelated_work(packed, monkeypatch):
    _, model = packed
    batch = _batch(5)
    want = _logits(model, batch)
    built = []
    real = kernels.stamp
    monkeypatch.setattr(kernels, "stamp", lambda refs: built.append(1) or real(refs))
    nn.Linear(3, 3)  # modules built elsewhere (a loss inside the forward below, too)
    with torch.no_grad():
        out = model(**batch, labels=torch.tensor([0, 1, 0]))
    assert built == [] and torch.equal(out.logits, want)


def _dense(model):
    return _layers(model)[-1].attention.output.dense


@pytest.mark.parametrize("packed", ["bert"], indirect=True)
def test_plans_see_tensors_replaced_without_assignment(packed, tmp_path):
    _, model = packed
    batch = _batch(5)
    want = _logits(model, batch)
    name = next(n for n, p in model.named_parameters() if p is _dense(model).bias)
    new_bias = _dense(model).bias.detach() + 0.5

    def fresh(change):  # the same model loaded anew, changed before its first forward
        other = load_packed(tmp_path / "p")
        change(other)
        return _logits(other, batch)

    with torch.no_grad():
        got = torch.func.functional_call(model, {name: new_bias}, args=(), kwargs=batch).logits
    assert torch.equal(got, fresh(lambda m: setattr(_dense(m), "bias", nn.Parameter(new_bias))))
    assert torch.equal(_logits(model, batch), want)  # the model's own bias again
    _dense(model).bias = None
    assert torch.equal(_logits(model, batch), fresh(lambda m: setattr(_dense(m), "bias", None)))
    scale = _dense(model).weight_scale * 2
    _dense(model)._buffers["weight_scale"] = scale  # as Module._apply replaces buffers

    def both(m):
        _dense(m).bias = None
        _dense(m)._buffers["weight_scale"] = scale
    assert torch.equal(_logits(model, batch), fresh(both))


@pytest.mark.parametrize("packed", ["bert"], indirect=True)
def test_attention_scales_follow_rewired_sign_bytes(packed):
    from kronbit.distill.attention import PROB_QUANTIZER
    from kronbit.quant.attention import wire_sign_bytes_
    from kronbit.quant.packed import after_load

    _, model = packed
    batch = _batch(5)
    want = _logits(model, batch)
    projections = [p for layer in _layers(model) for p in
                   (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value)]
    for p in projections:
        p.sign_output = None
    assert wire_sign_bytes_(model) == 0  # Q, K, V as ±α floats now
    with torch.no_grad():  # an in-place change: the attention's scales are found again, without Q, K, V's
        for layer in _layers(model):
            getattr(layer.attention.self, PROB_QUANTIZER).alpha.add_(0.0)
    assert ((_logits(model, batch) - want).abs().max() / want.abs().max()) < 1e-5
    after_load(model)  # sign bytes again: the attention's cached scales must include theirs
    assert torch.equal(_logits(model, batch), want)
