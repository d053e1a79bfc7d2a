"""The hub route of the GLUE loader (with a stand-in `datasets` module, since this machine is
offline) and the atomic-write helpers."""

import sys
import types

import pytest

from kronbit.data.glue import get_task, load_split
from kronbit.core.errors import DataError
from kronbit.core.io import atomic_dir, atomic_path, write_json


@pytest.fixture
def fake_datasets(monkeypatch):
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        if name == "mnli":
            return [{"premise": "P.", "hypothesis": "H.", "label": 2, "idx": 0}]
        if name == "stsb":
            return [{"sentence1": "A.", "sentence2": "B.", "label": 3.8, "idx": 0}]
        if split == "test":
            return [{"sentence": "x", "label": -1, "idx": 0}]
        raise FileNotFoundError("Couldn't reach the hub\nsecond line")

    mod = types.SimpleNamespace(load_dataset=load_dataset)
    monkeypatch.setitem(sys.modules, "datasets", mod)
    return calls


def test_hub_route_maps_fields_and_splits(fake_datasets):
    (ex,) = load_split("mnli", "hub", "dev")
    assert (ex.text_a, ex.text_b, ex.label) == ("P.", "H.", 2)
    assert get_task("mnli").labels[2] == "contradiction"  # same index order as the hub
    assert fake_datasets[-1] == ("nyu-mll/glue", "mnli", "validation_matched")
    (ex,) = load_split("stsb", None, "train")
    assert ex.label == pytest.approx(3.8)
    (ex,) = load_split("sst2", "hub", "test")
    assert ex.label is None  # hub marks hidden test labels with -1


def test_hub_failure_is_one_line(fake_datasets):
    with pytest.raises(DataError, match=r"^could not load GLUE/sst2 from the hub: Couldn't reach the hub$"):
        load_split("sst2", "hub", "train")


def test_hub_route_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(DataError, match=r"pip install 'kronbit\[hub\]'"):
        load_split("sst2", "hub", "train")


def test_write_json_is_atomic_on_failure(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"a": 1})
    from kronbit.core.errors import KronbitError

    # a full disk is reported as a user-facing error (one line), and the old file stays
    with pytest.raises(KronbitError, match="disk full while writing .*m.json; the previous version"):
        with atomic_path(path) as tmp:
            tmp.write_text('{"a": 2, "b": [')  # half written, then the disk fills
            raise OSError(28, "No space left on device")
    assert path.read_text().strip().startswith("{") and '"a": 1' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left behind


def test_atomic_dir_keeps_old_on_failure(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "w.bin").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "w.bin").write_text("half")
            raise RuntimeError("disk full")
    assert (target / "w.bin").read_text() == "old"
    with atomic_dir(target) as tmp:
        (tmp / "w.bin").write_text("new")
    assert (target / "w.bin").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
