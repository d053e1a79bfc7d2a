"""kronbit export / size / eval on packed directories, through the CLI."""

import json

import pytest

from kronbit import QuantConfig, quantize_
from kronbit.formats.compressed import save_compressed
from kronbit.cli import main


@pytest.fixture
def compressed(make_bert, tmp_path, tiny_bert):
    from transformers import AutoTokenizer

    model = make_bert()
    quantize_(model, QuantConfig(w_bits=1, a_bits=1, quantize_embeddings=True))
    out = tmp_path / "run" / "model"
    save_compressed(model, AutoTokenizer.from_pretrained(tiny_bert), out, {"kind": "compressed", "task": "sst2"},
                    [{"kind": "quant", "config": QuantConfig(w_bits=1, a_bits=1, quantize_embeddings=True).to_dict()}])
    return out.parent


def test_export_size_and_eval(compressed, tmp_path, capsys):
    from helpers import write_tiny_sst2

    data = write_tiny_sst2(tmp_path / "glue")
    assert main(["eval", "--model", str(compressed), "--data-dir", str(data), "--output", str(tmp_path / "e1.json")]) == 0
    fake = json.loads(capsys.readouterr().out)
    assert main(["export", "--model", str(compressed), "--output-dir", str(tmp_path / "packed")]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["ratio_vs_fp32"] > 1
    assert main(["size", str(tmp_path / "packed")]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line
    size = json.loads(line)
    assert size["kind"] == "packed" and size["ratio_vs_fp32"] == exported["ratio_vs_fp32"]
    assert set(size["breakdown_mb"]) == {"embeddings", "encoder_weights", "scales", "full_precision"}
    assert size["memory_bytes"] < size["fp32_bytes"]
    assert main(["eval", "--model", str(tmp_path / "packed"), "--data-dir", str(data),
                 "--output", str(tmp_path / "e2.json")]) == 0
    packed = json.loads(capsys.readouterr().out)
    assert packed["task"] == "sst2"
    # the packed model scores exactly as the fake-quant one
    assert packed["accuracy"] == fake["accuracy"]


def test_export_errors_are_one_line(compressed, tiny_bert, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("precious")
    cases = [
        (["export", "--model", str(tiny_bert), "--output-dir", str(tmp_path / "x")], "nothing to pack"),
        (["export", "--model", str(compressed), "--output-dir", str(tmp_path / "busy")], "pass --overwrite"),
        (["size", str(tmp_path / "nothing")], "no model tensors found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("kronbit: error: ") and message in err and "\n" not in err
    assert (tmp_path / "busy" / "keep.txt").read_text() == "precious"


def test_export_with_onnx_writes_both_or_nothing(compressed, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    import torch

    from kronbit.quant import quantizers

    out = tmp_path / "packed"
    argv = ["export", "--model", str(compressed), "--output-dir", str(out), "--onnx", "--onnx-seq-len", "16"]
    # An operator ONNX cannot express (the binarizer's copysign, before it had an export form).
    monkeypatch.setattr(quantizers, "elastic_binary", lambda u, a, g: torch.copysign(a, u))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kronbit: error: ONNX export") and "copysign" in err and "\n" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["onnx"]["path"] == str(out / "model.onnx") and (out / "model.onnx").is_file()
    assert result["onnx"]["max_abs_diff_vs_torch"] < 1e-5
