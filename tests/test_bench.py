"""``kronbit bench``: a packed model timed against its fp32, bf16-autocast and int8-dynamic
equivalents; one JSON line plus a table on stdout, bench.json in the folder, one-line errors."""

import json

import pytest
import torch

from kronbit import QuantConfig, quantize_
from kronbit.cli import main
from kronbit.core.errors import ConfigError
from kronbit.formats.packed import export_packed
from kronbit.workflows.bench import VARIANTS, bench_model, parse_shape


@pytest.fixture
def packed_dir(tiny_bert, tmp_path):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(tiny_bert).eval()
    quantize_(model, QuantConfig(w_bits=1, a_bits=1))
    with torch.no_grad():
        model(input_ids=torch.ones(1, 4, dtype=torch.long))  # initialise the elastic binarizers
    export_packed(model, tmp_path / "p")
    return tmp_path / "p"


def test_bench_writes_a_json_line_a_table_and_bench_json(packed_dir, capsys):
    assert main(["bench", str(packed_dir), "--shapes", "1x8", "2x16", "--rounds", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    result = json.loads(out[0])
    assert out[1].startswith("| batch × seq |") and any(line.startswith("| 2 × 16 |") for line in out)
    saved = json.loads((packed_dir / "bench.json").read_text())
    for shape in ("1x8", "2x16"):
        assert set(saved[shape]) == set(VARIANTS) and all(ms > 0 for ms in saved[shape].values())
        assert result[shape] == saved[shape]
    meta = saved["meta"]
    assert meta["threads"] == 1 and meta["rounds"] == 2 and isinstance(meta["bf16_native"], bool)
    assert sum(meta["packed_linear_paths"].values()) > 0


def test_bench_without_writing_leaves_the_folder_alone(packed_dir):
    bench_model(packed_dir, shapes=["1x4"], rounds=1, write=False)
    assert not (packed_dir / "bench.json").exists()


@pytest.mark.parametrize("text,want", [("32x128", (32, 128)), ("1X8", (1, 8)), ("4×16", (4, 16))])
def test_shapes_parse(text, want):
    assert parse_shape(text) == want


@pytest.mark.parametrize("args,message", [
    (["bench", "{tmp}/nothing"], "no packed model here"),
    (["bench", "{packed}", "--shapes", "32by128"], "expected BATCHxSEQ"),
    (["bench", "{packed}", "--shapes", "0x8"], "expected BATCHxSEQ"),
    (["bench", "{packed}", "--shapes", "1x100000"], "exceeds the model's"),
    (["bench", "{packed}", "--rounds", "0"], "rounds=0"),
])
def test_bad_input_is_one_line(packed_dir, tmp_path, capsys, args, message):
    argv = [a.format(tmp=tmp_path, packed=packed_dir) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kronbit: error:") and message in err and "\n" not in err


def test_parse_shape_rejects_junk():
    with pytest.raises(ConfigError):
        parse_shape("x")
