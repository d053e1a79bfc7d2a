"""Layer dropping (DistilGPT2-style): the equal-size baseline student KnGPT2 is measured against.
Not a recorded transform: a layer-dropped student is an ordinary, smaller Hugging Face model."""

from .api import (LayerDropConfig, LayerDropPlan, decoder_layers, drop_layers, params_for_keep, plan_for_params,
                  resolve_keep, spread_layers)

__all__ = ["LayerDropConfig", "LayerDropPlan", "decoder_layers", "drop_layers", "params_for_keep",
           "plan_for_params", "resolve_keep", "spread_layers"]
