"""``kronbit demo`` end to end on a tiny model: the shipped ternary recipe at a demo budget,
packed export, size, scores and latency in one table; a second run reuses every step."""

import json

import pytest

from kronbit.core.errors import ConfigError, KronbitError
from kronbit.runner.demo import DemoConfig, budget_overrides, demo


def test_demo_runs_everything_once_and_reuses_it(tmp_path, tiny_bert, capsys):
    from helpers import write_tiny_sst2

    data = write_tiny_sst2(tmp_path / "glue", n_train=64, n_dev=16)
    out = tmp_path / "demo"
    cfg = DemoConfig(model=str(tiny_bert), data_dir=str(data), output_dir=str(out), train_subset=32,
                     max_seq_length=16, latency_repeats=3)
    first = demo(cfg)
    names = [r["model"] for r in first["rows"]]
    assert names == ["teacher fp32", "teacher int8 dynamic", "kronbit packed"]
    packed = first["rows"][2]
    # a tiny BERT is mostly LayerNorms, biases and the head, which stay fp32: ~3x, not ~16x
    assert packed["x_smaller"] > 2 and all(r["ms"] > 0 for r in first["rows"])
    stages = json.loads((out / "run" / "stages.json").read_text())
    assert [s["stage"] for s in stages["stages"]] == ["w4", "w2", "w2a8"]
    assert all(s["train_examples"] == 32 for s in stages["stages"])  # the demo budget reached every stage
    # the packed model's score is that of the last stage (same data, same settings)
    assert packed["score"] == pytest.approx(stages["stages"][-1]["accuracy"], abs=1e-9)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "run").rglob("*.safetensors")}

    again = demo(cfg)
    assert [r["score"] for r in again["rows"]] == [r["score"] for r in first["rows"]]
    assert {p: p.stat().st_mtime_ns for p in (out / "run").rglob("*.safetensors")} == mtimes  # nothing retrained
    md = (out / "summary.md").read_text()
    assert "| kronbit packed |" in md and str(out / "packed") in md


def test_demo_budget_reaches_teacher_and_every_stage():
    over = budget_overrides(DemoConfig(train_subset=100, max_seq_length=32), 3)
    assert "teacher.train_subset=100" in over and "train.max_seq_length=32" in over
    assert [o for o in over if o.startswith("stages.")] == [f"stages.{i}.epochs=1" for i in range(3)]


def test_demo_bad_input_is_one_line(tmp_path, capsys):
    from kronbit.cli import main

    assert main(["demo", "--recipe", str(tmp_path / "nope.yaml"), "--output-dir", str(tmp_path / "d")]) == 2
    assert "recipe not found" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    with pytest.raises(ConfigError):
        DemoConfig(train_subset=4).validate()
    assert issubclass(ConfigError, KronbitError)
