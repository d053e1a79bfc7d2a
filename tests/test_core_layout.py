"""Behaviour the package layout introduced: bf16 resolved from the hardware, recipe sections that
keep their own defaults, one validation path, the registries, local paths that are not hub ids."""

from __future__ import annotations

import pytest

from kronbit.core import hardware
from kronbit.core.errors import ConfigError, ModelError
from kronbit.models.resolve import resolve_model
from kronbit.runner import RUN_METHODS, Recipe


@pytest.mark.parametrize("flags,expected", [(frozenset({"avx2", "fma"}), False),
                                            (frozenset({"avx512f", "avx512_bf16"}), True),
                                            (frozenset({"amx_bf16"}), True)])
def test_bf16_auto_follows_the_cpu(monkeypatch, flags, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
    assert hardware.resolve_bf16("auto") is expected
    assert hardware.resolve_bf16(False) is False


def test_bf16_true_on_an_emulating_cpu_warns_once(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
    said = []
    monkeypatch.setattr(hardware.log, "warning", lambda msg, *a: said.append(msg % a))
    hardware._warn_slow_bf16.cache_clear()
    assert hardware.resolve_bf16(True) is True
    assert hardware.resolve_bf16(True) is True
    hardware._warn_slow_bf16.cache_clear()
    assert len(said) == 1 and "no bf16 units" in said[0]


def _recipe(**extra):
    return {"name": "r", "stages": [{"name": "w2", "w_bits": 2, "init_from": "teacher"}], **extra}


def test_a_section_keeps_its_own_defaults_for_keys_it_leaves_out():
    r = Recipe.from_dict(_recipe(teacher={"learning_rate": 1e-4}))
    assert r.teacher.learning_rate == 1e-4 and r.teacher.epochs == 3.0  # the teacher section's default
    lm = Recipe.from_dict({"name": "l", "method": "kngpt2", "lm": {"max_tokens": 5000},
                           "stages": [{"name": "k", "init_from": "teacher", "kron": {"compression": 2}}]})
    # The block size the run uses is the one validation saw (one default, in the recipe).
    assert lm.lm.block_size == 256 and lm.lm.files == ["wikitext2-valid", "tinyshakespeare"]
    assert lm.stages[0].kron.compression == 2  # a typed section, not a dict


def test_sections_are_validated_once_when_the_recipe_is_read():
    with pytest.raises(ConfigError, match="set w_bits / a_bits per stage"):
        Recipe.from_dict(_recipe(quant={"w_bits": 2}))
    with pytest.raises(ConfigError, match="recipe_version 2 is not supported"):
        Recipe.from_dict({"name": "l", "method": "kngpt2", "recipe_version": 2,
                          "stages": [{"name": "k", "init_from": "teacher"}]})
    with pytest.raises(ConfigError, match="method 'nope' is not known; choose one of: glue, tspq, kngpt2"):
        Recipe.from_dict(_recipe(method="nope"))
    with pytest.raises(ConfigError, match="block_size must be at least 2"):
        Recipe.from_dict({"name": "l", "method": "kngpt2", "lm": {"block_size": 1},
                          "stages": [{"name": "k", "init_from": "teacher"}]})


def test_tspq_is_the_glue_method_under_its_older_name():
    assert RUN_METHODS["tspq"] is RUN_METHODS["glue"]
    assert Recipe.from_dict(_recipe(method="tspq")).run_method.name == "glue"


def test_a_missing_local_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ModelError, match="model path does not exist: runs/rte-teacher"):
        resolve_model("runs/rte-teacher")
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"
    assert resolve_model("google/bert_uncased_L-2_H-128_A-2") == "google/bert_uncased_L-2_H-128_A-2"


def test_written_files_and_directories_honour_the_umask(tmp_path):
    import os
    import stat

    from kronbit.core.io import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "model") as d:
            write_json(d / "kronbit.json", {})
        modes = [stat.S_IMODE(os.stat(p).st_mode) for p in (tmp_path / "a.json", tmp_path / "model",
                                                              tmp_path / "model" / "kronbit.json")]
        assert modes == [0o644, 0o755, 0o644]
        os.umask(0o077)
        write_json(tmp_path / "private.json", {})
        assert stat.S_IMODE(os.stat(tmp_path / "private.json").st_mode) == 0o600
    finally:
        os.umask(old)
