"""``from_pretrained`` with kronbit's error rule: a model that cannot be loaded is one line naming
it, not a traceback from deep inside transformers."""

from __future__ import annotations

from ..core.errors import ModelError


def from_pretrained(loader, name: str, **kwargs):
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model '{name}': {first}") from None
