"""The Kronecker method in words, for a model card (its ``describe`` in the transform registry)."""

from __future__ import annotations

from typing import Any


def describe_kron(config: dict[str, Any]) -> dict[str, Any]:
    """{"summary": ..., "rows": [(label, text)], "tags": [...]} for a recorded KroneckerConfig.
    A recorded config is frozen: ``layer_shapes`` holds every layer's [m1, n1, m2, n2, rank]."""
    shapes = config.get("layer_shapes") or {}
    dense = sum(s[0] * s[1] * s[2] * s[3] for s in shapes.values())
    kron = sum((s[4] if len(s) > 4 else 1) * (s[0] * s[1] + s[2] * s[3]) for s in shapes.values())
    ratio = dense / kron if kron else None
    rows = []
    if shapes:
        ranks = sorted({s[4] if len(s) > 4 else 1 for s in shapes.values()})
        rows.append(("Kronecker decomposition", f"{len(shapes)} linear layers as Σ A ⊗ B (rank "
                                                f"{'/'.join(map(str, ranks))}): {dense:,} → {kron:,} parameters "
                                                f"({ratio:.2f}× fewer)"))
    if config.get("embeddings"):
        rows.append(("token embedding", f"Kronecker: A ⊗ B with B 1 × {config.get('embedding_factor', 2)}, rank "
                                        f"{config.get('embedding_rank', 1)}"))
    summary = f"Kronecker ×{ratio:.2g}" if ratio else "Kronecker"
    return {"summary": summary, "rows": rows, "tags": ["kronecker-decomposition"]}
