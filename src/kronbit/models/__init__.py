"""Hugging Face models in: packaged offline models (one table, ``packaged``), GGUF conversion
(``gguf``), what a ``--model`` value names (``resolve``), encoders as GLUE classifiers
(``encoders``) and causal LMs (``decoders``). Depends only on ``core``."""

from .decoders import load_causal_lm, load_causal_tokenizer
from .encoders import classifier_config, load_classifier, load_tokenizer
from .packaged import PACKAGED, packaged_model_dir
from .resolve import resolve_model

__all__ = ["load_causal_lm", "load_causal_tokenizer", "load_classifier", "load_tokenizer", "classifier_config",
           "PACKAGED", "packaged_model_dir", "resolve_model"]
