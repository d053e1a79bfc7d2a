"""kronbit: make transformer language models small and fast.

Two published methods, done properly and measured honestly: two-stage progressive quantization
(TSPQ) of BERT encoders and Kronecker decomposition (KnGPT2) of GPT-style decoders.

Public API::

    from kronbit import quantize_, QuantConfig, set_bits_, dequantize_
    from kronbit import kroneckerize_, KroneckerConfig, densify_
    from kronbit import KDConfig, load_recipe, run_recipe, load_model
    from kronbit import export_packed, load_packed, size_report

The names are resolved on first use (PEP 562), so ``import kronbit`` and the command line start
without importing torch and transformers; ``from kronbit import X`` works as usual.

After ``import kronbit``, plain transformers loads the folders kronbit writes::

    import kronbit
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained("exported-folder")
"""

from __future__ import annotations

import importlib
from typing import Any

from . import hf_hook

__version__ = "0.1.0"

# transformers loads kronbit folders with from_pretrained once kronbit is imported: the quantizer
# is registered when transformers' quantizer registry loads (without importing transformers here).
hf_hook.install()

# public name -> the module that defines it
_EXPORTS = {
    "quantize_": "kronbit.quant", "QuantConfig": "kronbit.quant", "set_bits_": "kronbit.quant",
    "dequantize_": "kronbit.quant",
    "kroneckerize_": "kronbit.kron", "KroneckerConfig": "kronbit.kron", "densify_": "kronbit.kron",
    "KDConfig": "kronbit.distill",
    "load_recipe": "kronbit.runner", "run_recipe": "kronbit.runner",
    "load_model": "kronbit.formats", "export_packed": "kronbit.formats", "load_packed": "kronbit.formats",
    "size_report": "kronbit.formats",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kronbit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
