"""Registers kronbit's quantizer with transformers on ``import kronbit`` — without importing
transformers.

``import kronbit`` has to stay cheap: the command line imports the package root, and ``kronbit
--help`` answers in a fraction of a second, while transformers' quantizer registry pulls in torch
and transformers' modeling code (seconds). So the package root calls ``install()``: when the
registry (``transformers.quantizers.auto``) is already imported, kronbit's classes are registered
at once; otherwise a finder on ``sys.meta_path`` waits for the registry module to be executed and
registers them right after it, before anything can call ``from_pretrained``. Only the standard
library is imported here.
"""

from __future__ import annotations

import importlib
import sys
import warnings

REGISTRY = "transformers.quantizers.auto"
CLASSES = "kronbit.hf_classes"


def register_now() -> None:
    """Register kronbit's config and quantizer classes with transformers (idempotent). A failure
    is a warning, never an error: it must not break the user's import of transformers."""
    being_imported = sys.modules.get(CLASSES)
    if being_imported is not None and not hasattr(being_imported, "register"):
        return  # the registry loads because kronbit.hf_classes imports it; that module registers at its end
    try:
        importlib.import_module(CLASSES).register()
    except Exception as e:  # noqa: BLE001  (any failure: warn, load through kronbit instead)
        warnings.warn(f"kronbit: could not register its quantizer with transformers ({type(e).__name__}: {e}); "
                      "kronbit folders still load with kronbit.load_model", stacklevel=2)


class _RegisterAfter:
    """A module loader that runs the real one, then registers kronbit's classes."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        register_now()

    def __getattr__(self, name: str):  # everything else (is_package, resource readers) as before
        return getattr(self.loader, name)


class _RegistryFinder:
    """Finds nothing itself: when transformers' quantizer registry is about to be imported, it
    asks the other finders for it and wraps the loader they return."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != REGISTRY:
            return None
        uninstall()  # once is enough
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisterAfter(spec.loader)
                return spec
        return None


def installed() -> bool:
    return any(isinstance(f, _RegistryFinder) for f in sys.meta_path)


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegistryFinder)]


def install() -> None:
    """Register now if transformers' registry is loaded, else when it loads."""
    registry = sys.modules.get(REGISTRY)
    if registry is not None and hasattr(registry, "register_quantizer"):
        register_now()
    elif not installed():
        sys.meta_path.insert(0, _RegistryFinder())
