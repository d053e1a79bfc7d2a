"""Quantization: quantizers (``quantizers``), quantized modules (``layers``), the swap API
(``api``), and size estimates (``size``).

    from kronbit.quant import QuantConfig, quantize_, set_bits_, dequantize_
    quantize_(model, QuantConfig(w_bits=2, a_bits=8))   # TWN weights, 8-bit min-max activations
    set_bits_(model, w_bits=1, a_bits=1)                  # same modules, BWN + elastic binary

Learnable quantizer parameters are named ``*_quantizer.scale`` / ``.alpha`` / ``.beta``
(``SCALE_PARAM_SUFFIXES``; ``quantizer_parameters(model)`` lists them) so a trainer can give them
their own learning rate.
"""

from .api import (QuantConfig, bits_summary, dequantize_, quant_state, quantize_, quantized_modules,
                  quantizer_parameters, set_bits_)
from .layers import QuantEmbedding, QuantLinear
from .quantizers import ACT_QUANTIZERS, SCALE_PARAM_SUFFIXES, WEIGHT_QUANTIZERS

__all__ = ["QuantConfig", "quantize_", "set_bits_", "dequantize_", "quantized_modules", "quant_state",
           "bits_summary", "quantizer_parameters", "QuantLinear", "QuantEmbedding", "SCALE_PARAM_SUFFIXES",
           "WEIGHT_QUANTIZERS", "ACT_QUANTIZERS"]
