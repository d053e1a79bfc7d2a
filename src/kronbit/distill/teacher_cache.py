"""Teacher outputs computed once per training set, instead of once per step.

The teacher is frozen, so its logits, hidden states and attention scores for a training example
are the same in every epoch and every stage that trains on the same examples. A KD step that
runs the teacher live pays for one teacher forward (no backward) on top of the student's forward
and backward: about a third more work for an equal-size teacher. ``TeacherCache.build`` runs the
teacher once over the training set (longest-first batches, no gradients) and keeps, per example,
only its real tokens; ``lookup`` rebuilds a padded batch for the examples a training step draws.
Padded positions come back as zeros: every KD loss masks them (``losses.distillation_loss``), so
a cached step computes the losses a live step computes (up to the rounding of bf16 matmuls on
differently shaped batches).

Held in memory (hidden states at full precision: about 11 kB per token for a 6-layer,
384-wide encoder, plus 4·layers·heads·tokens² bytes of attention scores when attention KD is on);
``build`` returns None when the estimate exceeds ``max_bytes`` and the caller distils live.
Under a multi-process launch every process builds the whole cache (its sampler may draw any
example); the build is one teacher pass, what a live run pays per epoch anyway.
"""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .attention import keep_attention_maps, record_attention_scores


def dataset_fingerprint(features: Sequence[dict]) -> str:
    """A hash of the token ids of every example, in order: equal fingerprints mean a cache built
    for one training set can serve another (a later stage on the same subset)."""
    h = hashlib.sha256()
    for f in features:
        h.update(json.dumps(f["input_ids"]).encode())
        h.update(json.dumps(f.get("token_type_ids", [])).encode())
    return h.hexdigest()[:16]


def estimate_bytes(features: Sequence[dict], *, layers: int, hidden_size: int, heads: int,
                   num_labels: int, hidden: bool, attention: bool) -> int:
    """Memory the cache would take (fp32 hidden states and scores, an upper bound)."""
    lengths = [len(f["input_ids"]) for f in features]
    total = 4 * num_labels * len(lengths)
    if hidden:
        total += 4 * (layers + 1) * hidden_size * sum(lengths)
    if attention:
        total += 4 * layers * heads * sum(n * n for n in lengths)
    return total


class TeacherCache:
    def __init__(self, logits: list[torch.Tensor], hidden: list[torch.Tensor] | None,
                 scores: list[torch.Tensor] | None, fingerprint: str):
        self.logits, self.hidden, self.scores = logits, hidden, scores
        self.fingerprint = fingerprint

    @property
    def has_hidden(self) -> bool:
        return self.hidden is not None

    @property
    def has_attention(self) -> bool:
        return self.scores is not None

    def covers(self, *, hidden: bool, attention: bool) -> bool:
        """Whether this cache holds what a stage with these KD needs."""
        return (self.has_hidden or not hidden) and (self.has_attention or not attention)

    @property
    def nbytes(self) -> int:
        parts = [self.logits, self.hidden or [], self.scores or []]
        return sum(t.numel() * t.element_size() for group in parts for t in group)

    def __len__(self) -> int:
        return len(self.logits)

    @classmethod
    @torch.no_grad()
    def build(cls, teacher: nn.Module, features: Sequence[dict], collator, *, hidden: bool, attention: bool,
              batch_size: int = 64, bf16: bool = True, max_bytes: float | None = None,
              progress: bool = True) -> "TeacherCache | None":
        """Run ``teacher`` over ``features`` once; None when the cache would exceed ``max_bytes``.

        ``attention`` needs the teacher on the recording attention (``use_kronbit_attention``).
        """
        cfg = teacher.config
        need = estimate_bytes(features, layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size,
                              heads=cfg.num_attention_heads, num_labels=cfg.num_labels, hidden=hidden,
                              attention=attention)
        if max_bytes is not None and need > max_bytes:
            return None
        was_training = teacher.training
        teacher.eval()
        if attention:  # the cache is indexed by layer: every layer records its scores
            keep_attention_maps(teacher, None)
        device = next(teacher.parameters()).device
        n = len(features)
        logits: list = [None] * n
        hiddens: list | None = [None] * n if hidden else None
        scores: list | None = [None] * n if attention else None
        # Longest first: each batch pads to a near-equal length, so the pass costs what the
        # real tokens cost. The model keys only (labels and ids stay out of the teacher's call).
        order = sorted(range(n), key=lambda i: -len(features[i]["input_ids"]))
        keys = ("input_ids", "attention_mask", "token_type_ids")
        bar = _progress(range(0, n, batch_size), progress, "teacher outputs")
        for start in bar:
            idx = order[start:start + batch_size]
            batch = collator([{k: features[i][k] for k in keys if k in features[i]} for i in idx])
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), \
                    record_attention_scores() as records:
                out = teacher(**batch, output_hidden_states=hidden)
            lengths = batch["attention_mask"].sum(-1).tolist()
            for row, (i, length) in enumerate(zip(idx, lengths)):
                logits[i] = out.logits[row].detach().clone()
                if hiddens is not None:
                    hiddens[i] = torch.stack([h[row, :length] for h in out.hidden_states]).clone()
                if scores is not None:
                    if not records:
                        raise RuntimeError("attention caching needs the teacher on kronbit's recording attention")
                    scores[i] = torch.stack([s[row, :, :length, :length] for s, _ in records]).clone()
        teacher.train(was_training)
        return cls(logits, hiddens, scores, dataset_fingerprint(features))

    def lookup(self, example_ids: torch.Tensor, attention_mask: torch.Tensor, *, hidden: bool,
               attention: bool):
        """The teacher's outputs for a padded batch: (outputs with ``logits`` and ``hidden_states``,
        attention records as ``record_attention_scores`` gives them)."""
        ids = example_ids.tolist()
        lengths = attention_mask.sum(-1).tolist()
        for i, length in zip(ids, lengths):
            cached = self.hidden[i].shape[1] if self.hidden is not None else (
                self.scores[i].shape[-1] if self.scores is not None else length)
            if cached != length:
                raise RuntimeError(f"teacher cache does not match the training set: example {i} has {length} "
                                   f"tokens, the cache {cached} (training set changed after the cache was built)")
        device, seq = attention_mask.device, attention_mask.shape[1]
        logits = torch.stack([self.logits[i] for i in ids]).to(device)
        hidden_states = None
        if hidden:
            h0 = self.hidden[ids[0]]
            hs = h0.new_zeros((len(ids), h0.shape[0], seq, h0.shape[2]))
            for row, i in enumerate(ids):
                hs[row, :, :self.hidden[i].shape[1]] = self.hidden[i]
            hidden_states = tuple(hs.to(device).unbind(1))
        records = []
        if attention:
            s0 = self.scores[ids[0]]
            sc = s0.new_zeros((len(ids), s0.shape[0], s0.shape[1], seq, seq))
            for row, i in enumerate(ids):
                n = self.scores[i].shape[-1]
                sc[row, :, :, :n, :n] = self.scores[i]
            records = [(s, None) for s in sc.to(device).unbind(1)]
        return SimpleNamespace(logits=logits, hidden_states=hidden_states), records


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    return tqdm(it, desc=desc, leave=False)
