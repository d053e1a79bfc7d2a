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
from ..core.transforms import TransformMethod, register_transform
from .export import pack_module, packed_shell
from .packed import after_load
from .describe import describe_quant
from .layers import QuantEmbedding, QuantLinear, QuantModule
from .quantizers import SCALE_PARAM_SUFFIXES
from .registry import ACT_QUANTIZERS, WEIGHT_QUANTIZERS

# The method's one registration: its config, how it is applied and undone, how its modules are
# packed and rebuilt from the packed format.
register_transform(TransformMethod(kind="quant", config_cls=QuantConfig, apply=quantize_, undo=dequantize_,
                                   pack=pack_module, shell=packed_shell, describe=describe_quant,
                                   after_load=after_load))

__all__ = ["QuantConfig", "quantize_", "set_bits_", "dequantize_", "quantized_modules", "quant_state",
           "bits_summary", "quantizer_parameters", "QuantLinear", "QuantEmbedding", "QuantModule", "SCALE_PARAM_SUFFIXES",
           "WEIGHT_QUANTIZERS", "ACT_QUANTIZERS"]
