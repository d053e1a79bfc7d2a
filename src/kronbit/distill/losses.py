"""The distillation loss registry, shared by encoders (TSPQ) and decoders (KnGPT2).

Each loss takes the student's and the teacher's outputs and returns a scalar; ``KDConfig`` says
which ones to use and with what weight. Losses:

* ``logits``: soft cross-entropy with temperature T, written as KL(teacher ‖ student)·T² (same
  gradient as soft cross-entropy; zero when the two agree). Classification: one distribution per
  example; causal LM: one per (non-padding) token. Regression (STS-B): MSE on the scores.
* ``embedding``: MSE between embedding-layer outputs (``hidden_states[0]``).
* ``hidden``: MSE between mapped layers' hidden states (``distill.mapping``). With
  ``hidden_loss: relative_mse`` (embedding too) each token's squared error is divided by the
  teacher state's squared norm, ‖s − t‖² / ‖t‖²: decoders' residual streams carry a few huge
  "massive activation" values (SmolLM2: a raw MSE in the thousands against a logits KL of ~10),
  which make a raw MSE swamp every other loss and, through gradient clipping, the update.
* ``attention``: on mapped layers' attention, either MSE on pre-softmax scores over valid
  (query, key) pairs (TinyBERT) or KL between attention probabilities (``attention_loss``).
* ``task``: the model's own loss on the ground-truth labels (cross-entropy / LM loss).

Masked means: padding tokens and causally hidden pairs never count, so a batch's padding
amount does not change the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from ..core.config import Config
from ..core.errors import ConfigError
from .mapping import layer_map, parse_kind


@dataclass
class KDConfig(Config):
    logits: float = 1.0
    embedding: float = 0.0
    hidden: float = 0.0
    attention: float = 0.0
    task: float = 0.0
    attention_loss: Literal["score_mse", "prob_kl"] = "score_mse"
    hidden_loss: Literal["mse", "relative_mse"] = "mse"
    temperature: float = 1.0
    layer_map: str = "uniform"

    def validate(self) -> None:
        for name in ("logits", "embedding", "hidden", "attention", "task"):
            if getattr(self, name) < 0:
                raise ConfigError(f"kd.{name} weight must be ≥ 0, got {getattr(self, name)}")
        if not any(getattr(self, n) > 0 for n in ("logits", "embedding", "hidden", "attention", "task")):
            raise ConfigError("kd: every loss weight is 0; set at least one of logits, embedding, hidden, "
                              "attention, task")
        if self.temperature <= 0:
            raise ConfigError(f"kd.temperature must be > 0, got {self.temperature}")
        parse_kind(self.layer_map)

    @property
    def needs_hidden(self) -> bool:
        return self.hidden > 0 or self.embedding > 0

    @property
    def needs_attention(self) -> bool:
        return self.attention > 0


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` (broadcastable) is true."""
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype).expand_as(x)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def logits_loss(s: torch.Tensor, t: torch.Tensor, temperature: float, token_mask: torch.Tensor | None,
                regression: bool) -> torch.Tensor:
    s, t = s.float(), t.float()
    if regression:
        return F.mse_loss(s, t)
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # per example / per token
    mask = token_mask if s.dim() == 3 else None
    return _masked_mean(kl, mask) * temperature ** 2


def hidden_mse(s: torch.Tensor, t: torch.Tensor, token_mask: torch.Tensor | None,
               relative: bool = False) -> torch.Tensor:
    """Mean over real tokens of the mean squared error per feature, or with ``relative`` of
    ‖s − t‖² / ‖t‖² per token (scale-free: see the module docstring)."""
    if s.shape[-1] != t.shape[-1]:
        raise ConfigError(f"hidden-state distillation needs equal hidden sizes (student {s.shape[-1]}, "
                          f"teacher {t.shape[-1]}); set kd.hidden=0 and kd.embedding=0")
    s, t = s.float(), t.float()
    if relative:
        per_token = (s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(1e-12)
    else:
        per_token = (s - t).pow(2).mean(-1)
    return _masked_mean(per_token, token_mask)


def attention_score_mse(s: torch.Tensor, t: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return _masked_mean((s.float() - t.float()).pow(2), valid)


def attention_prob_kl(s: torch.Tensor, t: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    s, t = s.float(), t.float()
    if valid is not None:
        neg = torch.finfo(torch.float32).min
        s = s.masked_fill(~valid, neg)
        t = t.masked_fill(~valid, neg)
    log_p_s, log_p_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
    p_t = log_p_t.exp()
    kl = (p_t * (log_p_t - log_p_s)).nan_to_num(0.0).sum(-1)  # per (batch, head, query)
    rows = None if valid is None else valid.any(-1)  # queries with at least one valid key
    return _masked_mean(kl, rows)


def attention_log_prob_kl(s: torch.Tensor, t: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``attention_prob_kl`` on recorded log-probabilities (``record_attention_scores(log_probs=True)``):
    the masking and log-softmax happened in the attention, on the same values."""
    kl = (t.exp() * (t - s)).nan_to_num(0.0).sum(-1)
    rows = None if valid is None else valid.any(-1)
    return _masked_mean(kl, rows)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "logits": logits_loss,
    "hidden": hidden_mse,
    "embedding": hidden_mse,
    "attention_score_mse": attention_score_mse,
    "attention_prob_kl": attention_prob_kl,
    "attention_log_prob_kl": attention_log_prob_kl,
}


def distillation_loss(cfg: KDConfig, student, teacher, *, token_mask: torch.Tensor | None = None,
                      student_scores=None, teacher_scores=None, regression: bool = False,
                      task_loss: torch.Tensor | None = None,
                      log_probs: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the enabled losses and each part's value (for logging).

    ``student``/``teacher``: HF model outputs (``logits``, ``hidden_states`` when needed);
    ``*_scores``: attention records from ``attention.record_attention_scores``;
    ``token_mask``: (batch, seq) attention mask of real tokens; ``log_probs``: the records hold
    log-probabilities (``prob_kl`` only), not scores.
    """
    parts: dict[str, torch.Tensor] = {}
    tmask = None if token_mask is None else token_mask.bool()
    if cfg.logits > 0:
        parts["logits"] = logits_loss(student.logits, teacher.logits, cfg.temperature,
                                      None if tmask is None else tmask, regression)
    if cfg.needs_hidden:
        hs, ht = student.hidden_states, teacher.hidden_states
        if hs is None or ht is None:
            raise RuntimeError("hidden-state distillation needs output_hidden_states=True")
        rel = cfg.hidden_loss == "relative_mse"
        if cfg.embedding > 0:
            parts["embedding"] = hidden_mse(hs[0], ht[0], tmask, rel)
        if cfg.hidden > 0:
            pairs = layer_map(len(hs) - 1, len(ht) - 1, cfg.layer_map)
            parts["hidden"] = torch.stack([hidden_mse(hs[i], ht[j], tmask, rel) for i, j in pairs]).mean()
    if cfg.attention > 0:
        if not student_scores or not teacher_scores:
            raise RuntimeError("attention distillation needs recorded attention scores")
        pairs = layer_map(len(student_scores), len(teacher_scores), cfg.layer_map)
        if log_probs and cfg.attention_loss != "prob_kl":
            raise RuntimeError("log-probability attention records serve attention_loss prob_kl only")
        fn = LOSSES["attention_log_prob_kl" if log_probs else f"attention_{cfg.attention_loss}"]
        losses = []
        for i, j in pairs:
            (s, valid), (t, _) = student_scores[i - 1], teacher_scores[j - 1]
            if tmask is not None:  # padded queries do not count either (the mask only covers keys)
                q_ok = tmask[:, None, :, None]
                valid = q_ok if valid is None else valid & q_ok
            if s.shape != t.shape:
                raise ConfigError(f"attention distillation needs equal head counts and lengths "
                                  f"(student {tuple(s.shape)}, teacher {tuple(t.shape)}); set kd.attention=0")
            losses.append(fn(s, t, valid))
        parts["attention"] = torch.stack(losses).mean()
    if cfg.task > 0:
        if task_loss is None:
            raise RuntimeError("kd.task > 0 needs labels in the batch")
        parts["task"] = task_loss
    total = sum(getattr(cfg, name) * value for name, value in parts.items())
    return total, {name: float(value.detach()) for name, value in parts.items()}
