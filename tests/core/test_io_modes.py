"""Files and directories kronbit writes atomically get the permissions the umask gives any other
file (0644 / 0755 under the usual 022), not the private 0600 / 0700 of a temporary name."""

import os
import stat

import pytest

from kronbit.core.io import atomic_dir, atomic_path, write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    before = os.umask(0o022)
    os.umask(before)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(before)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775),
                                                      (0o077, 0o600, 0o700)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"\0")
    with atomic_path(tmp_path / "c.bin") as tmp:  # a writer that replaces the file it was given
        tmp.unlink()
        tmp.write_bytes(b"\1")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "inner.txt").write_text("x")
        write_json(tmp / "meta.json", {})
    for name in ("a.json", "b.bin", "c.bin", "d/inner.txt", "d/meta.json"):
        assert _mode(tmp_path / name) == file_mode, name
    assert _mode(tmp_path / "d") == dir_mode
    assert os.umask(mask) == mask  # reading the umask left it as it was


def test_a_saved_model_directory_is_readable_by_others(tmp_path, umask, tiny_bert):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from kronbit import QuantConfig, quantize_
    from kronbit.formats.compressed import save_compressed
    from kronbit.formats.packed import export_packed
    from kronbit.workflows.training import save_model

    umask(0o022)
    model = BertForSequenceClassification.from_pretrained(tiny_bert)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    save_model(model, tok, tmp_path / "hf", {"kind": "teacher"})  # save_pretrained: safetensors writes 0600
    quantize_(model, QuantConfig(w_bits=2))
    save_compressed(model, tok, tmp_path / "c", {"task": "sst2"}, [])
    export_packed(model, tmp_path / "p", tokenizer=tok)
    for d in (tmp_path / "hf", tmp_path / "c", tmp_path / "p"):
        assert _mode(d) == 0o755
        assert {_mode(f) for f in d.iterdir()} == {0o644}, d
