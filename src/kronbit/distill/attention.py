"""An eager attention implementation that exposes what distillation and quantization need.

Hugging Face models in transformers 5 route attention through ``ALL_ATTENTION_FUNCTIONS``. We
register ``"kronbit_eager"``: the same arithmetic as the models' eager path, plus
  * a recorder: inside ``record_attention_scores()`` every call appends its *pre-softmax* scores
    and the mask of valid (query, key) pairs, because TinyBERT-style attention distillation matches
    scores, which the models' ``output_attentions`` (probabilities) cannot give back;
  * a hook for quantizing attention probabilities (BiT quantizes the inputs of both attention
    matmuls): a submodule ``kronbit_prob_quantizer`` of the attention module, when present, is
    applied to the probabilities after dropout (as BiT), so the second matmul's input is exactly
    on the quantizer's grid in training as well (``quant.attention`` sets it).
  * an inference fast path: a plain attribute ``kronbit_fast_attention`` of the attention module,
    when set (the quant method sets it on packed models with binary attention: both matmuls on
    the binary kernel), computes the output from the same arguments, or returns None to decline;
    it is never used in training or while scores are recorded.
The SDPA path returns no attention maps at all, so distillation switches students and teachers to
this implementation with ``use_kronbit_attention(model)``.

Two things keep distillation from paying for maps it does not read:
  * ``record_attention_scores(log_probs=True)`` records the log-probabilities (log-softmax of the
    masked scores) in place of the raw scores, which is what ``kd.attention_loss: prob_kl`` reads:
    the loss then needs no masking pass and no second log-softmax of its own. Masked pairs carry
    the additive mask's finfo.min exactly as the loss's own masking did, so the values are the same.
  * ``keep_attention_maps(model, layers)`` marks the attention modules of every other layer: they
    run the SDPA kernel (and record None in their place), as a model does without distillation.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

NAME = "kronbit_eager"
PROB_QUANTIZER = "kronbit_prob_quantizer"  # attention-module attribute read below
NO_MAPS = "kronbit_no_attention_maps"  # attention-module attribute: this layer's maps are not read
FAST_PATH = "kronbit_fast_attention"  # attention-module attribute: fn(module, q, k, v, mask, scaling) or None
# attention-module attribute: fn(module, q, k, v) -> float q, k, v, for projections that hand over
# their binarized outputs as sign bytes (a packed model's one-pass binary attention reads those)
SIGN_FLOATS = "kronbit_sign_floats"
_state = threading.local()


def _recording() -> list | None:
    return getattr(_state, "records", None)


@contextmanager
def record_attention_scores(log_probs: bool = False) -> Iterator[list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """Collect (scores, valid) per attention call, in call (= layer) order.

    ``scores``: (batch, heads, q_len, k_len) pre-softmax scores, or with ``log_probs`` the fp32
    log-softmax of the masked scores; ``valid``: boolean mask of the pairs that take part (not
    padding, not in the causal future), broadcastable to ``scores``, or None when every pair is
    valid. A layer marked by ``keep_attention_maps`` as not distilled records None.
    """
    previous = _recording(), getattr(_state, "log_probs", False)
    _state.records, _state.log_probs = [], log_probs
    try:
        yield _state.records
    finally:
        _state.records, _state.log_probs = previous


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The model's self-attention modules in layer order (those carrying a ``layer_idx``, as Hugging
    Face decoders' do); [] when they cannot be told apart one per layer."""
    found = [m for m in model.modules() if type(m).__name__.endswith("Attention")
             and isinstance(getattr(m, "layer_idx", None), int)]
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if len(found) != layers or len({m.layer_idx for m in found}) != len(found):
        return []
    return sorted(found, key=lambda m: m.layer_idx)


def keep_attention_maps(model: nn.Module, layers: set[int] | None) -> int:
    """Only the attention of ``layers`` (1-based, as layer maps count) computes and records maps;
    the others run SDPA. None: every layer. Returns how many layers were switched to SDPA."""
    switched = 0
    for i, module in enumerate(attention_modules(model), start=1):
        off = layers is not None and i not in layers
        setattr(module, NO_MAPS, off)
        switched += off
    return switched


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(b, kv_heads, s, d) → (b, kv_heads·groups, s, d) for grouped-query attention (Llama)."""
    if groups == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


def kronbit_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None,
                      dropout: float = 0.0, **kwargs):
    records = _recording()
    fast = getattr(module, FAST_PATH, None)
    if fast is not None and records is None and not module.training:
        out = fast(module, query, key, value, attention_mask, scaling)
        if out is not None:
            return out, None  # no attention weights: the fast path never builds the binarized map
    if query.dtype == torch.uint8:  # sign bytes the fast path did not take: their float values
        query, key, value = getattr(module, SIGN_FLOATS)(module, query, key, value)
    if getattr(module, NO_MAPS, False) and getattr(module, PROB_QUANTIZER, None) is None:
        if records is not None:
            records.append(None)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    masked = scores if attention_mask is None else scores + attention_mask
    if records is not None:
        valid = None
        if attention_mask is not None:
            valid = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        if _state.log_probs:
            records.append((nn.functional.log_softmax(masked, dim=-1, dtype=torch.float32), valid))
        else:
            records.append((scores, valid))
    probs = nn.functional.softmax(masked, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    quantizer = getattr(module, PROB_QUANTIZER, None)
    if quantizer is not None:
        probs = quantizer(probs)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


def register() -> None:
    AttentionInterface.register(NAME, kronbit_attention)
    AttentionMaskInterface.register(NAME, eager_mask)  # additive float masks, as eager uses


def use_kronbit_attention(model: nn.Module) -> nn.Module:
    """Switch ``model`` (an HF PreTrainedModel) to the kronbit eager attention, in place."""
    register()
    model.set_attn_implementation(NAME)
    return model
