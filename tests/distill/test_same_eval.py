"""Evaluations during a stage score the model as ``kronbit eval`` of its saved checkpoint does:
sequential dev batches even with group_by_length, and the attention implementation a reload uses."""

import torch
from torch.utils.data import SequentialSampler
from transformers import AutoModelForSequenceClassification, TrainingArguments

from kronbit.distill.losses import KDConfig
from kronbit.distill.trainer import DistillationTrainer


def test_eval_is_sequential_and_uses_the_reload_attention(tmp_path, tiny_bert):
    student = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    before = student.config._attn_implementation
    args = TrainingArguments(output_dir=str(tmp_path / "ck"), use_cpu=True, report_to="none",
                             train_sampling_strategy="group_by_length", per_device_eval_batch_size=4)
    kd = KDConfig(logits=1.0, attention=1.0, layer_map="identity")
    trainer = DistillationTrainer(model=student, args=args, teacher=teacher, kd=kd)
    assert student.config._attn_implementation != before  # training records attention scores
    ds = [{"input_ids": torch.arange(5, 5 + n).tolist(), "labels": 0} for n in (3, 9, 4, 8, 5, 7, 6, 2)]
    assert isinstance(trainer._get_eval_sampler(ds), SequentialSampler)
    seen = []
    student.register_forward_pre_hook(lambda m, a: seen.append(m.config._attn_implementation))
    trainer.compute_metrics = None
    trainer.evaluate(eval_dataset=[{"input_ids": [5, 6, 7], "labels": 0}])
    assert seen and set(seen) == {before}  # evaluated as a reload will run it
    assert student.config._attn_implementation != before  # and switched back for training
