"""The size report names what stays in full precision, by group, with what it costs."""

import pytest

from kronbit import QuantConfig, quantize_
from kronbit.formats.packed import export_packed
from kronbit.formats.size import size_report


def _packed_report(make_bert, tmp_path, **cfg):
    model = make_bert()
    quantize_(model, QuantConfig(**cfg))
    export_packed(model, tmp_path / "p")
    return model, size_report(tmp_path / "p", in_memory=False)


def _mb(*tensors) -> float:
    return round(sum(t.numel() * 4 for t in tensors) / 1e6, 3)


def test_full_precision_groups_of_a_binary_model(make_bert, tmp_path):
    model, report = _packed_report(make_bert, tmp_path, w_bits=1, a_bits=1)  # embeddings: auto → quantized
    fp = report["full_precision_mb"]
    emb = model.bert.embeddings
    assert "word embeddings" not in fp  # packed to 1 bit by default below 4 bits
    assert fp["position embeddings"] == _mb(emb.position_embeddings.weight)
    assert fp["token-type embeddings"] == _mb(emb.token_type_embeddings.weight)
    assert fp["classifier / head"] == _mb(model.classifier.weight, model.classifier.bias)
    assert fp["pooler"] == _mb(model.bert.pooler.dense.weight, model.bert.pooler.dense.bias)
    norms = [p for n, p in model.named_parameters() if "LayerNorm" in n]
    assert fp["LayerNorms"] == _mb(*norms)
    assert "linear weights" not in fp  # every encoder linear is packed
    assert list(fp.values()) == sorted(fp.values(), reverse=True)  # largest first
    # the groups are the float tensors that are neither codes nor scales: all of them, nothing else
    assert sum(fp.values()) == pytest.approx(_mb(emb.position_embeddings.weight, emb.token_type_embeddings.weight,
                                                 *norms, *[p for n, p in model.named_parameters()
                                                           if n.endswith("bias") and "LayerNorm" not in n],
                                                 model.classifier.weight, model.bert.pooler.dense.weight), abs=0.004)


def test_a_full_precision_word_embedding_is_named(make_bert, tmp_path):
    model, report = _packed_report(make_bert, tmp_path, w_bits=2, a_bits=8, quantize_embeddings=False)
    assert report["full_precision_mb"]["word embeddings"] == _mb(model.bert.embeddings.word_embeddings.weight)


def test_size_cli_prints_the_groups(make_bert, tmp_path, capsys):
    import json

    from kronbit.cli import main

    _packed_report(make_bert, tmp_path, w_bits=1, a_bits=1)
    assert main(["size", str(tmp_path / "p"), "--no-memory"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"position embeddings", "LayerNorms", "classifier / head"} <= set(out["full_precision_mb"])
