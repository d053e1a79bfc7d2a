"""Knowledge distillation: one loss registry, one layer map, one Trainer subclass, shared by the
TSPQ (encoder) and KnGPT2 (decoder) methods."""

from .losses import LOSSES, KDConfig, distillation_loss
from .mapping import layer_map

__all__ = ["LOSSES", "KDConfig", "distillation_loss", "layer_map"]
