"""The quantization API in the torchao manner: ``quantize_(model, QuantConfig(...), filter_fn)``.

``QuantConfig`` validates eagerly; ``quantize_`` swaps matching linear layers (``nn.Linear`` or
``Conv1D``, matched by name with the one swap mechanism in ``kronbit.modules``) for
``QuantLinear`` and, optionally, the word embeddings for ``QuantEmbedding``. ``set_bits_`` changes
bits on an already quantized model; ``dequantize_`` swaps back to plain layers holding the
quantized weight values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from ..config import Config
from ..errors import ConfigError
from ..modules import FilterFn, is_linear_like, set_submodule, swap_modules
from .layers import FULL, QuantEmbedding, QuantLinear
from .quantizers import ACT_QUANTIZERS, AUTO_WEIGHT, WEIGHT_QUANTIZERS

BITS = (1, 2, 4, 8, 32)
# Every linear layer inside a transformer block, whatever the architecture calls its block list
# (BERT: encoder.layer.N, GPT-2: h.N, Llama: layers.N): the pooler, classifier and LM head, which
# the papers keep in full precision, are outside the blocks.
BLOCK_LINEARS = r".*\.(layer|h|layers|block|blocks)\.\d+\..*"
# Outputs feeding the attention matmuls (Q, K, V) in BERT, GPT-2 (fused c_attn) and Llama.
ATTENTION_INPUTS = ("query", "key", "value", "c_attn", "q_proj", "k_proj", "v_proj")


@dataclass
class QuantConfig(Config):
    w_bits: int = 32
    a_bits: int = 32
    weight_quantizer: str = "auto"   # auto: uniform (8, 4 bits), twn (2), bwn (1)
    act_quantizer: str = "auto"      # auto: minmax (8, 4, 2 bits), elastic (1)
    granularity: Literal["row", "tensor"] = "row"
    symmetric: bool = True           # uniform weight quantizer: symmetric or asymmetric min-max
    mean_centering: bool = True      # bwn: binarize w - mean(w)
    target_modules: str | list[str] = BLOCK_LINEARS
    quantize_embeddings: bool = False  # the word embeddings (weights only)
    quantize_attention: bool = False   # also quantize Q/K/V outputs (inputs of the attention matmuls)
    version: int = 1

    def validate(self) -> None:
        for side, bits in (("w_bits", self.w_bits), ("a_bits", self.a_bits)):
            if bits not in BITS:
                raise ConfigError(f"{side}={bits} is not supported; choose one of {', '.join(map(str, BITS))}")
        _check_quantizer("weight_quantizer", self.weight_quantizer, self.w_bits, WEIGHT_QUANTIZERS, "w_bits")
        _check_quantizer("act_quantizer", self.act_quantizer, self.a_bits, ACT_QUANTIZERS, "a_bits")
        if self.version != 1:
            raise ConfigError(f"QuantConfig version {self.version} is not supported (this kronbit reads 1)")
        if not self.target_modules:
            raise ConfigError("target_modules is empty")

    def weight_quantizer_for(self, bits: int) -> str:
        return AUTO_WEIGHT.get(bits, "none") if self.weight_quantizer == "auto" else self.weight_quantizer


def _check_quantizer(key: str, name: str, bits: int, registry, bits_key: str) -> None:
    if name == "auto":
        return
    if name not in registry:
        raise ConfigError(f"{key} '{name}' is unknown; choose auto or one of: "
                          + ", ".join(f"{n} ({', '.join(map(str, b))} bits)" for n, (_, b) in registry.items()))
    supported = registry[name][1]
    if bits != FULL and bits not in supported:
        others = [f"{n} ({', '.join(map(str, b))})" for n, (_, b) in registry.items() if bits in b]
        raise ConfigError(f"{key} '{name}' supports {bits_key} {', '.join(map(str, supported))}, not {bits}; "
                          f"for {bits} bits use auto or: {', '.join(others) or 'none'}")


def quantize_(model: nn.Module, config: QuantConfig, filter_fn: FilterFn | None = None) -> list[str]:
    """Swap the target linear layers (and optionally word embeddings) for quantized ones, in
    place. Returns the swapped module names."""
    targets = config.target_modules

    def build(name: str, module: nn.Module):
        out = config.quantize_attention and name.rsplit(".", 1)[-1] in ATTENTION_INPUTS
        return QuantLinear.from_module(module, config, quantize_output=out)

    swapped = swap_modules(model, targets, build, filter_fn, kinds=is_linear_like, what="linear layer")
    if config.quantize_embeddings:
        emb = model.get_input_embeddings()
        name = next(n for n, m in model.named_modules() if m is emb)
        if isinstance(emb, nn.Embedding) and (filter_fn is None or filter_fn(emb, name)):
            set_submodule(model, name, QuantEmbedding.from_module(emb, config))
            swapped.append(name)
    return swapped


def quantized_modules(model: nn.Module) -> list[tuple[str, QuantLinear | QuantEmbedding]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantEmbedding))]


def set_bits_(model: nn.Module, w_bits: int, a_bits: int) -> int:
    """Change the bits of every quantized module in place (no rebuild); returns how many."""
    mods = quantized_modules(model)
    if not mods:
        raise ConfigError("set_bits_: the model has no quantized modules; call quantize_ first")
    for _, m in mods:
        # Check against each module's own quantizer choice, e.g. an explicit 'twn' cannot do 4 bits.
        _check_quantizer("weight_quantizer", m.weight_quantizer_name, w_bits, WEIGHT_QUANTIZERS, "w_bits")
        _check_quantizer("act_quantizer", m.act_quantizer_name, a_bits, ACT_QUANTIZERS, "a_bits")
    for _, m in mods:
        m.set_bits(w_bits, a_bits)
    return len(mods)


def dequantize_(model: nn.Module) -> list[str]:
    """Swap quantized modules back to plain ones holding the quantized weight values."""
    names = []
    for name, m in quantized_modules(model):
        set_submodule(model, name, m.to_module())
        names.append(name)
    return names


def bits_summary(model: nn.Module) -> dict[str, int]:
    """{"w1a1": count, ...} over quantized modules (for reports)."""
    out: dict[str, int] = {}
    for _, m in quantized_modules(model):
        key = f"w{m.w_bits}a{m.a_bits}"
        out[key] = out.get(key, 0) + 1
    return out

