"""A packed true-W1A1 encoder layer's forward without the Hugging Face plumbing around its kernels.

Why: a packed BERT-base on the binary kernels runs a 1 x 128 forward in about 9 ms, and over a
third of that is Python between the kernel calls: every layer goes through five module forwards
with their hook machinery, keyword-renaming decorators, an attention-interface lookup, and
``apply_chunking_to_forward`` (which inspects the chunk function's signature on every call).
The kernels themselves take ~5.5 ms, so that plumbing decides whether binary beats int8.

What: ``lean_forward`` makes, in the same order and with the same arguments, exactly the calls the
Hugging Face ``BertLayer`` forward makes at inference (Q, K, V projections, kronbit's attention
function, output projection, residual + LayerNorm, FFN, residual + LayerNorm), calling each
submodule's ``forward`` directly. Dropout is skipped because it is the identity in eval mode. So
the output is the Hugging Face path's, bit for bit (tests/quant/test_lean_layer.py).

When: only where nothing could tell the difference. On each call, it takes the class's own
forward instead when the layer or any submodule on the path is training or carries a forward
hook or pre-hook (a global one included), when a cache, encoder states or any extra keyword
argument arrive, when the layer chunks its FFN, or while a trace / ONNX export runs. Two hooks
do not count: kronbit's binary-attention check (it asserts what this path requires anyway), and
Hugging Face's output-capturing hooks while they capture nothing (they stay installed once
``output_attentions`` or ``output_hidden_states`` was asked for). It is wired
(``wire_lean_layers_``, by the quant method's ``after_load``) only on BERT-style layers whose
self-attention runs kronbit's attention function on the binary kernel (``FAST_PATH`` set): the
true-W1A1 packed models. W2A8 and full-attention W1A1 keep the Hugging Face forward.
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.nn.modules import module as nn_module
from transformers.utils import output_capturing as hf_capture

from ..distill.attention import FAST_PATH, kronbit_attention
from ..distill.attention import NAME as KRONBIT_ATTENTION
from . import kernels
from .attention import check_attention_path

# Hugging Face encoder layers with BertLayer's structure and forward, by class name (quant does not
# import transformers).
LAYER_CLASSES = {"BertLayer", "RobertaLayer", "XLMRobertaLayer", "CamembertLayer", "ElectraLayer"}
MARK = "kronbit_lean_layer"  # layer attribute: True while its forward is the lean one
PATH_CACHE = "_kronbit_lean_path"  # layer attribute: (stamp, the modules on the path)


def _path(layer: nn.Module) -> tuple | None:
    """The modules the forward runs through, or None when the layer is not of BertLayer's shape;
    kept on the layer until a module, parameter or buffer is assigned anywhere (``kernels.stamp``)."""
    cached = layer.__dict__.get(PATH_CACHE)
    if cached is not None and kernels.fresh(cached[0]):
        return cached[1]
    mods = _find_path(layer)
    layer.__dict__[PATH_CACHE] = (kernels.stamp(()), mods)
    return mods


def _find_path(layer: nn.Module) -> tuple | None:
    try:
        a, inter, out = layer.attention, layer.intermediate, layer.output
        sa, ao = a.self, a.output
        mods = (a, sa, sa.query, sa.key, sa.value, ao, ao.dense, ao.dropout, ao.LayerNorm,
                inter, inter.dense, out, out.dense, out.dropout, out.LayerNorm)
    except AttributeError:
        return None
    if not all(isinstance(m, nn.Module) for m in mods):
        return None
    return mods


def _layer_norm(ln: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(ln) is nn.LayerNorm:  # the functional call LayerNorm.forward makes, without its wrappers
        return torch.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    return ln.forward(x)


def _declines(layer: nn.Module, mods: tuple, act, encoder_hidden_states, cache, kwargs) -> bool:
    if (layer.training or encoder_hidden_states is not None or cache is not None
            or any(v is not None for v in kwargs.values()) or layer.chunk_size_feed_forward
            or nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
            or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
        return True
    if getattr(getattr(mods[1], "config", None), "_attn_implementation", None) != KRONBIT_ATTENTION:
        return True
    if isinstance(act, nn.Module):
        mods = (*mods, act)
    return any(m.training or (m._forward_hooks and _live(m._forward_hooks))
               or (m._forward_pre_hooks and _live(m._forward_pre_hooks)) for m in mods)


def _live(hooks) -> bool:
    """Whether any of a module's hooks could see a difference: all but the binary-attention check
    (which only asserts what ``_declines`` already requires, kronbit's attention function) and
    Hugging Face's output-capturing hooks while no capture is running."""
    return any(h is not check_attention_path and not _idle_capture(h) for h in hooks.values())


def _idle_capture(hook) -> bool:
    """Hugging Face installs its output-capturing hooks the first time ``output_attentions`` or
    ``output_hidden_states`` is asked for and leaves them installed; each does nothing unless a
    collector is active for the current forward. Any other version of that mechanism counts as live."""
    if getattr(hook, "__module__", None) != hf_capture.__name__:
        return False
    collector = getattr(hf_capture, "_active_collector", None)
    return collector is not None and hasattr(collector, "get") and not collector.get()


def lean_forward(layer: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask=None, cache=None,
                 **kwargs) -> torch.Tensor:
    """``BertLayer.forward`` at inference, as its calls without the plumbing (module docstring)."""
    mods = _path(layer)
    act = None if mods is None else mods[9].intermediate_act_fn
    if mods is None or _declines(layer, mods, act, encoder_hidden_states, cache, kwargs):
        return type(layer).forward(layer, hidden_states, attention_mask, encoder_hidden_states,
                                   encoder_attention_mask=encoder_attention_mask, cache=cache, **kwargs)
    _, sa, query, key, value, ao, ao_dense, _, ao_ln, _, inter_dense, _, out_dense, _, out_ln = mods
    input_shape = hidden_states.shape[:-1]
    heads = (*input_shape, -1, sa.attention_head_size)
    q = query.forward(hidden_states).view(*heads).transpose(1, 2)
    k = key.forward(hidden_states).view(*heads).transpose(1, 2)
    v = value.forward(hidden_states).view(*heads).transpose(1, 2)
    ctx, _ = kronbit_attention(sa, q, k, v, attention_mask, dropout=0.0, scaling=sa.scaling)
    ctx = ctx.reshape(*input_shape, -1).contiguous()
    h = _layer_norm(ao_ln, ao_dense.forward(ctx) + hidden_states)
    y = inter_dense.forward(h)
    y = act.forward(y) if isinstance(act, nn.Module) else act(y)
    return _layer_norm(out_ln, out_dense.forward(y) + h)


def wire_lean_layers_(model: nn.Module, on: bool = True) -> int:
    """Give every BERT-style layer of ``model`` whose self-attention runs on the binary attention
    kernel the lean forward (or take it away: ``on=False``, or where that no longer holds).
    Returns how many layers have it."""
    n = 0
    for m in model.modules():
        if type(m).__name__ not in LAYER_CLASSES:
            continue
        mods = _path(m)
        use = on and mods is not None and FAST_PATH in mods[1].__dict__
        if use:
            m.forward = types.MethodType(lean_forward, m)
            setattr(m, MARK, True)
            n += 1
        elif m.__dict__.get(MARK):
            del m.forward
            delattr(m, MARK)
            m.__dict__.pop(PATH_CACHE, None)
    return n
