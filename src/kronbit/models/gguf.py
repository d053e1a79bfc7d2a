"""GGUF files as ordinary Hugging Face models.

Why the detour needs care: a GGUF-loaded model carries a ``quantization_config`` and a GGUF
quantizer, and ``save_pretrained`` refuses it, so every compressed student built from it could
never be saved. We rebuild the same architecture from a clean config and load the dequantized
state dict, giving an ordinary fp32 model with bit-identical logits (checked on every conversion).
Dequantizing takes ~20 s, so the converted model is cached once as a plain HF directory under
``cache_root()``; later loads take a few seconds.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.initialization import no_init_weights

from ..core.errors import ModelError
from ..core.io import atomic_dir, write_json
from .packaged import cache_root
from .hub import from_pretrained

# Written into every GGUF conversion directory: which file it came from, so a changed file is
# converted again instead of silently reusing a stale cache.
SOURCE_META = "kronbit-source.json"
# The GGUF reader's errors for a cut-short file are numpy's ("cannot reshape array ..."), naming no file.
GGUF_HINT = " (is the GGUF file damaged or truncated?)"


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("reading GGUF files needs the gguf package: pip install gguf")


def gguf_cache_dir(gguf_path: str | Path) -> Path:
    """Where the plain-HF conversion of ``gguf_path`` is cached (keyed by path, size and mtime)."""
    p = Path(gguf_path).resolve()
    st = p.stat()
    key = hashlib.sha1(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{p.stem}-{key}"


def _gguf_source(gguf_path: Path) -> dict[str, Any]:
    st = gguf_path.stat()
    return {"gguf_file": gguf_path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cache_is_valid(folder: Path, gguf_path: Path) -> bool:
    meta = folder / SOURCE_META
    if not (meta.is_file() and (folder / "config.json").is_file()):
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")) == _gguf_source(gguf_path)
    except json.JSONDecodeError:
        return False


def load_gguf_model(gguf_path: str | Path, dtype: torch.dtype = torch.float32):
    """The model exactly as transformers loads a GGUF file (dequantized, but still flagged as
    GGUF-quantized, so it cannot be saved; see ``to_plain_causal_lm``)."""
    _require_gguf_reader()
    p = Path(gguf_path)
    return from_pretrained(AutoModelForCausalLM, str(p.parent), gguf_file=p.name, dtype=dtype, source=str(p),
                           hint=GGUF_HINT)


def load_gguf_tokenizer(gguf_path: str | Path):
    _require_gguf_reader()
    p = Path(gguf_path)
    return from_pretrained(AutoTokenizer, str(p.parent), gguf_file=p.name, source=str(p), hint=GGUF_HINT)


def to_plain_causal_lm(model):
    """The same architecture and weights without GGUF quantization state, so it saves normally.

    Built from a copy of the config minus ``quantization_config``; the state dict is loaded
    strictly (every tensor must match), and tied embeddings stay tied.
    """
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with no_init_weights():  # every weight is overwritten below; random init would waste seconds
        plain = type(model)(config)
    plain.load_state_dict(model.state_dict(), strict=True)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    return plain.to(next(model.parameters()).dtype).eval()


@torch.no_grad()
def _check_same_logits(a, b, vocab_size: int) -> None:
    ids = torch.arange(1, 9).remainder(vocab_size).unsqueeze(0)
    la, lb = a(input_ids=ids).logits, b(input_ids=ids).logits
    if not torch.equal(la, lb):
        diff = (la - lb).abs().max().item()
        raise ModelError(f"GGUF conversion changed the logits (max abs diff {diff:.3g}); please report this")


def save_causal_lm(model, tokenizer, out_dir: str | Path, source: dict[str, Any] | None = None) -> Path:
    """Save model + tokenizer as one HF directory, atomically (never a half-written cache)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if source is not None:
            write_json(tmp / SOURCE_META, source)
    return out_dir


def convert_gguf(gguf_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Dequantize a GGUF file once into a plain fp32 HF directory (default: the user cache)."""
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir) if out_dir is not None else gguf_cache_dir(gguf_path)
    gguf_model = load_gguf_model(gguf_path)
    plain = to_plain_causal_lm(gguf_model)
    _check_same_logits(gguf_model, plain, plain.config.vocab_size)
    del gguf_model
    return save_causal_lm(plain, load_gguf_tokenizer(gguf_path), out_dir, _gguf_source(gguf_path))


def gguf_dir(gguf_path: str | Path, cache: bool = True) -> Path | None:
    """The cached conversion of a GGUF file (converted now if needed); None when cache=False."""
    if not cache:
        return None
    folder = gguf_cache_dir(gguf_path)
    if not _cache_is_valid(folder, Path(gguf_path)):
        convert_gguf(gguf_path, folder)
    return folder


