"""The quant method in words, for a model card (its ``describe`` in the transform registry)."""

from __future__ import annotations

from typing import Any

from .api import quant_summary
from .layers import FULL
from .registry import AUTO_ACT, AUTO_WEIGHT, resolve

# what the codes of a weight quantizer are, where it has a common name
CODE_NAMES = {"bwn": "binary", "twn": "ternary"}


def describe_quant(config: dict[str, Any]) -> dict[str, Any]:
    """{"summary": "W1A1", "rows": [(label, text)], "tags": [...], "fields": {...}} for a recorded
    QuantConfig; the fields (bits, attention, FFN quantizer in effect) go into the size report."""
    fields = quant_summary(config)
    w, a = fields["w_bits"], fields["a_bits"]
    rows: list[tuple[str, str]] = []
    tags = ["quantized"]
    if w < FULL:
        wq = resolve(config.get("weight_quantizer", "auto"), w, AUTO_WEIGHT)
        scale = "per output row" if config.get("granularity", "row") == "row" else "per tensor"
        name = CODE_NAMES.get(wq)
        rows.append(("weights", f"{w}-bit{' ' + name if name else ''} ({wq}), one scale {scale}, stored packed"))
        tags += [f"{w}-bit"] + ([name] if name else [])
    else:
        rows.append(("weights", "full precision"))
    if a < FULL:
        aq = resolve(config.get("act_quantizer", "auto"), a, AUTO_ACT)
        where = "the inputs of the quantized layers" + (" and the attention matmuls" if config.get("quantize_attention")
                                                        else "")
        rows.append(("activations", f"{a}-bit ({aq}) at {where}"))
        if fields["ffn_act_quantizer"]:
            rows.append(("FFN intermediate activations", f"{a}-bit ({fields['ffn_act_quantizer']})"))
        if fields["attention"] == "binary":
            rows.append(("attention", "binarized as in BiT: Q, K, V signed, attention probabilities {0, α}"))
            tags.append("binary-attention")
    else:
        rows.append(("activations", "full precision"))
    rows.append(("word embeddings", "quantized like the weights" if config.get("quantize_embeddings")
                 else "full precision"))
    summary = (f"W{w}" if w < FULL else "") + (f"A{a}" if a < FULL else "")
    return {"summary": summary or "full precision", "rows": rows, "tags": tags, "fields": fields}
