"""Quantization: quantizers (``quantizers``), quantized modules (``layers``), the swap API
(``api``), and size estimates (``size``)."""

from .api import QuantConfig, bits_summary, dequantize_, quantize_, quantized_modules, set_bits_
from .layers import QuantEmbedding, QuantLinear
from .quantizers import SCALE_PARAM_SUFFIXES

__all__ = ["QuantConfig", "quantize_", "set_bits_", "dequantize_", "quantized_modules", "bits_summary",
           "QuantLinear", "QuantEmbedding", "SCALE_PARAM_SUFFIXES"]
