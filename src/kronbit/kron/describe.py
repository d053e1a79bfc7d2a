"""The Kronecker method in words, for a model card (its ``describe`` in the transform registry)."""

from __future__ import annotations

from typing import Any


def describe_kron(config: dict[str, Any]) -> dict[str, Any]:
    """{"summary": ..., "rows": [(label, text)], "tags": [...]} for a recorded KroneckerConfig."""
    c = config.get("compression")
    if c:
        how = f"each layer ≥ {c:g}× fewer parameters (factor shapes chosen per layer)"
    else:
        how = f"A {config.get('a_shape')} ⊗ B {config.get('b_shape')}"
    layers = config.get("layers")
    rows = [("Kronecker decomposition", f"linear layers as Σ A ⊗ B, rank {config.get('rank', 1)}: {how}; "
                                        f"blocks: {layers if layers is not None else 'all'}")]
    if config.get("embeddings"):
        rows.append(("token embedding", f"Kronecker (factor {config.get('embedding_factor', 2)}, rank "
                                        f"{config.get('embedding_rank', 1)})"))
    return {"summary": f"Kronecker ×{c:g}" if c else "Kronecker", "rows": rows, "tags": ["kronecker-decomposition"]}
