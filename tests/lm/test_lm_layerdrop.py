"""Layer dropping (DistilGPT2-style students) on tiny GPT-2 and Llama models."""

from __future__ import annotations

import pytest
import torch

from kronbit.models.decoders import load_causal_lm
from helpers import tiny_gpt2, tiny_llama
from kronbit.core.errors import ConfigError, ModelError
from kronbit.layerdrop import (decoder_layers, drop_layers, params_for_keep, plan_for_params, resolve_keep,
                               spread_layers)
from kronbit.core.swap import count_parameters

IDS = torch.tensor([[5, 17, 3, 99, 42, 8, 61, 7]])


def _build(arch, n_layers):
    return tiny_gpt2(n_layer=n_layers) if arch == "gpt2" else tiny_llama(num_hidden_layers=n_layers)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_every_other_layer_is_copied_from_the_teacher(arch):
    teacher = _build(arch, 6)
    student = drop_layers(teacher)
    path, t_layers = decoder_layers(teacher)
    _, s_layers = decoder_layers(student)
    assert len(t_layers) == 6 and len(s_layers) == 3  # teacher untouched
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 6
    if arch == "gpt2":
        assert student.config.n_layer == 3
    for new, old in enumerate([0, 2, 4]):
        s_state, t_state = s_layers[new].state_dict(), t_layers[old].state_dict()
        assert s_state.keys() == t_state.keys()
        assert all(torch.equal(s_state[k], t_state[k]) for k in s_state)
        assert all(m.layer_idx == new for m in s_layers[new].modules() if hasattr(m, "layer_idx"))
    # A copy, not a view: training the student must not move the teacher.
    next(s_layers[0].parameters()).data.add_(1.0)
    assert not torch.equal(next(s_layers[0].parameters()), next(t_layers[0].parameters()))
    # Tied embeddings stay tied (GPT-2; tiny Llama is untied), and the size is predicted exactly.
    def tied(m):
        return m.get_output_embeddings().weight is m.get_input_embeddings().weight

    assert tied(student) == tied(teacher) == (arch == "gpt2")
    assert count_parameters(student) == params_for_keep(teacher) < count_parameters(teacher)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@torch.no_grad()
def test_keeping_all_layers_reproduces_the_teacher_exactly(arch):
    teacher = _build(arch, 4)
    student = drop_layers(teacher, keep=[0, 1, 2, 3])
    assert torch.equal(student(IDS).logits, teacher(IDS).logits)
    assert count_parameters(student) == count_parameters(teacher) == params_for_keep(teacher, 4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@torch.no_grad()
def test_dropped_student_generates_with_kv_cache_and_saves(arch, tmp_path):
    teacher = _build(arch, 4)
    student = drop_layers(teacher, keep=[1, 3])
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = student.generate(IDS, use_cache=True, **kw)
    uncached = student.generate(IDS, use_cache=False, **kw)
    assert torch.equal(cached, uncached) and cached.shape[1] == IDS.shape[1] + 6
    student.save_pretrained(tmp_path / "s")
    again = load_causal_lm(tmp_path / "s")
    assert again.config.num_hidden_layers == 2
    assert torch.equal(again(IDS).logits, student(IDS).logits)


def test_keep_resolution_and_errors():
    assert resolve_keep(None, 12) == [0, 2, 4, 6, 8, 10] == spread_layers(12, 6)
    assert resolve_keep(3, 12) == [0, 4, 8] and resolve_keep(12, 12) == list(range(12))
    assert resolve_keep([0, 5, 11], 12) == [0, 5, 11]
    with pytest.raises(ConfigError, match=r"outside 0..11"):
        resolve_keep([0, 12], 12)
    with pytest.raises(ConfigError, match="increasing order"):
        resolve_keep([3, 1], 12)
    with pytest.raises(ConfigError, match="between 1 and 12"):
        resolve_keep(0, 12)
    with pytest.raises(ModelError, match="no decoder layer list"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_plan_matches_a_target_parameter_count():
    teacher = tiny_gpt2(n_layer=12, n_embd=64, vocab_size=200)
    target = params_for_keep(teacher, 6)
    plan = plan_for_params(teacher, target)
    assert plan.keep == [0, 2, 4, 6, 8, 10] and plan.rel_diff == 0 and plan.within_tolerance
    per_layer = params_for_keep(teacher, 7) - target
    near = plan_for_params(teacher, target + per_layer // 4)  # closer to 6 layers than to 7
    assert len(near.keep) == 6 and near.rel_diff < 0
    assert near.within_tolerance == (abs(near.rel_diff) <= 0.02)
    tiny_target = plan_for_params(teacher, 10)  # below even one layer: closest, flagged
    assert len(tiny_target.keep) == 1 and not tiny_target.within_tolerance
    assert "OUTSIDE" in tiny_target.describe()
