"""Perplexity of a causal LM on a token stream, by the standard sliding-window method.

The stream is too long for one forward pass, so it is read in windows of ``max_length`` tokens
that start ``stride`` tokens apart. Each window scores only the tokens no earlier window scored
(its last ``stride`` tokens, or all of the first window), so every scored token is predicted
from at least ``max_length - stride`` tokens of context and no token counts twice. This is the
method of the Hugging Face perplexity guide (and of the GPT-2 WikiText evaluations); unlike that
guide's snippet, the NLL here is an exact sum over scored tokens, not a per-window mean times the
window length, so the number does not depend on how windows were batched.

* ``stride == max_length``: disjoint blocks; the first token of each block has no context and is
  not scored (plain block-wise NLL).
* ``stride < max_length``: every token but the very first of the stream is scored exactly once.

``perplexity = exp(total NLL / tokens scored)``.
"""

from __future__ import annotations

import inspect
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.config import Config
from ..core.errors import ConfigError, DataError
from ..core.hardware import BF16Setting, resolve_bf16
from ..data.lm import tokenize_text


def model_context_length(model) -> int | None:
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first_scored)`` per window: the window is ``ids[begin:end]`` and it scores
    the tokens ``ids[first_scored:end]``. Together the scored ranges tile ``[1, n)`` when
    ``stride < max_length`` (block starts are skipped when ``stride == max_length``)."""
    if not 1 <= stride <= max_length:
        raise ConfigError(f"stride must be between 1 and max_length ({max_length}), got {stride}")
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        first = max(prev_end, begin + 1)  # a window's first token has no context to predict it from
        if first < end:
            windows.append((begin, end, first))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def _as_ids(tokens, text: str | None, max_tokens: int | None) -> torch.Tensor:
    if hasattr(tokens, "convert_tokens_to_ids"):  # a tokenizer
        if text is None:
            raise ConfigError("perplexity() got a tokenizer but no text; pass text=... or token ids")
        ids = tokenize_text(tokens, text, max_tokens=max_tokens)
        return torch.tensor(ids, dtype=torch.long)
    if text is not None:
        raise ConfigError("perplexity() got both token ids and text; pass one of them")
    ids = torch.as_tensor(tokens, dtype=torch.long).flatten()
    return ids[:max_tokens] if max_tokens is not None else ids


@torch.no_grad()
def perplexity(model, tokens: Any, text: str | None = None, *, max_length: int | None = None,
               stride: int | None = None, batch_size: int = 1, bf16: bool = False,
               max_tokens: int | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Sliding-window perplexity of ``model`` on ``text`` (with a tokenizer) or on token ids.

    ``max_length`` defaults to the model's context capped at 1024, ``stride`` to half of it.
    ``max_tokens`` keeps the first N tokens of the stream. ``bf16`` runs the forward passes under
    CPU/GPU autocast to bfloat16; the loss is always summed in float32.

    Returns ``{"ppl", "nll" (mean per scored token), "nll_sum", "tokens_scored", "windows",
    "tokens", "max_length", "stride", "seconds"}``.
    """
    ids = _as_ids(tokens, text, max_tokens)
    context = model_context_length(model)
    if max_length is None:
        max_length = min(context or 1024, 1024)
    if context is not None and max_length > context:
        raise ConfigError(f"max_length {max_length} exceeds the model's context of {context} tokens")
    stride = max_length // 2 if stride is None else stride
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2, got {max_length}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if ids.numel() < 2:
        raise DataError(f"perplexity needs at least 2 tokens, got {ids.numel()}")
    windows = sliding_windows(ids.numel(), max_length, stride)

    # Windows of the same length and scored span batch together (all but the first and last).
    groups: list[list[tuple[int, int, int]]] = []
    for w in windows:
        if groups and len(groups[-1]) < batch_size and _shape(groups[-1][0]) == _shape(w):
            groups[-1].append(w)
        else:
            groups.append([w])

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # Only the scored positions need logits; skipping the rest saves most of the LM-head cost.
    trim = "logits_to_keep" in inspect.signature(model.forward).parameters
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    nll_sum, scored, start = 0.0, 0, time.perf_counter()
    try:
        for group in tqdm(groups, desc="perplexity", unit="batch", disable=(len(groups) < 4 or None)
                          if progress is None else not progress):
            length, n_scored = _shape(group[0])
            batch = torch.stack([ids[b:e] for b, e, _ in group]).to(device)
            targets = batch[:, length - n_scored:]
            kwargs = {"logits_to_keep": n_scored + 1} if trim else {}
            with autocast:
                logits = model(input_ids=batch, use_cache=False, **kwargs).logits
            # Position t predicts token t+1: the scored tokens are predicted by the n_scored
            # positions just before them.
            logits = logits[:, -(n_scored + 1):-1].float()
            nll_sum += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                       reduction="sum").item()
            scored += targets.numel()
    finally:
        model.train(was_training)
    nll = nll_sum / scored
    return {"ppl": math.exp(nll), "nll": nll, "nll_sum": nll_sum, "tokens_scored": scored,
            "windows": len(windows), "tokens": int(ids.numel()), "max_length": max_length,
            "stride": stride, "seconds": round(time.perf_counter() - start, 3)}


def _shape(window: tuple[int, int, int]) -> tuple[int, int]:
    begin, end, first = window
    return end - begin, end - first



@dataclass
class PerplexityConfig(Config):
    """How a language-model stage is scored: sliding-window perplexity on a text (a budget of its
    first tokens)."""

    text: str = "wikitext2-test"
    max_length: int = 512
    stride: int = 256
    max_tokens: int | None = 40_000
    batch_size: int = 4
    bf16: BF16Setting = "auto"
    # Also score the student when its training tokens reach each of these marks (the curve of one
    # run, workflows/ppl_curve.py); None: only before and after the stage.
    at_tokens: list[int] | None = None

    def validate(self) -> None:
        if self.max_length < 2 or not 0 < self.stride <= self.max_length:
            raise ConfigError(f"perplexity: need max_length ≥ 2 and 0 < stride ≤ max_length "
                              f"(got {self.max_length}, {self.stride})")
        if self.at_tokens is not None and (not isinstance(self.at_tokens, list)
                                           or not all(isinstance(t, int) and t > 0 for t in self.at_tokens)):
            raise ConfigError(f"perplexity.at_tokens must be a list of positive token counts, got {self.at_tokens!r}")


def score_perplexity(model, tokenizer, text: str, cfg: PerplexityConfig) -> dict[str, Any]:
    r = perplexity(model.eval(), tokenizer, text, max_length=cfg.max_length, stride=cfg.stride,
                   batch_size=cfg.batch_size, bf16=resolve_bf16(cfg.bf16), max_tokens=cfg.max_tokens, progress=False)
    return {"ppl": r["ppl"], "ppl_tokens": r["tokens_scored"]}
