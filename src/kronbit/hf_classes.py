"""The kronbit quantization method as transformers sees it: a quantization config and an
``HfQuantizer``, registered under ``quant_method: "kronbit"`` (``kronbit.hf_hook`` imports this
module when transformers' quantizer registry loads).

With them, ``AutoModelFor*.from_pretrained(folder)`` (and ``pipeline``) loads a folder kronbit
wrote — packed or compressed — into the same modules ``kronbit.load_packed`` /
``load_compressed`` build, and ``save_pretrained`` writes a folder that loads again the same way.
The work is in ``kronbit.formats.hf_quantizer``. It is imported on first use rather than at the
top of this module, because this module is imported while transformers itself is still being
imported (its registry has just loaded, its modeling code may not have), and kronbit's formats
import that modeling code: importing them here would be a circular import inside transformers.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType
from typing import Any

import torch
from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING,
                                          register_quantization_config, register_quantizer)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .core.errors import ModelError

QUANT_METHOD = "kronbit"  # = kronbit.formats.hf_config.QUANT_METHOD (not imported: see above)
BACKEND = "kronbit.formats.hf_quantizer"


def _backend() -> ModuleType:
    return importlib.import_module(BACKEND)


class KronbitConfig(QuantizationConfigMixin):
    """config.json's ``quantization_config`` of a kronbit folder, as written by kronbit (see
    ``kronbit.formats.hf_config``): the format and its version, the tensors file, the recorded
    transforms and, for a packed folder, how each module is packed."""

    def __init__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.quant_method = QUANT_METHOD

    @property
    def block(self) -> dict[str, Any]:
        """The attributes themselves (not a copy): ``save_pretrained`` updates them."""
        return vars(self)


class KronbitHfQuantizer(HfQuantizer):
    """Rebuilds kronbit's modules before transformers loads the tensors into them."""

    requires_calibration = False

    def validate_environment(self, *args: Any, device_map: Any = None, **kwargs: Any) -> None:
        if not self.pre_quantized:
            raise ModelError("kronbit does not quantize a model while loading it: its models are trained "
                             "(kronbit run) and exported (kronbit export); load such a folder instead")
        _backend().check_config(self.quantization_config.block)
        devices = set(device_map.values()) if isinstance(device_map, dict) else {device_map}
        if devices - {None, "cpu", torch.device("cpu")}:
            raise ModelError(f"kronbit models run on the CPU; device_map={device_map!r} is not supported")

    def update_dtype(self, dtype: torch.dtype) -> torch.dtype:
        # Scales, biases and norms are computed in float32, as kronbit's own loaders give them. (A
        # folder exported with float16 storage makes transformers' dtype="auto" propose float16.)
        stored = getattr(self.quantization_config, "dtype", "float32")
        if isinstance(dtype, torch.dtype) and dtype not in (torch.float32, getattr(torch, stored, None)):
            warnings.warn(f"kronbit models compute in float32; dtype={dtype} is ignored", stacklevel=2)
        return torch.float32

    def update_attn_implementation(self, config):
        # The one hook that sees the config before transformers looks for the tensors file: point
        # it at kronbit's file name (None: a save_pretrained folder, transformers' default names).
        weights = getattr(self.quantization_config, "weights", None)
        if weights:
            config.transformers_weights = weights
        return config

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs: Any):
        _backend().prepare(model, self.quantization_config.block, checkpoint_files)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs: Any):
        _backend().finish(model, self.quantization_config.block)
        return model

    def get_state_dict_and_metadata(self, model):
        return _backend().state_dict_for_save(model, self.quantization_config.block)

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        # A compressed model keeps its latent weights and fake quantizers (it trains); a packed one
        # holds integer codes only.
        return not _backend().is_packed_block(self.quantization_config.block)


def register() -> None:
    """Register both classes under ``quant_method: "kronbit"`` (once)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(KronbitConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(KronbitHfQuantizer)


# Imported directly (before transformers' registry was loaded), this module registers itself: the
# import hook defers to it while it is still being executed.
register()
