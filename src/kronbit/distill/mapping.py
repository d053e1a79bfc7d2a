"""Which teacher layer each student layer learns from.

Layers are numbered 1..N as in ``hidden_states`` (index 0 is the embedding output, always matched
to the teacher's index 0 by the embedding loss). A map is a list of (student, teacher) pairs.

* ``identity``: student layer i ↔ teacher layer i (same depth: quantized or Kronecker students).
* ``uniform``: student layer i ↔ teacher layer round(i·N_t/N_s) (TinyBERT's g(m) = m·N_t/N_s),
  so the last layers always meet.
* ``last-K``: the last K student layers ↔ the last K teacher layers.
* ``"t1,t2,..."``: an explicit teacher layer for every student layer, in order.
"""

from __future__ import annotations

from ..core.errors import ConfigError

KINDS = ("identity", "uniform", "last-K", "explicit list 't1,t2,...'")


def parse_kind(kind: str) -> str:
    """Check a layer-map spec without knowing depths (for eager config validation)."""
    k = str(kind).strip()
    if k in ("identity", "uniform"):
        return k
    if k.startswith("last-") and k[5:].isdigit() and int(k[5:]) > 0:
        return k
    parts = [p.strip() for p in k.split(",")]
    if all(p.isdigit() for p in parts) and parts:
        return k
    raise ConfigError(f"layer_map '{kind}' is not valid; choose one of: {', '.join(KINDS)}")


def layer_map(n_student: int, n_teacher: int, kind: str = "uniform") -> list[tuple[int, int]]:
    kind = parse_kind(kind)
    if kind == "identity":
        if n_student != n_teacher:
            raise ConfigError(f"layer_map 'identity' needs equal depths, but the student has {n_student} "
                              f"layers and the teacher {n_teacher}; use 'uniform'")
        return [(i, i) for i in range(1, n_student + 1)]
    if kind == "uniform":
        if n_student > n_teacher:
            raise ConfigError(f"layer_map 'uniform' needs a student no deeper than the teacher "
                              f"({n_student} > {n_teacher})")
        return [(i, round(i * n_teacher / n_student)) for i in range(1, n_student + 1)]
    if kind.startswith("last-"):
        k = int(kind[5:])
        if k > min(n_student, n_teacher):
            raise ConfigError(f"layer_map '{kind}': K={k} exceeds the depth "
                              f"(student {n_student}, teacher {n_teacher})")
        return [(n_student - k + j, n_teacher - k + j) for j in range(1, k + 1)]
    teacher = [int(p) for p in kind.split(",")]
    if len(teacher) != n_student:
        raise ConfigError(f"layer_map lists {len(teacher)} teacher layers for a {n_student}-layer student")
    bad = [t for t in teacher if not 1 <= t <= n_teacher]
    if bad:
        raise ConfigError(f"layer_map names teacher layer {bad[0]}, but the teacher has layers 1..{n_teacher}")
    return [(i + 1, t) for i, t in enumerate(teacher)]


def kept_layer_map(kind: str, kept: list[int] | None) -> str:
    """The layer map for a student whose blocks were copied from teacher blocks ``kept`` (0-based,
    a layer-dropped student): with ``identity`` or ``uniform``, each student block learns from the
    teacher block it came from; an explicit map or ``last-K`` is the user's choice and stays."""
    if not kept or parse_kind(kind) not in ("identity", "uniform"):
        return kind
    return ",".join(str(k + 1) for k in kept)
