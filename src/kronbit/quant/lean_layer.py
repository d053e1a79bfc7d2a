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

When: only where nothing could tell the difference. The layer and its five container modules
must be the exact classes of one Hugging Face encoder family (BERT, RoBERTa, XLM-R, CamemBERT,
ELECTRA), its dropout slots ``nn.Dropout`` or ``nn.Identity``. On each call it takes the class's
own forward instead while gradients are on or any module on the path is training, carries a
forward hook or pre-hook (a global one included), has an instance-level ``forward`` where the
lean path would skip it, or was compiled with ``Module.compile``; when anything but the hidden
states and the attention mask arrives (a cache, encoder states, any other keyword argument that is
not None, or an ``output_*`` / ``use_cache`` flag that is not False); when the layer chunks its
FFN; while a trace, an ONNX export or ``torch.compile`` runs; and when kronbit's attention is not
the registered implementation the module names. Two hooks do not count: kronbit's
binary-attention check (it asserts what this path requires anyway), and Hugging Face's
output-capturing hooks while they capture nothing (they stay installed once ``output_attentions``
or ``output_hidden_states`` was asked for). It is wired (``wire_lean_layers_``, by the quant
method's ``after_load``) only on layers whose self-attention runs kronbit's attention function on
the binary kernel (``FAST_PATH`` set): the true-W1A1 packed models. W2A8 and full-attention W1A1
keep the Hugging Face forward. The forward is a ``functools.partial`` of ``lean_forward`` and
the layer, so a deep copy or a pickle of the model keeps it bound to its own layer.
"""

from __future__ import annotations

import functools
import sys

import torch
from torch import nn
from torch.nn.modules import module as nn_module
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..distill.attention import FAST_PATH, kronbit_attention
from ..distill.attention import NAME as KRONBIT_ATTENTION
from . import kernels
from .attention import check_attention_path

try:  # where Hugging Face keeps its output-capturing hooks (transformers 5.x)
    from transformers.utils import output_capturing as hf_capture
except ImportError:  # elsewhere: every such hook counts as live
    hf_capture = None

# Hugging Face encoder layers with BertLayer's structure and forward, by class name; the module
# each comes from supplies the exact classes its submodules must have.
LAYER_CLASSES = {"BertLayer", "RobertaLayer", "XLMRobertaLayer", "CamembertLayer", "ElectraLayer"}
CONTAINERS = ("Attention", "SelfAttention", "SelfOutput", "Intermediate", "Output")
MARK = "kronbit_lean_layer"  # layer attribute: True while its forward is the lean one
PATH_CACHE = "_kronbit_lean_path"  # layer attribute: (stamp, the modules on the path)
INERT_FLAGS = ("output_", "use_cache")  # keyword arguments that may arrive as False


def _family(layer: nn.Module) -> dict | None:
    cls = type(layer)
    if cls.__name__ not in LAYER_CLASSES or not cls.__module__.startswith("transformers.models."):
        return None
    module, prefix = sys.modules.get(cls.__module__), cls.__name__[: -len("Layer")]
    classes = {name: getattr(module, prefix + name, None) for name in CONTAINERS}
    return None if any(c is None for c in classes.values()) else classes


def _refs(layer: nn.Module) -> list | None:
    """(module, name) of every attribute the path is read from, or None without the structure."""
    try:
        a, inter, out = layer.attention, layer.intermediate, layer.output
        sa, ao = a.self, a.output
    except AttributeError:
        return None
    return [(layer, "attention"), (layer, "intermediate"), (layer, "output"), (layer, "chunk_size_feed_forward"),
            (a, "self"), (a, "output"), (sa, "query"), (sa, "key"), (sa, "value"), (sa, "config"),
            (sa, "attention_head_size"), (sa, "scaling"), (ao, "dense"), (ao, "dropout"), (ao, "LayerNorm"),
            (inter, "dense"), (inter, "intermediate_act_fn"), (out, "dense"), (out, "dropout"), (out, "LayerNorm")]


def _path(layer: nn.Module) -> tuple | None:
    """The modules the forward runs through, or None when the layer is not of the family's exact
    structure; kept on the layer until one of the attributes it was read from is re-assigned."""
    cached = layer.__dict__.get(PATH_CACHE)
    if cached is not None and kernels.fresh(cached[0]):
        return cached[1]
    refs = _refs(layer)
    st = None if refs is None else kernels.stamp(refs)
    mods = None if refs is None else _find_path(layer)
    layer.__dict__[PATH_CACHE] = (st, mods)
    return mods


def _find_path(layer: nn.Module) -> tuple | None:
    family = _family(layer)
    if family is None or layer.chunk_size_feed_forward:
        return None
    a, inter, out = layer.attention, layer.intermediate, layer.output
    sa, ao = a.self, a.output
    containers = (a, sa, ao, inter, out)
    if any(type(m) is not family[name] for m, name in zip(containers, CONTAINERS)):
        return None
    if any(type(d) not in (nn.Dropout, nn.Identity) for d in (ao.dropout, out.dropout)):
        return None
    linears = (sa.query, sa.key, sa.value, ao.dense, inter.dense, out.dense)
    if not all(isinstance(m, nn.Module) for m in (*linears, ao.LayerNorm, out.LayerNorm)):
        return None
    return containers, (ao.dropout, out.dropout), linears, (ao.LayerNorm, out.LayerNorm)


def _layer_norm(ln: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(ln) is nn.LayerNorm and "forward" not in ln.__dict__:  # LayerNorm.forward's own call
        return torch.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    return ln.forward(x)


def _plain_call(args: tuple, kwargs: dict) -> tuple | None:
    """(hidden states, attention mask) of a call that passes nothing else, else None."""
    if not args or len(args) > 3 or (len(args) == 3 and args[2] is not None):
        return None
    mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
    for name, value in kwargs.items():
        if name == "attention_mask" and len(args) == 1:
            continue
        if value is None or (value is False and name.startswith(INERT_FLAGS)):
            continue
        return None
    return args[0], mask


def _declines(path: tuple) -> bool:
    if (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling() or nn_module._global_forward_hooks
            or nn_module._global_forward_pre_hooks):
        return True
    containers, dropouts, linears, norms = path
    sa = containers[1]
    if (getattr(sa.config, "_attn_implementation", None) != KRONBIT_ATTENTION
            or ALL_ATTENTION_FUNCTIONS.get(KRONBIT_ATTENTION) is not kronbit_attention):
        return True
    for m in (*containers, *dropouts):  # modules whose forward the lean path does not call
        if "forward" in m.__dict__:
            return True
    act = containers[3].intermediate_act_fn
    mods = (*containers, *dropouts, *linears, *norms, *((act,) if isinstance(act, nn.Module) else ()))
    return any(m.training or m.__dict__.get("_compiled_call_impl") is not None
               or (m._forward_hooks and _live(m._forward_hooks))
               or (m._forward_pre_hooks and _live(m._forward_pre_hooks)) for m in mods)


def _live(hooks) -> bool:
    """Whether any of a module's hooks could see a difference: all but the binary-attention check
    and Hugging Face's output-capturing hooks while no capture is running."""
    return any(h is not check_attention_path and not _idle_capture(h) for h in hooks.values())


def _idle_capture(hook) -> bool:
    """Hugging Face installs its output-capturing hooks the first time ``output_attentions`` or
    ``output_hidden_states`` is asked for and leaves them installed; each does nothing unless a
    collector is active for the current forward. Any other version of that mechanism counts as live."""
    if hf_capture is None or getattr(hook, "__module__", None) != hf_capture.__name__:
        return False
    collector = getattr(hf_capture, "_active_collector", None)
    return collector is not None and hasattr(collector, "get") and not collector.get()


def lean_forward(layer: nn.Module, *args, **kwargs) -> torch.Tensor:
    """``BertLayer.forward`` at inference, as its calls without the plumbing (module docstring)."""
    call = _plain_call(args, kwargs)
    path = None if call is None or layer.training else _path(layer)
    if path is None or _declines(path):
        return type(layer).forward(layer, *args, **kwargs)
    hidden_states, attention_mask = call
    (_, sa, _, inter, _), _, (query, key, value, ao_dense, inter_dense, out_dense), (ao_ln, out_ln) = path
    input_shape = hidden_states.shape[:-1]
    heads = (*input_shape, -1, sa.attention_head_size)
    q = query.forward(hidden_states).view(*heads).transpose(1, 2)
    k = key.forward(hidden_states).view(*heads).transpose(1, 2)
    v = value.forward(hidden_states).view(*heads).transpose(1, 2)
    ctx, _ = kronbit_attention(sa, q, k, v, attention_mask, dropout=0.0, scaling=sa.scaling)
    ctx = ctx.reshape(*input_shape, -1).contiguous()
    h = _layer_norm(ao_ln, ao_dense.forward(ctx) + hidden_states)
    act = inter.intermediate_act_fn
    y = inter_dense.forward(h)
    y = act.forward(y) if isinstance(act, nn.Module) else act(y)
    return _layer_norm(out_ln, out_dense.forward(y) + h)


def _is_lean(fn) -> bool:
    return isinstance(fn, functools.partial) and fn.func is lean_forward


def wire_lean_layers_(model: nn.Module, on: bool = True) -> int:
    """Give every encoder layer of ``model`` whose self-attention runs on the binary attention
    kernel the lean forward (or take it away: ``on=False``, or where that no longer holds). A layer
    that already has an instance-level forward of someone else's is left alone. Returns how many
    layers have it."""
    n = 0
    for m in model.modules():
        if type(m).__name__ not in LAYER_CLASSES:
            continue
        own = m.__dict__.get("forward")
        if own is not None and not _is_lean(own):
            continue
        refs = _refs(m)
        use = on and refs is not None and _family(m) is not None and FAST_PATH in m.attention.self.__dict__
        if use:
            m.forward = functools.partial(lean_forward, m)
            m.__dict__[MARK] = True
            n += 1
        elif own is not None:
            del m.forward
        if not use:
            m.__dict__.pop(MARK, None)
            m.__dict__.pop(PATH_CACHE, None)
    return n
