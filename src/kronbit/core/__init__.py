"""The base layer: errors, config dataclasses, atomic file writing, multi-process helpers, run
directories, the module-swap mechanism and the transform registry. Imports nothing else of
kronbit."""
