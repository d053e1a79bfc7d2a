"""What a user's ``--model`` value names: a packaged model, a run directory, a model directory or a
hub id."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import ModelError
from .gguf import gguf_dir
from .packaged import PACKAGED, packaged, packaged_path


def packaged_dir(alias: str) -> Path:
    """The Hugging Face directory of ``packaged:ALIAS``: the packaged folder itself, or, for a
    packaged GGUF decoder, its plain conversion (made once and cached)."""
    p = packaged(alias)
    if p.kind == "tokenizer":
        others = ", ".join(f"packaged:{a}" for a, q in PACKAGED.items() if q.kind != "tokenizer")
        raise ModelError(f"packaged:{alias} is a tokenizer only (no weights ship offline); for a model use a hub id, "
                         f"a local directory or {others}")
    path = packaged_path(alias)
    return gguf_dir(path) if p.kind == "gguf" else path


def resolve_model(name_or_path: str | Path) -> str:
    """Turn a user's --model value into something ``from_pretrained`` accepts.

    ``packaged:ALIAS`` → the packaged directory; a run directory (holding ``model/``) → its final
    model; an existing directory → itself; a string that looks like a path but does not exist →
    an error (rather than a confusing hub lookup); anything else → a hub id.
    """
    s = str(name_or_path)
    if s.startswith("packaged:"):
        return str(packaged_dir(s.split(":", 1)[1]))
    p = Path(s).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return str(p)
        if (p / "model" / "config.json").is_file():  # a kronbit run directory (final model)
            return str(p / "model")
        raise ModelError(f"{p} is a directory but holds no config.json (not a Hugging Face model directory)")
    if p.exists():
        raise ModelError(f"{p} is a file; --model takes a model directory or a hub id")
    # A hub id is NAME or ORG/NAME; "runs/rte-teacher" has that shape too, but when its first part
    # is a local directory the user meant a path (a hub lookup would retry for a minute, then fail).
    first = s.split("/", 1)[0]
    looks_local = (s.startswith((".", "/", "~")) or s.count("/") > 1 or "\\" in s
                   or ("/" in s and Path(first).expanduser().is_dir()))
    if looks_local:
        raise ModelError(f"model path does not exist: {s}")
    return s


