"""``DistillationTrainer``: Hugging Face ``Trainer`` with a frozen teacher and the KD loss registry.

The student is whatever model the stage built (quantized, Kronecker, layer-dropped); the teacher
is the full-precision model, kept in eval mode with gradients off. Only the loss changes; the
training loop, mixed precision, checkpointing and multi-process training stay Trainer's (and so
Accelerate's).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer

from .attention import attention_modules, keep_attention_maps, record_attention_scores, use_kronbit_attention
from .losses import KDConfig, distillation_loss
from .mapping import layer_map
from ..core.allocator import keep_freed_memory


class SameEvalTrainer(Trainer):
    """A Trainer whose evaluations score the model as ``kronbit eval`` of its saved checkpoint does.

    Two things make the numbers differ otherwise, both measured on a W2A8 SST-2 stage (dev
    accuracy 73.17 in the stage table against 72.71 from the saved model):
    - with ``group_by_length`` the Trainer also groups the *dev* set into random length buckets;
      min-max activation quantizers take their range per batch, so an example's prediction
      depends on which others share its batch. Evaluation here is sequential over the dev set as
      given (sorted longest-first, as ``kronbit eval`` batches it).
    - a distilled student runs the kronbit recording attention in training; a reloaded one runs
      the implementation it had when the stage began (sdpa, or kronbit's for binary attention).
      They differ by rounding, which low-bit activations can turn into a flipped prediction.
      Evaluation switches to the implementation a reload will use.
    """

    eval_attn_implementation: str | None = None

    def _get_eval_sampler(self, eval_dataset):
        return SequentialSampler(eval_dataset) if eval_dataset is not None else None

    def evaluate(self, *args, **kwargs):
        config = getattr(self.model, "config", None)
        current = getattr(config, "_attn_implementation", None)
        want = self.eval_attn_implementation
        if want is None or current is None or want == current:
            return super().evaluate(*args, **kwargs)
        self.model.set_attn_implementation(want)
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.model.set_attn_implementation(current)


class DistillationTrainer(SameEvalTrainer):
    def __init__(self, *args, teacher: torch.nn.Module, kd: KDConfig, regression: bool = False,
                 lr_multipliers: dict[str, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kd = kd
        self.regression = regression
        # Parameters whose name ends with a key get learning_rate × value (e.g. quantizer scales).
        self.lr_multipliers = dict(lr_multipliers or {})
        self.teacher = teacher.to(self.args.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        config = getattr(self.model, "config", None)
        self.eval_attn_implementation = getattr(config, "_attn_implementation", None)
        if kd.needs_attention:
            use_kronbit_attention(self.teacher)
            use_kronbit_attention(self.model)
            self._keep_mapped_attention()
        # A training step frees and reallocates the same large tensors: keep the memory (see
        # core.allocator; measured in benchmarks/kngpt2_speed.py).
        keep_freed_memory()
        # Optional ``TeacherCache`` of the training set's teacher outputs (batches then carry
        # ``example_id``); None: the teacher runs live on every step.
        self.teacher_cache = None
        self._kd_sums: dict[str, float] = defaultdict(float)
        self._kd_count = 0

    def _keep_mapped_attention(self) -> None:
        """Attention maps only in the layers the attention loss pairs; the others run SDPA."""
        s_mods, t_mods = attention_modules(self.model), attention_modules(self.teacher)
        if not s_mods or not t_mods:
            return
        pairs = layer_map(len(s_mods), len(t_mods), self.kd.layer_map)
        keep_attention_maps(self.model, {i for i, _ in pairs})
        keep_attention_maps(self.teacher, {j for _, j in pairs})

    def _set_signature_columns_if_needed(self) -> None:
        # Trainer drops batch keys the model's forward does not take; ``example_id`` is for the
        # teacher cache (popped in compute_loss before the model sees the batch), so keep it.
        super()._set_signature_columns_if_needed()
        if "example_id" not in self._signature_columns:
            self._signature_columns.append("example_id")

    def compute_loss(self, model, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch=None):
        example_ids = inputs.pop("example_id", None)
        if not model.training:
            # Evaluation: the metrics need only the student's logits; skip the teacher.
            outputs = model(**inputs)
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        kd = self.kd
        want_hidden = kd.needs_hidden
        teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        student_inputs = inputs if kd.task > 0 else teacher_inputs
        s_scores = t_scores = None
        cache = self.teacher_cache
        # prob_kl reads log-probabilities: record those (a cached teacher holds raw scores)
        log_probs = kd.needs_attention and kd.attention_loss == "prob_kl" and cache is None
        record = (lambda: record_attention_scores(log_probs)) if kd.needs_attention else contextlib.nullcontext
        with record() as s_scores:
            s_out = model(**student_inputs, output_hidden_states=want_hidden)
        if cache is not None:
            if example_ids is None:
                raise RuntimeError("a teacher cache is set but the batch has no example_id "
                                   "(tokenize the training set with .with_example_ids())")
            t_out, t_scores = cache.lookup(example_ids, inputs["attention_mask"], hidden=want_hidden,
                                           attention=kd.needs_attention)
        else:
            with torch.no_grad(), record() as t_scores:
                t_out = self.teacher(**teacher_inputs, output_hidden_states=want_hidden)
        loss, parts = distillation_loss(
            kd, s_out, t_out, token_mask=inputs.get("attention_mask"), student_scores=s_scores,
            teacher_scores=t_scores, regression=self.regression,
            task_loss=getattr(s_out, "loss", None) if kd.task > 0 else None, log_probs=log_probs)
        for name, value in parts.items():
            self._kd_sums[name] += value
        self._kd_count += 1
        return (loss, s_out) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        # Add the mean of each KD part since the last training log line.
        if "loss" in logs and self._kd_count:
            for name, total in self._kd_sums.items():
                logs[f"kd_{name}"] = round(total / self._kd_count, 6)
            self._kd_sums.clear()
            self._kd_count = 0
        super().log(logs, *args, **kwargs)

    def create_optimizer(self, *args, **kwargs):
        if self.optimizer is None and self.lr_multipliers:
            self.optimizer = self._grouped_optimizer()
            return self.optimizer
        return super().create_optimizer(*args, **kwargs)

    def _grouped_optimizer(self):
        """AdamW with one group per learning-rate multiplier, no weight decay on biases, norms
        and quantizer scales (decaying a scale towards 0 would fight the quantizer)."""
        base_lr, wd = self.args.learning_rate, self.args.weight_decay
        groups: dict[tuple[float, float], list] = defaultdict(list)
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            mult = next((m for suffix, m in self.lr_multipliers.items() if name.endswith(suffix)), None)
            no_decay = mult is not None or p.ndim < 2 or "norm" in name.lower()
            groups[(mult or 1.0, 0.0 if no_decay else wd)].append(p)
        param_groups = [{"params": ps, "lr": base_lr * m, "weight_decay": d} for (m, d), ps in groups.items()]
        return torch.optim.AdamW(param_groups, lr=base_lr, betas=(self.args.adam_beta1, self.args.adam_beta2),
                                 eps=self.args.adam_epsilon)
