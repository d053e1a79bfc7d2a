"""Kronecker decomposition of linear layers and embeddings (KnGPT2, Edalati et al. 2021).

``nkp`` (nearest Kronecker product), ``layers`` (KroneckerLinear, KroneckerEmbedding), ``shapes``
(factor-shape search), ``api`` (KroneckerConfig, kroneckerize_, densify_).
"""

from ..core.transforms import TransformMethod, register_transform
from .api import KroneckerConfig, KroneckerReport, densify_, kroneckerize_
from .describe import describe_kron
from .layers import KroneckerEmbedding, KroneckerLinear, KroneckerTiedHead
from .nkp import max_rank, nearest_kronecker, relative_error

# The method's one registration. Kronecker layers are stored as their factors in every format (a
# quantized Kronecker layer is packed by the quant method), so there is no pack step of its own.
# A language model's transform replayed on its classifier: a classifier has no LM head, so a
# Kronecker embedding is no longer tied to one (a dense embedding had no tie to drop).
register_transform(TransformMethod(kind="kron", config_cls=KroneckerConfig, apply=kroneckerize_, undo=densify_,
                                   for_new_head=lambda config: ({**config, "tie_head": False}
                                                                if config.get("embeddings") else config),
                                   describe=describe_kron))

__all__ = ["KroneckerConfig", "KroneckerReport", "kroneckerize_", "densify_", "nearest_kronecker",
           "max_rank", "relative_error", "KroneckerLinear", "KroneckerEmbedding", "KroneckerTiedHead"]
