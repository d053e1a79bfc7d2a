"""Kronecker decomposition of linear layers and embeddings (KnGPT2, Edalati et al. 2021).

``nkp`` (nearest Kronecker product), ``layers`` (KroneckerLinear, KroneckerEmbedding), ``shapes``
(factor-shape search), ``api`` (KroneckerConfig, kroneckerize_, densify_).
"""

from .api import KroneckerConfig, KroneckerReport, densify_, kroneckerize_
from .layers import KroneckerEmbedding, KroneckerLinear, KroneckerTiedHead
from .nkp import max_rank, nearest_kronecker, relative_error

__all__ = ["KroneckerConfig", "KroneckerReport", "kroneckerize_", "densify_", "nearest_kronecker",
           "max_rank", "relative_error", "KroneckerLinear", "KroneckerEmbedding", "KroneckerTiedHead"]
