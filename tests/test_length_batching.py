"""Length-aware batching: sorted evaluation gives the same predictions in the same order, and the
``group_by_length`` option reaches the Trainer's sampler."""

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from kronbit.data.features import TokenizedDataset, sorted_by_length
from kronbit.workflows.evaluate import predict
from kronbit.workflows.finetune import TrainingOptions, training_arguments


def _dataset(tok, texts):
    enc = tok(texts, truncation=True, max_length=32)
    return TokenizedDataset([{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                              "labels": i % 2} for i in range(len(texts))])


TEXTS = ["good", "the movie was very good and the plot was fun", "bad", "a dull story",
         "this film is not great it is awful and sad and dull", "nice", "the actor was fine", "poor plot"]


def test_sorted_by_length_keeps_every_example_longest_first(tiny_bert):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    ds = _dataset(tok, TEXTS)
    out = sorted_by_length(ds)
    lengths = [len(f["input_ids"]) for f in out.features]
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]
    as_pairs = lambda d: sorted((tuple(f["input_ids"]), f["labels"]) for f in d.features)  # noqa: E731
    assert as_pairs(out) == as_pairs(ds)  # same examples, labels still attached to their own text


def test_predict_returns_logits_in_dataset_order(tiny_bert):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    ds = _dataset(tok, TEXTS)
    got = predict(model, ds, DataCollatorWithPadding(tok), batch_size=3)
    with torch.no_grad():  # one example at a time: no padding, no batching, the reference order
        ref = np.stack([model(input_ids=torch.tensor([f["input_ids"]])).logits[0].numpy() for f in ds.features])
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_group_by_length_selects_the_length_grouped_sampler(tmp_path):
    on = training_arguments(TrainingOptions(group_by_length=True), tmp_path, 100)
    off = training_arguments(TrainingOptions(), tmp_path, 100)
    assert on.train_sampling_strategy == "group_by_length"
    assert off.train_sampling_strategy == "random"
