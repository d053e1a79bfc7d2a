"""kronbit: make transformer language models small and fast.

Two published methods, done properly and measured honestly: two-stage progressive quantization
(TSPQ) of BERT encoders and Kronecker decomposition (KnGPT2) of GPT-style decoders.

Public API::

    from kronbit import quantize_, QuantConfig, set_bits_, dequantize_
    from kronbit import kroneckerize_, KroneckerConfig, densify_
    from kronbit import KDConfig, load_recipe, run_recipe, load_model
    from kronbit import export_packed, load_packed, size_report
"""

__version__ = "0.1.0"

from .checkpoint import load_model  # noqa: E402
from .distill import KDConfig  # noqa: E402
from .export import export_packed, load_packed, size_report  # noqa: E402
from .kron import KroneckerConfig, densify_, kroneckerize_  # noqa: E402
from .quant import QuantConfig, dequantize_, quantize_, set_bits_  # noqa: E402
from .recipe import load_recipe, run_recipe  # noqa: E402

__all__ = ["__version__", "quantize_", "QuantConfig", "set_bits_", "dequantize_", "kroneckerize_",
           "KroneckerConfig", "densify_", "KDConfig", "load_recipe", "run_recipe", "load_model",
           "export_packed", "load_packed", "size_report"]
