"""A damaged or truncated file anywhere kronbit reads a model (plain Hugging Face, compressed and
packed directories; weights, config.json, tokenizer, kronbit.json; GGUF) is one line naming it."""

import shutil

import pytest

from kronbit.cli import main

CUTS = {"half": lambda b: b[: len(b) // 2], "4 bytes": lambda b: b[:4], "empty": lambda b: b""}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A plain teacher, its compressed W1A1 student and the packed export, plus toy SST-2."""
    from helpers import make_tiny_bert, write_tiny_sst2
    from transformers import AutoTokenizer, BertForSequenceClassification

    from kronbit import QuantConfig, quantize_
    from kronbit.core.transforms import recorded_transforms
    from kronbit.formats.compressed import save_compressed
    from kronbit.formats.packed import export_packed

    root = tmp_path_factory.mktemp("damaged")
    plain = make_tiny_bert(root / "plain")
    (plain / "kronbit.json").write_text('{"kind": "teacher", "task": "sst2"}')
    model = BertForSequenceClassification.from_pretrained(plain)
    quantize_(model, QuantConfig(w_bits=1, a_bits=1))
    tok = AutoTokenizer.from_pretrained(plain)
    save_compressed(model, tok, root / "compressed", {"task": "sst2"}, recorded_transforms(model))
    export_packed(model, root / "packed", tokenizer=tok, meta={"task": "sst2"})
    return {"plain": plain, "compressed": root / "compressed", "packed": root / "packed",
            "data": write_tiny_sst2(root / "glue")}


FILES = [("plain", "model.safetensors"), ("plain", "config.json"), ("plain", "tokenizer.json"),
         ("compressed", "kronbit_model.safetensors"), ("compressed", "config.json"), ("compressed", "kronbit.json"),
         ("packed", "kronbit_packed.safetensors"), ("packed", "config.json"), ("packed", "kronbit.json")]


def _one_line_naming(capsys, argv, path):
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert err.startswith("kronbit: error: ") and "\n" not in err, err
    assert str(path) in err, err
    return err


@pytest.mark.parametrize("cut", list(CUTS))
@pytest.mark.parametrize("kind, name", FILES, ids=lambda x: x if isinstance(x, str) else None)
def test_a_cut_short_file_is_one_line_naming_it(dirs, tmp_path, capsys, kind, name, cut):
    d = tmp_path / kind
    shutil.copytree(dirs[kind], d)
    f = d / name
    f.write_bytes(CUTS[cut](f.read_bytes()))
    commands = [["eval", "--model", str(d), "--data-dir", str(dirs["data"])]]
    if name != "tokenizer.json":
        commands.append(["size", str(d)])
    if kind == "compressed":
        commands.append(["export", "--model", str(d), "--output-dir", str(tmp_path / "out")])
    for argv in commands:
        _one_line_naming(capsys, argv, f)
    assert not (tmp_path / "out").exists()  # a failed export leaves nothing


def test_a_damaged_safetensors_header_is_named(dirs, tmp_path, capsys):
    d = tmp_path / "plain"
    shutil.copytree(dirs["plain"], d)
    f = d / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[8:16] = b"\xff" * 8  # the JSON header's first bytes
    f.write_bytes(bytes(raw))
    err = _one_line_naming(capsys, ["eval", "--model", str(d), "--data-dir", str(dirs["data"])], f)
    assert "damaged" in err


def test_a_truncated_gguf_file_is_named(tmp_path, capsys):
    pytest.importorskip("gguf")
    from kronbit.core.errors import ModelError
    from kronbit.models.packaged import packaged_path

    try:
        src = packaged_path("smollm2")
    except ModelError as e:
        pytest.skip(str(e))
    f = tmp_path / "cut.gguf"
    with open(src, "rb") as inp:
        f.write_bytes(inp.read(3_000_000))
    (tmp_path / "text.txt").write_text("a few words to score\n")
    err = _one_line_naming(capsys, ["perplexity", "--model", str(f), "--text", str(tmp_path / "text.txt")], f)
    assert "damaged or truncated" in err
