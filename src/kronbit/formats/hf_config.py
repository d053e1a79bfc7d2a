"""The ``quantization_config`` block kronbit writes into a folder's ``config.json``.

It is how plain ``transformers`` recognises a kronbit folder: ``from_pretrained`` hands any config
whose ``quant_method`` is ``"kronbit"`` to the quantizer kronbit registers on ``import kronbit``
(``kronbit.hf_classes``), which rebuilds the compressed modules from this block and lets
transformers load the tensors into them. The block is self-contained (the transforms, and for a
packed folder the per-module packing description) so a folder loads from ``config.json`` and its
tensors alone, wherever it is stored; ``kronbit.json`` beside it keeps the run's metadata and the
same description for ``kronbit.load_packed`` / ``load_compressed``.

``weights`` names the tensors file. kronbit's own files keep their own names on purpose: a
transformers without kronbit warns that it does not know ``quant_method: kronbit`` and then finds
no ``model.safetensors``, so it refuses the folder instead of loading random weights into a plain
model. A folder written by ``save_pretrained`` has ``weights: null`` (transformers' default names).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import ModelError
from ..core.io import write_json

QUANT_METHOD = "kronbit"
CONFIG_NAME = "config.json"
REQUIRES = "pip install kronbit, then `import kronbit` before from_pretrained"
# description keys carried into config.json, by format
_CARRIED = {"kronbit-packed": ("dtype", "transforms", "packed", "aliases"), "kronbit-compressed": ("transforms",)}


def quantization_config(description: dict[str, Any], weights: str | None) -> dict[str, Any]:
    """The config.json block for a folder whose ``kronbit.json`` content is ``description``."""
    fmt = description["format"]
    return {"quant_method": QUANT_METHOD, "requires": REQUIRES, "kronbit_version": __version__,
            "format": fmt, "format_version": description["format_version"], "weights": weights,
            "metadata": "kronbit.json", **{k: description[k] for k in _CARRIED[fmt] if k in description}}


def add_quantization_config(directory: Path, block: dict[str, Any]) -> None:
    """Put ``block`` into ``directory/config.json`` (written just before by ``save_pretrained``)."""
    path = Path(directory) / CONFIG_NAME
    config = json.loads(path.read_text(encoding="utf-8"))
    config["quantization_config"] = block
    write_json(path, config)


def is_kronbit_block(block: Any) -> bool:
    return isinstance(block, dict) and block.get("quant_method") == QUANT_METHOD


def strip_kronbit_block(config) -> None:
    """Drop a kronbit ``quantization_config`` from a transformers config read by kronbit's own
    loaders: a model kronbit builds is an ordinary module tree, and a stale block saved with it
    later (a dequantized model, a retrained stage) would describe modules it no longer has. The
    writers add a fresh block."""
    block = getattr(config, "quantization_config", None)
    if is_kronbit_block(block if isinstance(block, dict) else getattr(block, "__dict__", None)):
        del config.quantization_config


def check_version(where: str | Path, fmt: str, version: Any, readable: int, written_by: Any = None) -> None:
    """One line for a ``format_version`` this kronbit cannot read: a folder from a newer kronbit
    (upgrade), or a damaged field. Shared by ``kronbit.json`` and config.json's block."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelError(f"{where}: {fmt} format_version {version!r} is not a version number; the file is damaged")
    if version > readable:
        raise ModelError(f"{where}: {fmt} format_version {version} is not supported: written by kronbit "
                         f"{written_by or '(a newer release)'}, and this kronbit {__version__} reads up to version "
                         f"{readable}; upgrade it: pip install -U kronbit")


def check_block(block: dict[str, Any], readable: dict[str, int]) -> None:
    """One line for a block this kronbit cannot read: an unknown format, or a newer version."""
    fmt = block.get("format")
    if fmt not in readable:
        raise ModelError(f"config.json: quantization_config has format {fmt!r}, not one kronbit knows "
                         f"({', '.join(readable)}); the folder was written by another tool or a newer kronbit")
    check_version(CONFIG_NAME, fmt, block.get("format_version"), readable[fmt], block.get("kronbit_version"))
    for key in _CARRIED[fmt]:
        if key not in block and key != "aliases":
            raise ModelError(f"config.json: quantization_config ({fmt}) lacks '{key}'; the config is damaged")
