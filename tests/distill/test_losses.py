import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from kronbit.distill import KDConfig, distillation_loss, layer_map
from kronbit.distill.attention import record_attention_scores, use_kronbit_attention
from kronbit.distill.losses import attention_prob_kl, attention_score_mse, hidden_mse, logits_loss
from kronbit.core.errors import ConfigError

ALL = KDConfig(logits=1, embedding=1, hidden=1, attention=1, layer_map="identity")


def _bert(seed=0, layers=2):
    torch.manual_seed(seed)
    m = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=layers,
                                                 num_attention_heads=2, intermediate_size=64))
    return use_kronbit_attention(m).eval()


def _run(model, ids, mask):
    with record_attention_scores() as rec:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out, rec


@pytest.mark.parametrize("attention_loss, hidden_loss", [("score_mse", "mse"), ("prob_kl", "mse"),
                                                          ("prob_kl", "relative_mse")])
def test_identical_student_and_teacher_give_zero(attention_loss, hidden_loss):
    ids = torch.randint(0, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    m = _bert()
    s, s_rec = _run(m, ids, mask)
    t, t_rec = _run(m, ids, mask)
    cfg = ALL.replace(attention_loss=attention_loss, hidden_loss=hidden_loss)
    total, parts = distillation_loss(cfg, s, t, token_mask=mask, student_scores=s_rec, teacher_scores=t_rec)
    assert set(parts) == {"logits", "embedding", "hidden", "attention"}
    assert float(total.detach()) == pytest.approx(0.0, abs=1e-7)


def test_different_models_give_positive_losses_and_gradients():
    ids = torch.randint(0, 50, (2, 8))
    mask = torch.ones_like(ids)
    student, teacher = _bert(0).train(), _bert(1)
    s, s_rec = _run(student, ids, mask)
    with torch.no_grad():
        t, t_rec = _run(teacher, ids, mask)
    total, parts = distillation_loss(ALL, s, t, token_mask=mask, student_scores=s_rec, teacher_scores=t_rec)
    assert all(v > 0 for v in parts.values())
    total.backward()
    assert student.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_padding_does_not_change_the_losses():
    """Extra padding on a row must not change any loss: padded positions never count."""
    ids = torch.randint(1, 50, (1, 6))
    student, teacher = _bert(0), _bert(1)
    results = []
    for pad in (0, 5):
        x = torch.cat([ids, torch.zeros(1, pad, dtype=torch.long)], 1)
        mask = torch.cat([torch.ones(1, 6, dtype=torch.long), torch.zeros(1, pad, dtype=torch.long)], 1)
        s, s_rec = _run(student, x, mask)
        t, t_rec = _run(teacher, x, mask)
        results.append(distillation_loss(ALL, s, t, token_mask=mask, student_scores=s_rec,
                                         teacher_scores=t_rec)[1])
    for k in results[0]:
        assert results[0][k] == pytest.approx(results[1][k], rel=1e-4), k


def test_logits_loss_by_hand():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, torch.log(torch.tensor(3.0))]])  # teacher probs (1/4, 3/4)
    expected = 0.25 * torch.log(torch.tensor(0.25 / 0.5)) + 0.75 * torch.log(torch.tensor(0.75 / 0.5))
    assert float(logits_loss(s, t, 1.0, None, False)) == pytest.approx(float(expected))
    # Temperature T scales the KL of softened distributions by T².
    t2 = logits_loss(s, 2 * t, 2.0, None, False)
    assert float(t2) == pytest.approx(4 * float(expected), rel=1e-6)
    # Regression: MSE on scores.
    assert float(logits_loss(torch.tensor([[1.0]]), torch.tensor([[3.0]]), 1.0, None, True)) == 4.0


def test_causal_lm_token_losses_and_masks():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=60, n_positions=16, bos_token_id=0, eos_token_id=0)
    s_model = use_kronbit_attention(GPT2LMHeadModel(cfg)).eval()
    t_model = use_kronbit_attention(GPT2LMHeadModel(cfg)).eval()
    ids = torch.randint(0, 60, (2, 10))
    mask = torch.ones_like(ids)
    s, s_rec = _run(s_model, ids, mask)
    t, t_rec = _run(t_model, ids, mask)
    # Causal attention: future keys never count, so changing future scores changes nothing.
    scores, valid = t_rec[0]
    assert valid.shape[-2:] == (10, 10) and not bool(valid[0, 0, 0, 1]) and bool(valid[0, 0, 1, 0])
    base = attention_score_mse(s_rec[0][0], scores, valid)
    future = torch.triu(torch.ones(10, 10, dtype=torch.bool), 1)
    assert float(attention_score_mse(s_rec[0][0], scores + 100 * future, valid)) == pytest.approx(float(base))
    assert float(attention_prob_kl(s_rec[0][0], scores + 100 * future, valid)) == pytest.approx(
        float(attention_prob_kl(s_rec[0][0], scores, valid)), rel=1e-5)
    total, parts = distillation_loss(ALL, s, t, token_mask=mask, student_scores=s_rec, teacher_scores=t_rec)
    assert parts["logits"] > 0


def test_hidden_size_mismatch_is_a_clear_error():
    with pytest.raises(ConfigError, match="equal hidden sizes"):
        hidden_mse(torch.zeros(1, 2, 8), torch.zeros(1, 2, 16), None)


def test_layer_maps():
    assert layer_map(6, 6, "identity") == [(i, i) for i in range(1, 7)]
    assert layer_map(4, 12, "uniform") == [(1, 3), (2, 6), (3, 9), (4, 12)]
    assert layer_map(6, 12, "last-2") == [(5, 11), (6, 12)]
    assert layer_map(3, 12, "2,4,12") == [(1, 2), (2, 4), (3, 12)]
    with pytest.raises(ConfigError, match="'identity' needs equal depths"):
        layer_map(4, 12, "identity")
    with pytest.raises(ConfigError, match="teacher layer 13"):
        layer_map(2, 12, "1,13")
    with pytest.raises(ConfigError, match="layer_map 'diagonal' is not valid"):
        KDConfig(layer_map="diagonal")
    with pytest.raises(ConfigError, match="every loss weight is 0"):
        KDConfig(logits=0)


def test_relative_hidden_loss_by_hand_and_scale_free():
    """‖s − t‖² / ‖t‖² per real token, averaged: the same value whatever the states' scale (a
    decoder's massive activations no longer decide the loss's size), padding ignored."""
    t = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [9.0, 9.0]]])   # token norms² 25, 1, (padding)
    s = torch.tensor([[[3.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])   # errors² 16, 1
    mask = torch.tensor([[1, 1, 0]]).bool()
    expected = (16 / 25 + 1 / 1) / 2
    assert float(hidden_mse(s, t, mask, relative=True)) == pytest.approx(expected)
    assert float(hidden_mse(1000 * s, 1000 * t, mask, relative=True)) == pytest.approx(expected)
    assert float(hidden_mse(s, t, mask)) == pytest.approx((16 / 2 + 1 / 2) / 2)  # plain MSE per feature
    with pytest.raises(ConfigError, match="hidden_loss"):
        KDConfig.from_dict({"hidden_loss": "cosine"})
