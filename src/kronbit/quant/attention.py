"""BiT's binarized attention (``QuantConfig.attention: binary``): at ``a_bits == 1`` the inputs
of both attention matmuls are binary, as in BiT (Liu et al. 2022, "BiT: Robustly Binarized
Multi-distilled Transformer"):

  * Q, K and V: the query/key/value projections' outputs go through the signed elastic binarizer
    α·sign(x - β) (one α per tensor, β per feature): ``QuantLinear(binary_output=True)``;
  * the attention probabilities: the unsigned elastic binarizer, α·round(clamp(p/α, 0, 1)) ∈
    {0, α}, with a learnable α (so a learnable threshold α/2) initialised at 4·mean(p) of the
    first batch; no offset, as BiT, so a masked key's probability (exactly 0) stays 0. It is
    applied after attention dropout, as BiT does, so the matmul input is binary in training too.

The probability quantizer is a submodule ``kronbit_prob_quantizer`` of each attention module
(the module Hugging Face passes to the attention function), so it is saved, reloaded and packed
like any other quantizer parameter; kronbit's eager attention (``distill.attention``) applies it,
and a model with binary attention is switched to that implementation. A forward pre-hook refuses
to run such a module on any other attention path (SDPA would skip the quantizer silently).

A packed model (``load_packed``) runs the attention on the binary kernels (``binary_attention_forward``,
wired by ``wire_binary_attention_``). With a key-padding mask (or none), the common encoder case,
it runs in one pass (``kernels.attention_fused``): a query row's scores are c·d with d an integer
dot product of signs (XOR-popcount over the head dimension), so the row's softmax, and which
probabilities its binarizer keeps (p / α > 0.5), follow from the counts of each d value: one
integer threshold per row. Neither the float scores nor the softmax are ever computed; P·V is an
AND-popcount over the keys. The projections of BERT-style modules hand Q, K, V over as sign bytes
(``wire_sign_bytes_``; 1 = +α), a quarter of the float traffic; any path that needs their values
turns them back into ±α (``signs_to_float``). Other masks (causal, biased) take two kernels with
the mask and softmax in float32 between them. Both agree with the float path to float32 rounding
(the integer dot products are exact; the float matmuls round every partial sum), except where a
probability sits within that rounding of its threshold α/2 and binarizes the other way.

At other bit-widths the attention matmuls stay full precision: 32 during the weight-only stages,
and k bits in an intermediate activation stage (BiT's multi-step distillation, W1A2 → W1A1, where
only the linear layers' inputs are k-bit). The quantizers appear when ``set_bits_`` lowers the
activations to 1 bit, so ``attention: binary`` can sit in a recipe's shared quant section and act
only on the W1A1 stage.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ConfigError, ModelError
from ..distill.attention import FAST_PATH, PROB_QUANTIZER, SIGN_FLOATS, use_kronbit_attention
from ..distill.attention import NAME as KRONBIT_ATTENTION
from . import kernels
from .quantizers import EPS, ElasticUnsignedAct

MODE_ATTR = "kronbit_attention"  # plain attribute on an attention module: "binary" when marked
HOOK_ATTR = "kronbit_attention_hooked"  # plain attribute: the path-check hook is registered


def check_attention_path(module: nn.Module, args) -> None:
    """Forward pre-hook: binary probabilities exist only on kronbit's eager attention."""
    if getattr(module, PROB_QUANTIZER, None) is None:
        return
    config = getattr(module, "config", None)
    impl = getattr(config, "_attn_implementation", KRONBIT_ATTENTION)
    if impl != KRONBIT_ATTENTION:
        raise ModelError(f"{type(module).__name__}: binary attention needs the '{KRONBIT_ATTENTION}' attention "
                         f"implementation, the model uses '{impl}' (which would skip the probability binarizer); "
                         "call kronbit.distill.attention.use_kronbit_attention(model)")


def mark_binary_attention(model: nn.Module, projection_names: list[str]) -> int:
    """Mark the modules owning the given Q/K/V projections as binary-attention modules (once);
    returns how many were marked."""
    modules = dict(model.named_modules())
    parents = {name.rsplit(".", 1)[0] for name in projection_names if "." in name}
    for pname in sorted(parents):
        parent = modules[pname]
        setattr(parent, MODE_ATTR, "binary")
        if not getattr(parent, HOOK_ATTR, False):  # once, though a schedule may switch it off and on
            parent.register_forward_pre_hook(check_attention_path)
            setattr(parent, HOOK_ATTR, True)
    return len(parents)


def binary_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module marked for binary attention, in model order."""
    return [(n, m) for n, m in model.named_modules() if getattr(m, MODE_ATTR, None) == "binary"]


def active_binary_attention(model: nn.Module) -> int:
    """How many attention modules binarize their probabilities right now."""
    return sum(getattr(m, PROB_QUANTIZER, None) is not None for _, m in binary_attention_modules(model))


def set_attention_bits(model: nn.Module, a_bits: int) -> int:
    """Add (a_bits == 1) or remove (otherwise) the probability binarizer of every marked module,
    keeping an existing one and its learned α; switch the model to kronbit's eager attention
    when any is active. Returns the number active."""
    for _, m in binary_attention_modules(model):
        have = getattr(m, PROB_QUANTIZER, None)
        if a_bits == 1 and have is None:
            device = next((p.device for p in m.parameters()), None)
            q = ElasticUnsignedAct(1, offset=False)
            m.register_module(PROB_QUANTIZER, q if device is None else q.to(device))
        elif a_bits != 1 and have is not None:
            m.register_module(PROB_QUANTIZER, None)
    active = active_binary_attention(model)
    if active:
        if not hasattr(model, "set_attn_implementation"):
            raise ConfigError(f"attention: binary needs a Hugging Face model (set_attn_implementation); "
                              f"{type(model).__name__} has none")
        use_kronbit_attention(model)
    return active


def clear_binary_attention(model: nn.Module) -> None:
    """Drop the probability binarizers and the marks (``dequantize_``)."""
    for _, m in binary_attention_modules(model):
        m.register_module(PROB_QUANTIZER, None)
        setattr(m, MODE_ATTR, "full")


def binary_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None) -> torch.Tensor | None:
    """The attention output (batch, seq, heads, head_dim) of a binary-attention module on the binary
    kernel, or None to decline (gradients wanted, not float32, operands not binary, quantizer not
    yet initialised): then the float path runs."""
    quantizer = getattr(module, PROB_QUANTIZER, None)
    if quantizer is None or (torch.is_grad_enabled() and (query.requires_grad or quantizer.alpha.requires_grad)):
        return None
    scales = _scales(module, quantizer)
    if scales is None:  # the probability binarizer not yet initialised from data
        return None
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    if query.numel() == 0 or key.numel() == 0:
        return None
    alpha_p = scales[0]
    keep = key_padding(attention_mask, query.size(0), key.size(2))
    if query.dtype == torch.uint8:  # sign bytes from the projections (``wire_sign_bytes_``)
        aq, ak, av = scales[1:]
        if keep is not False:
            out = kernels.attention_fused(query, key, value, keep, aq * ak * scaling, alpha_p, alpha_p * av)
            if out is not None:
                return out.transpose(1, 2).contiguous()
        query, key, value = signs_to_float(module, query, key, value)
    if query.dtype != torch.float32:
        return None
    # One element of each operand gives its scale a (the kernels check every element is ±a). Indexed
    # in place: reshape(-1) of a transposed head view copies the whole tensor.
    first = (0,) * query.dim()
    a = torch.stack([query[first], key[first], value[first],
                     quantizer.alpha.detach().clamp_min(EPS).reshape(())]).abs().float()
    c_scores = float(a[0] * a[1] * scaling)
    if keep is not False and c_scores > 0:
        # A key-padding mask (or none): one pass, the softmax threshold from the score counts.
        out = kernels.attention_fused(query, key, value, keep, c_scores, float(a[3]), float(a[3] * a[2]))
        if out is not None:
            return out.transpose(1, 2).contiguous()
    scores = kernels.attention_scores(query, key, c_scores)
    if scores is None:
        return None
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    out = kernels.attention_values(probs, float(a[3]), value, float(a[3] * a[2]))
    return None if out is None else out.transpose(1, 2).contiguous()


PROJECTIONS = ("query", "key", "value")
SIGN_SOURCES = "kronbit_sign_sources"  # attention-module attribute: the Q, K, V projections handing over sign bytes
# Attention modules whose forward hands the projections' outputs to the attention function with
# nothing but views in between (so sign bytes reach it intact), in Hugging Face naming.
BYTE_SAFE = {"BertSelfAttention", "RobertaSelfAttention", "XLMRobertaSelfAttention", "CamembertSelfAttention",
             "ElectraSelfAttention"}


SCALES_CACHE = "_kronbit_attention_scales"  # attention-module attribute: (stamp, scales)


def _scales(module: nn.Module, quantizer) -> tuple[float, ...] | None:
    """(α of the probability binarizer, then α of each sign-byte projection) as Python floats, or
    None before the probability binarizer is initialised; kept until one of them changes, so a call
    costs no device syncs."""
    cached = module.__dict__.get(SCALES_CACHE)
    if cached is None or not kernels.fresh(cached[0]):
        sources = getattr(module, SIGN_SOURCES, ())
        refs = [(module, PROB_QUANTIZER), (quantizer, "alpha"), (quantizer, "initialized"), (module, SIGN_SOURCES)]
        for p in sources:
            refs += [(p, "output_quantizer"), (p.output_quantizer, "alpha")]
        st = kernels.stamp(refs)  # the sign-byte sources too: re-wiring them changes what is returned
        value = None
        if bool(quantizer.initialized):
            value = (float(quantizer.alpha.detach().clamp_min(EPS)), *sign_scales(module))
        cached = (st, value)
        module.__dict__[SCALES_CACHE] = cached
    return cached[1]


def sign_scales(module: nn.Module) -> tuple[float, float, float]:
    """α of the Q, K, V binarizers whose outputs arrive as sign bytes (none when they do not)."""
    return tuple(float(p.output_quantizer.alpha.detach().clamp_min(EPS)) for p in getattr(module, SIGN_SOURCES, ()))


def signs_to_float(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """Sign bytes back to the ±α float32 values the binarizers define (exactly what the ±α epilogue
    writes), for any path that needs the values."""
    return tuple(torch.where(t != 0, a, -a).to(torch.float32)
                 for t, a in zip((query, key, value), (torch.tensor(x) for x in sign_scales(module))))


def wire_sign_bytes_(model: nn.Module) -> int:
    """Let the Q, K, V projections of every attention module on the one-pass kernel hand over sign
    bytes instead of ±α floats (their ``SignOutput`` epilogues), where the module's forward is one
    that only views them on the way (``BYTE_SAFE``, absolute positions); undo it elsewhere. Returns
    how many modules."""
    n = 0
    for _, m in binary_attention_modules(model):
        projections = [getattr(m, name, None) for name in PROJECTIONS]
        on = (FAST_PATH in m.__dict__ and type(m).__name__ in BYTE_SAFE
              and getattr(m, "position_embedding_type", "absolute") == "absolute"
              and all(getattr(p, "sign_output", None) is not None for p in projections))
        for p in projections:
            if getattr(p, "sign_output", None) is not None:
                p.sign_output.as_bytes = on
        if on:
            setattr(m, SIGN_SOURCES, tuple(projections))
            setattr(m, SIGN_FLOATS, signs_to_float)
            n += 1
        else:
            for attr in (SIGN_SOURCES, SIGN_FLOATS):
                if attr in m.__dict__:
                    delattr(m, attr)
    return n


# An additive mask value at or below this removes a key: its probability underflows to exactly 0
# in float32 (the binary scores are bounded by c·head_dim, far smaller in magnitude).
_MASKED = -1.0e4


# (mask, its version, batch, key_len, result): every layer of a forward gets the same mask. One
# tuple, read and replaced whole, so concurrent forwards never pair one mask with another's answer.
_LAST_MASK: list = [None]


def key_padding(mask: torch.Tensor | None, batch: int, key_len: int) -> torch.Tensor | None | bool:
    """The real keys (batch, key_len) bool of an additive attention mask that only removes padded
    keys (the same for every query and head): None when there is no mask or it removes nothing,
    False when it is anything else (a causal or biased mask: the general path handles it). The
    last answer is kept for the same mask object at the same version: all the layers of a forward
    pass receive one mask, and it is checked once (the cache holds the mask, so its identity
    cannot pass to another tensor). A mask made under torch.inference_mode has no version counter,
    so it is checked on every call."""
    if mask is None:
        return None
    if mask.is_inference():  # no version counter to tell an in-place change: checked every time
        return _key_padding(mask, batch, key_len)
    last = _LAST_MASK[0]
    if last is not None and last[0] is mask and last[1:4] == (mask._version, batch, key_len):
        return last[4]
    result = _key_padding(mask, batch, key_len)
    _LAST_MASK[0] = (mask, mask._version, batch, key_len, result)
    return result


def _key_padding(mask: torch.Tensor, batch: int, key_len: int) -> torch.Tensor | None | bool:
    if (not mask.is_floating_point() or mask.dim() != 4 or mask.size(1) != 1 or mask.size(0) not in (1, batch)
            or mask.size(-1) != key_len):
        return False
    first = mask[:, :, :1]
    if mask.size(2) > 1 and not torch.equal(mask, first.expand_as(mask)):
        return False
    row = first[:, 0, 0]  # (1 or batch, key_len)
    keep = row == 0
    if not bool((keep | (row <= _MASKED)).all()):
        return False
    if bool(keep.all()):
        return None
    return keep.expand(batch, key_len).contiguous()


def wire_binary_attention_(model: nn.Module, on: bool = True) -> int:
    """Set (or clear) the kernel fast path on every binary-attention module with an active
    probability binarizer; returns how many run on it."""
    n = 0
    for _, m in binary_attention_modules(model):
        use = on and getattr(m, PROB_QUANTIZER, None) is not None and kernels.extension() is not None
        if use:
            setattr(m, FAST_PATH, binary_attention_forward)
            n += 1
        elif FAST_PATH in m.__dict__:
            delattr(m, FAST_PATH)
    return n

