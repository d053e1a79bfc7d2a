"""A run directory made by a command that then fails before any work reached it is removed again;
once training has begun (log.jsonl), or when resuming, it is kept."""

import pytest
from helpers import single_thread, write_tiny_sst2

from kronbit.core import rundir
from kronbit.workflows import finetune as finetune_module
from kronbit.workflows.finetune import FinetuneConfig, finetune

_one_thread = pytest.fixture(autouse=True)(single_thread)


def _cfg(tiny_bert, tmp_path, **kw):
    return FinetuneConfig(model=str(tiny_bert), task="sst2", data_dir=str(write_tiny_sst2(tmp_path / "glue")),
                          output_dir=str(tmp_path / "run"), max_steps=2, batch_size=8, **kw)


def test_discarded_only_while_nothing_but_the_prepared_files_exists(tmp_path):
    out = rundir.prepare(tmp_path / "a", {"command": "test"})
    (out / "stages" / "01-w2").mkdir(parents=True)  # an empty stage folder is no work
    with pytest.raises(RuntimeError), rundir.discarded_if_unused(out):
        raise RuntimeError("model failed to load")
    assert not out.exists()
    out = rundir.prepare(tmp_path / "b", {"command": "test"})
    with pytest.raises(RuntimeError), rundir.discarded_if_unused(out):
        (out / "teacher.json").write_text("{}")
        raise RuntimeError("later")
    assert (out / "teacher.json").is_file()
    out = rundir.prepare(tmp_path / "c", {"command": "test"})
    with pytest.raises(RuntimeError), rundir.discarded_if_unused(out, resume=True):
        raise RuntimeError("resumed run")
    assert (out / "config.yaml").is_file()


def test_a_failure_after_training_began_keeps_the_run(tiny_bert, tmp_path, monkeypatch):
    def boom(trainer):
        raise RuntimeError("after training")

    monkeypatch.setattr(finetune_module, "selected_metrics", boom)
    with pytest.raises(RuntimeError, match="after training"):
        finetune(_cfg(tiny_bert, tmp_path))
    assert (tmp_path / "run" / "log.jsonl").is_file() and (tmp_path / "run" / "train.log").is_file()


def test_a_model_that_fails_to_load_leaves_no_run(tiny_bert, tmp_path, monkeypatch):
    from kronbit.core.errors import ModelError

    def cannot(*a, **k):
        raise ModelError("cannot load model")

    monkeypatch.setattr(finetune_module, "load_classifier", cannot)
    with pytest.raises(ModelError):
        finetune(_cfg(tiny_bert, tmp_path))
    assert not (tmp_path / "run").exists()
    # the log went with it: the next run's log starts clean, and kronbit's logger writes nowhere stale
    import logging

    assert not [h for h in logging.getLogger("kronbit").handlers if getattr(h, "_kronbit_file", False)]
