"""Folders that go through transformers and come back to kronbit: a save_pretrained folder loads
with kronbit.load_model too, the version kronbit.json records, one-line CLI errors for a folder
from a newer kronbit or a config that does not match the tensors, and an export whose card
cannot be written leaving no folder behind."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_gpt2, write_tiny_sst2
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import kronbit
from kronbit import QuantConfig, quantize_
from kronbit.cli import main
from kronbit.core.errors import ModelError
from kronbit.core.transforms import recorded_transforms
from kronbit.formats import model_card
from kronbit.formats.compressed import save_compressed
from kronbit.formats.load import saved_by_transformers
from kronbit.formats.packed import export_packed, load_packed
from kronbit.workflows.export import export_model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _one_line_error(capsys, argv, *pieces):
    capsys.readouterr()  # what the test itself printed before (transformers' progress bars)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kronbit: error: ") and "\n" not in err, err
    for piece in pieces:
        assert piece in err, err


@pytest.fixture
def bert_packed(make_bert, tiny_bert, tmp_path):
    model = make_bert()
    quantize_(model, QuantConfig(w_bits=2, a_bits=8))
    export_packed(model, tmp_path / "p", tokenizer=AutoTokenizer.from_pretrained(tiny_bert),
                  meta={"task": "sst2"})
    return tmp_path / "p"


def test_a_save_pretrained_folder_loads_with_load_model(bert_packed, tmp_path):
    ids = torch.randint(5, 29, (2, 9), generator=torch.Generator().manual_seed(1))
    AutoModelForSequenceClassification.from_pretrained(bert_packed).save_pretrained(tmp_path / "saved")
    assert saved_by_transformers(tmp_path / "saved") and not saved_by_transformers(bert_packed)
    got = kronbit.load_model(tmp_path / "saved")
    assert not got.training and torch.equal(_logits(got, ids), _logits(load_packed(bert_packed), ids))

    lm = tiny_gpt2()
    quantize_(lm, QuantConfig(w_bits=4, a_bits=8))
    export_packed(lm, tmp_path / "lm")
    AutoModelForCausalLM.from_pretrained(tmp_path / "lm").save_pretrained(tmp_path / "lm-saved")
    got = kronbit.load_model(tmp_path / "lm-saved")  # a causal LM stays one (no classifier head)
    ids = torch.randint(3, 1000, (2, 7), generator=torch.Generator().manual_seed(2))
    assert torch.equal(_logits(got, ids), _logits(load_packed(tmp_path / "lm"), ids))


def test_kronbit_json_records_the_version_that_wrote_it(bert_packed, make_bert, tmp_path):
    assert json.loads((bert_packed / "kronbit.json").read_text())["kronbit_version"] == kronbit.__version__
    block = json.loads((bert_packed / "config.json").read_text())["quantization_config"]
    assert block["kronbit_version"] == kronbit.__version__
    model = make_bert()
    quantize_(model, QuantConfig(w_bits=1, a_bits=1))
    save_compressed(model, None, tmp_path / "c", {"task": "sst2"}, recorded_transforms(model))
    assert json.loads((tmp_path / "c" / "kronbit.json").read_text())["kronbit_version"] == kronbit.__version__


@pytest.mark.parametrize("version,message", [
    (2, "format_version 2 is not supported: written by kronbit 7.1.0, and this kronbit"),
    ("1", "format_version '1' is not a version number; the file is damaged"),
])
def test_cli_one_line_for_a_folder_from_a_newer_kronbit(bert_packed, tmp_path, capsys, version, message):
    meta = json.loads((bert_packed / "kronbit.json").read_text())
    (bert_packed / "kronbit.json").write_text(json.dumps({**meta, "format_version": version,
                                                          "kronbit_version": "7.1.0"}))
    data = write_tiny_sst2(tmp_path / "glue")
    upgrade = ["pip install -U kronbit"] if version == 2 else []
    _one_line_error(capsys, ["eval", "--model", str(bert_packed), "--data-dir", str(data)], message, *upgrade)
    _one_line_error(capsys, ["size", str(bert_packed)], message)
    _one_line_error(capsys, ["card", str(bert_packed)], message)


def test_cli_one_line_for_a_config_that_does_not_match_the_tensors(bert_packed, tmp_path, capsys):
    saved = tmp_path / "saved"
    AutoModelForSequenceClassification.from_pretrained(bert_packed).save_pretrained(saved)
    AutoTokenizer.from_pretrained(bert_packed).save_pretrained(saved)
    config = json.loads((saved / "config.json").read_text())
    name = next(iter(config["quantization_config"]["packed"]))
    config["quantization_config"]["packed"][name]["bits"] = 1  # 2-bit codes described as 1-bit
    (saved / "config.json").write_text(json.dumps(config))
    data = write_tiny_sst2(tmp_path / "glue")
    _one_line_error(capsys, ["eval", "--model", str(saved), "--task", "sst2", "--data-dir", str(data)],
                    "model.safetensors does not match the quantization_config", "1 of another shape")
    # the same through kronbit.json: the packed description edited the same way
    meta = json.loads((bert_packed / "kronbit.json").read_text())
    meta["packed"][name]["bits"] = 1
    (bert_packed / "kronbit.json").write_text(json.dumps(meta))
    _one_line_error(capsys, ["eval", "--model", str(bert_packed), "--data-dir", str(data)],
                    "kronbit_packed.safetensors does not match its description")


def test_an_export_whose_card_fails_leaves_no_folder(make_bert, tmp_path, monkeypatch):
    model = make_bert()
    quantize_(model, QuantConfig(w_bits=2, a_bits=8))
    save_compressed(model, None, tmp_path / "c", {"task": "sst2"}, recorded_transforms(model))

    def broken(*args, **kwargs):
        raise ModelError("card: disk full")

    monkeypatch.setattr(model_card, "render_model_card", broken)
    with pytest.raises(ModelError, match="disk full"):
        export_model(tmp_path / "c", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    result = export_model(tmp_path / "c", tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert result["model_card"] == str(tmp_path / "out" / "README.md")
    assert 'path = "out"' in card and "tmp" not in card.split("## Files")[1]  # the final name, not the temporary
