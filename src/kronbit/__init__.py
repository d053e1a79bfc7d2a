"""kronbit: make transformer language models small and fast.

Two published methods, done properly and measured honestly: two-stage progressive quantization
(TSPQ) of BERT encoders and Kronecker decomposition (KnGPT2) of GPT-style decoders.
"""

__version__ = "0.1.0"
