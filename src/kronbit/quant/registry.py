"""The quantizer registry: config name → the bit-widths it supports and how it is built from the
options a ``QuantConfig`` can set (each quantizer takes the options that apply to it), plus what
``auto`` means at each bit-width."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from torch import nn

from ..core.errors import ConfigError
from .quantizers import (ActQuantizer, BWNWeight, ElasticAct, ElasticUnsignedAct, LSQAct, LSQWeight, MinMaxAct,
                         TWNWeight, UniformWeight, WeightQuantizer)


class QuantizerSpec(NamedTuple):
    bits: tuple[int, ...]
    build: Callable[..., nn.Module]  # build(bits, **options) with every option a config can set


WEIGHT_QUANTIZERS: dict[str, QuantizerSpec] = {
    "uniform": QuantizerSpec((2, 4, 8), lambda b, granularity, symmetric, clip_ratio, clip_val, **_:
                             UniformWeight(b, granularity, symmetric, clip_ratio, clip_val)),
    "lsq": QuantizerSpec((2, 4, 8), lambda b, granularity, shape, **_: LSQWeight(b, granularity, shape)),
    "twn": QuantizerSpec((2,), lambda b, granularity, clip_val, **_: TWNWeight(b, granularity, clip_val)),
    "bwn": QuantizerSpec((1,), lambda b, granularity, mean_centering, clip_val, **_:
                         BWNWeight(b, granularity, mean_centering, clip_val)),
}
ACT_QUANTIZERS: dict[str, QuantizerSpec] = {
    "minmax": QuantizerSpec((2, 4, 8), lambda b, symmetric, clip_ratio, clip_val, **_:
                            MinMaxAct(b, symmetric, clip_ratio, clip_val)),
    "lsq": QuantizerSpec((2, 4, 8), lambda b, **_: LSQAct(b)),
    "elastic": QuantizerSpec((1, 2, 4, 8), lambda b, features, **_: ElasticAct(b, features)),
    # BiT's {0, α} for non-negative inputs (GELU outputs), learnable per-feature threshold offset
    "elastic_unsigned": QuantizerSpec((1, 2, 4, 8), lambda b, features, **_: ElasticUnsignedAct(b, features)),
}
# What "auto" means per bit-width: the choices of TernaryBERT (8/4-bit uniform, ternary TWN,
# 8-bit min-max activations) and BinaryBERT/BiT (BWN weights, elastic binary activations).
AUTO_WEIGHT = {8: "uniform", 4: "uniform", 2: "twn", 1: "bwn"}
AUTO_ACT = {8: "minmax", 4: "minmax", 2: "minmax", 1: "elastic"}


def resolve(name: str, bits: int, auto: dict[int, str]) -> str:
    """The registry name ``name`` stands for at ``bits`` ("auto" resolved)."""
    return auto[bits] if name == "auto" else name


def _bits_text(bits: tuple[int, ...]) -> str:
    return ", ".join(map(str, bits)) + (" bit" if bits == (1,) else " bits")


def check_quantizer(key: str, name: str, bits: int, registry: dict[str, QuantizerSpec], bits_key: str) -> None:
    """Raise a one-line ConfigError when ``name`` is unknown or cannot do ``bits`` (32 = off)."""
    if name != "auto" and name not in registry:
        raise ConfigError(f"{key} '{name}' is unknown; choose auto or one of: "
                          + ", ".join(f"{n} ({_bits_text(s.bits)})" for n, s in registry.items()))
    if name == "auto" or bits >= 32 or bits in registry[name].bits:
        return
    others = [n for n, s in registry.items() if bits in s.bits]
    raise ConfigError(f"{key} '{name}' supports {bits_key} {', '.join(map(str, registry[name].bits))}, "
                      f"not {bits}; for {bits_key}={bits} use auto or one of: {', '.join(others) or 'none'}")


def build_weight_quantizer(bits: int, name: str, *, granularity: str = "row", symmetric: bool = True,
                           mean_centering: bool = True, clip_ratio: float = 1.0, clip_val: float | None = None,
                           shape: tuple[int, ...] | None = None) -> WeightQuantizer:
    """The weight quantizer ``name`` ("auto" allowed) at ``bits``."""
    check_quantizer("weight_quantizer", name, bits, WEIGHT_QUANTIZERS, "w_bits")
    options: dict[str, Any] = dict(granularity=granularity, symmetric=symmetric, mean_centering=mean_centering,
                                   clip_ratio=clip_ratio, clip_val=clip_val, shape=shape)
    return WEIGHT_QUANTIZERS[resolve(name, bits, AUTO_WEIGHT)].build(bits, **options)


def build_act_quantizer(bits: int, name: str, *, symmetric: bool = True, clip_ratio: float = 1.0,
                        clip_val: float | None = None, features: int | None = None) -> ActQuantizer:
    """The activation quantizer ``name`` ("auto" allowed) at ``bits``; ``features`` is the size
    of the last dim (elastic keeps one offset per feature)."""
    check_quantizer("act_quantizer", name, bits, ACT_QUANTIZERS, "a_bits")
    options: dict[str, Any] = dict(symmetric=symmetric, clip_ratio=clip_ratio, clip_val=clip_val, features=features)
    return ACT_QUANTIZERS[resolve(name, bits, AUTO_ACT)].build(bits, **options)
