"""``from_pretrained`` with kronbit's error rule: a model that cannot be loaded is one line naming
it (or the damaged file in it), not a traceback from deep inside transformers."""

from __future__ import annotations

from safetensors import SafetensorError

from ..core.errors import ModelError
from ..core.io import damaged_file


def from_pretrained(loader, name: str, *, source: str | None = None, hint: str = "", **kwargs):
    """``loader.from_pretrained(name, **kwargs)``; on failure one line naming ``source`` (default
    ``name``), or the damaged file in it, with ``hint`` appended."""
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError, SafetensorError) as e:
        # transformers' messages for a truncated file name none (safetensors: "header too small")
        damaged = damaged_file(name)
        if damaged:
            raise ModelError(damaged) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model '{source or name}': {first}{hint}") from None
