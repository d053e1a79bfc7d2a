"""The teacher-output cache: a cached KD step computes the losses a live step computes."""

import pytest
import torch
import yaml
from helpers import single_thread, write_tiny_sst2
from transformers import BertConfig, BertForSequenceClassification, DataCollatorWithPadding, TrainingArguments

from kronbit.data.features import TokenizedDataset
from kronbit.distill import KDConfig
from kronbit.distill import teacher_cache as tc
from kronbit.distill.teacher_cache import TeacherCache, dataset_fingerprint
from kronbit.distill.trainer import DistillationTrainer

_one_thread = pytest.fixture(autouse=True)(single_thread)


class _Tok:
    """Just enough tokenizer for DataCollatorWithPadding: pads input ids with 0."""

    pad_token_id = 0
    padding_side = "right"
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]

    def pad(self, features, return_tensors="pt", **kwargs):
        n = max(len(f["input_ids"]) for f in features)
        out = {}
        for key in features[0]:
            if key in ("input_ids", "token_type_ids", "attention_mask"):
                out[key] = torch.tensor([f[key] + [0] * (n - len(f[key])) for f in features])
            else:
                out[key] = torch.tensor([f[key] for f in features])
        return out


def _bert(seed):
    torch.manual_seed(seed)
    # No dropout: a live and a cached step then see the same student outputs.
    cfg = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


def _features(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = []
    for i in range(n):
        length = int(torch.randint(3, 12, (1,), generator=g))
        ids = torch.randint(5, 40, (length,), generator=g).tolist()
        feats.append({"input_ids": ids, "token_type_ids": [0] * length, "attention_mask": [1] * length,
                      "labels": i % 2})
    return TokenizedDataset(feats).with_example_ids()


def _trainer(tmp_path, kd):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    return DistillationTrainer(model=_bert(0).train(), args=args, teacher=_bert(1), kd=kd,
                               data_collator=DataCollatorWithPadding(_Tok()))


@pytest.mark.parametrize("attention_loss", ["score_mse", "prob_kl"])
def test_cached_step_gives_the_live_losses(tmp_path, attention_loss):
    kd = KDConfig(logits=1, embedding=1, hidden=1, attention=1, attention_loss=attention_loss,
                  layer_map="identity")
    trainer = _trainer(tmp_path, kd)
    ds = _features()
    cache = TeacherCache.build(trainer.teacher, ds.features, trainer.data_collator, hidden=True, attention=True,
                               batch_size=4, bf16=False, progress=False)
    assert len(cache) == len(ds) and cache.has_hidden and cache.has_attention and cache.nbytes > 0
    # A training batch in another order and with other padding than the cache was built with.
    batch = trainer.data_collator([ds[i] for i in (7, 2, 9, 0)])
    live = trainer.compute_loss(trainer.model, dict(batch))
    live_parts = {k: v for k, v in trainer._kd_sums.items()}
    trainer._kd_sums.clear()
    trainer.teacher_cache = cache
    cached = trainer.compute_loss(trainer.model, dict(batch))
    assert set(trainer._kd_sums) == {"logits", "embedding", "hidden", "attention"}
    for name, value in trainer._kd_sums.items():
        assert value == pytest.approx(live_parts[name], rel=1e-5, abs=1e-7), name
    assert float(cached.detach()) == pytest.approx(float(live.detach()), rel=1e-5)
    cached.backward()  # the student still learns through the cached targets
    assert trainer.model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_cache_parts_limits_and_mismatch(tmp_path):
    kd = KDConfig(logits=1, embedding=0, hidden=0, attention=0)
    trainer = _trainer(tmp_path, kd)
    ds = _features()
    cache = TeacherCache.build(trainer.teacher, ds.features, trainer.data_collator, hidden=False, attention=False,
                               bf16=False, progress=False)
    assert not cache.has_hidden and cache.covers(hidden=False, attention=False)
    assert not cache.covers(hidden=True, attention=False)
    assert cache.nbytes == 4 * 2 * len(ds)  # two fp32 logits per example
    need = tc.estimate_bytes(ds.features, layers=2, hidden_size=32, heads=2, num_labels=2, hidden=True,
                             attention=True)
    assert TeacherCache.build(trainer.teacher, ds.features, trainer.data_collator, hidden=True, attention=True,
                              bf16=False, max_bytes=need - 1, progress=False) is None
    full = TeacherCache.build(trainer.teacher, ds.features, trainer.data_collator, hidden=True, attention=False,
                              bf16=False, progress=False)
    batch = trainer.data_collator([ds[0], ds[1]])
    batch["attention_mask"][0, -1] = 0  # example 0 now has one token fewer than when cached
    with pytest.raises(RuntimeError, match="training set changed"):
        full.lookup(batch["example_id"], batch["attention_mask"], hidden=True, attention=False)


def test_fingerprint_follows_the_tokens():
    a, b = _features(seed=0), _features(seed=0)
    assert dataset_fingerprint(a.features) == dataset_fingerprint(b.features)
    b.features[3]["input_ids"][0] += 1
    assert dataset_fingerprint(a.features) != dataset_fingerprint(b.features)


def test_recipe_builds_the_cache_once_per_training_set(tmp_path, capsys, tiny_bert, monkeypatch):
    from kronbit.cli import main

    builds = []
    real = TeacherCache.build.__func__

    def counting(cls, *args, **kwargs):
        builds.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(TeacherCache, "build", classmethod(counting))
    data = write_tiny_sst2(tmp_path / "glue")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny", "train": {"bf16": False, "batch_size": 16, "learning_rate": 1e-3},
        "teacher": {"bf16": False, "batch_size": 16, "epochs": 1},
        "kd": {"logits": 1, "hidden": 1, "embedding": 1, "attention": 1, "layer_map": "identity"},
        # the last stage needs less (no attention KD): the cache of the first two still serves it
        "stages": [{"name": "w2", "w_bits": 2, "init_from": "teacher"}, {"name": "w1", "w_bits": 1},
                   {"name": "w1a1", "w_bits": 1, "a_bits": 1, "kd": {"attention": 0}}]}))
    base = ["run", str(recipe), "--model", str(tiny_bert), "--task", "sst2", "--data-dir", str(data),
            "--max-steps", "2"]
    assert main(base + ["--output-dir", str(tmp_path / "a")]) == 0
    assert len(builds) == 1 and builds[0]["attention"] and builds[0]["hidden"]
    builds.clear()
    assert main(base + ["--output-dir", str(tmp_path / "b"), "--set", "train.teacher_cache_gb=0"]) == 0
    assert builds == []
    assert main(base + ["--output-dir", str(tmp_path / "c"), "--set", "train.teacher_cache_gb=-1"]) == 2
    assert "teacher_cache_gb" in capsys.readouterr().err
