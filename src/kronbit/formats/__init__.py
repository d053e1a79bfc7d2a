"""Model formats on disk: the metadata every kronbit directory carries (``meta``), compressed
checkpoints rebuilt from their transforms (``compressed``), the packed format with its integer
codes (``packed``), the size report (``size``), ONNX (``onnx``), and ``load_model`` for any of
them (``load``). Formats know methods only through the transform registry; importing the method
packages here registers them."""

from .. import kron, quant  # noqa: F401  (registers the "kron" and "quant" transforms)
from .compressed import load_compressed, save_compressed
from .load import load_model
from .packed import export_packed, load_packed
from .size import size_report

__all__ = ["load_compressed", "save_compressed", "load_model", "export_packed", "load_packed", "size_report"]
