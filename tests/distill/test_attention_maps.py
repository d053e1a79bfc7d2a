"""Distillation reads only the attention it needs: log-probability records give the same prob_kl
loss as raw scores, and layers outside the layer map run SDPA and record nothing."""

from __future__ import annotations

import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from kronbit.distill import KDConfig, distillation_loss
from kronbit.distill.attention import (NO_MAPS, attention_modules, keep_attention_maps, record_attention_scores,
                                       use_kronbit_attention)
from kronbit.distill.trainer import DistillationTrainer

KD = KDConfig(logits=1, embedding=1, hidden=1, attention=1, attention_loss="prob_kl", hidden_loss="relative_mse",
              layer_map="identity")


def _llama(seed: int, layers: int = 3) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return use_kronbit_attention(LlamaForCausalLM(cfg))


def _batch():
    ids = torch.randint(0, 40, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding: padded keys and queries must not count
    return ids, mask


def _run(model, ids, mask, log_probs):
    with record_attention_scores(log_probs) as rec:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out, rec


def test_log_prob_records_give_the_same_losses_and_gradients():
    ids, mask = _batch()
    student, teacher = _llama(0).train(), _llama(1).eval()
    got = {}
    for log_probs in (False, True):
        student.zero_grad()
        s, s_rec = _run(student, ids, mask, log_probs)
        with torch.no_grad():
            t, t_rec = _run(teacher, ids, mask, log_probs)
        total, parts = distillation_loss(KD, s, t, token_mask=mask, student_scores=s_rec, teacher_scores=t_rec,
                                         log_probs=log_probs)
        total.backward()
        got[log_probs] = (parts, [p.grad.clone() for p in student.parameters()])
    assert got[True][0] == got[False][0]  # bit for bit: the same masked values reach the same log-softmax
    for a, b in zip(got[True][1], got[False][1]):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)


def test_unmapped_layers_run_sdpa_and_record_none():
    ids, mask = _batch()
    model = _llama(0).eval()
    assert [m.layer_idx for m in attention_modules(model)] == [0, 1, 2]
    full, full_rec = _run(model, ids, mask, True)
    assert keep_attention_maps(model, {2}) == 2
    part, part_rec = _run(model, ids, mask, True)
    assert part_rec[0] is None and part_rec[2] is None
    ok = part_rec[1][0] > -1e30  # the unmasked pairs; layer 1 ran SDPA, so equal up to rounding
    assert torch.allclose(part_rec[1][0][ok], full_rec[1][0][ok], atol=1e-5)
    keep = mask.bool()
    assert torch.allclose(part.logits[keep], full.logits[keep], atol=1e-5)  # SDPA: same up to rounding
    keep_attention_maps(model, None)
    assert not any(getattr(m, NO_MAPS) for m in attention_modules(model))


def test_trainer_keeps_maps_of_paired_layers_only():
    student, teacher = _llama(0, layers=2), _llama(1, layers=4)
    kd = KD.replace(layer_map="uniform")  # student layers 1, 2 ← teacher layers 2, 4
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to=[])
    trainer = DistillationTrainer(model=student, args=args, teacher=teacher, kd=kd)
    assert [getattr(m, NO_MAPS) for m in attention_modules(teacher)] == [True, False, True, False]
    assert [getattr(m, NO_MAPS) for m in attention_modules(student)] == [False, False]
    ids, mask = _batch()
    student.train()
    loss = trainer.compute_loss(student, {"input_ids": ids, "attention_mask": mask})
    loss.backward()
    assert torch.isfinite(loss) and student.model.embed_tokens.weight.grad.abs().sum() > 0
