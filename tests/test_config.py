from dataclasses import dataclass, field

import pytest

from kronbit.core.config import Config, apply_overrides, load_yaml
from kronbit.core.errors import ConfigError
from kronbit.workflows.finetune import FinetuneConfig


@dataclass
class Inner(Config):
    bits: int = 8
    name: str = "x"


@dataclass
class Outer(Config):
    lr: float = 1e-3
    stages: list[Inner] = field(default_factory=list)
    tag: str | None = None


BASE = {"model": "m", "task": "rte", "output_dir": "o"}


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'learnig_rate'; did you mean 'learning_rate'\?"):
        FinetuneConfig.from_dict({**BASE, "learnig_rate": 1e-5})


def test_unknown_key_without_close_match_lists_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'zzz'; valid keys: .*batch_size"):
        FinetuneConfig.from_dict({**BASE, "zzz": 1})


@pytest.mark.parametrize("key, value, message", [
    ("epochs", "three", "expected a number"),
    ("batch_size", 2.5, "expected an integer"),
    ("bf16", "yes", "expected true or false or 'auto'"),
    ("epochs", 0, "epochs must be > 0"),
    ("learning_rate", 5, r"learning_rate must be in \(0, 1\)"),
    ("task", "sst3", "unknown task 'sst3'; did you mean 'sst2'"),
    ("max_seq_length", 4, r"max_seq_length must be in \[8, 8192\]"),
])
def test_bad_values(key, value, message):
    with pytest.raises(Exception, match=message):
        FinetuneConfig.from_dict({**BASE, key: value})


def test_missing_required():
    with pytest.raises(ConfigError, match="missing required key.*task"):
        FinetuneConfig.from_dict({"model": "m", "output_dir": "o"})


def test_coercions_and_defaults():
    cfg = FinetuneConfig.from_dict({**BASE, "learning_rate": "3e-5", "epochs": 2, "max_steps": None})
    assert cfg.learning_rate == 3e-5 and cfg.epochs == 2.0 and cfg.max_steps is None
    assert cfg.to_dict()["batch_size"] == 32


def test_nested_configs_and_overrides():
    data = {"stages": [{"bits": 8}, {"bits": 4}]}
    data = apply_overrides(data, ["stages.1.bits=2", "lr=5e-4", "tag=hello"])
    cfg = Outer.from_dict(data)
    assert [s.bits for s in cfg.stages] == [8, 2] and cfg.lr == 5e-4 and cfg.tag == "hello"
    assert data["stages"][0] == {"bits": 8}
    with pytest.raises(ConfigError, match=r"Outer.stages\[0\]: unknown key 'bitz'; did you mean 'bits'"):
        Outer.from_dict({"stages": [{"bitz": 1}]})
    with pytest.raises(ConfigError, match="is not an index of a 2-item list"):
        apply_overrides({"stages": [{}, {}]}, ["stages.5.bits=1"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        apply_overrides({}, ["lr"])


def test_yaml_round_trip_and_errors(tmp_path):
    cfg = FinetuneConfig.from_dict({**BASE, "epochs": 1.5})
    p = tmp_path / "c.yaml"
    import yaml

    p.write_text(yaml.safe_dump(cfg.to_dict()))
    assert FinetuneConfig.from_yaml(p) == cfg
    assert FinetuneConfig.from_yaml(p, ["seed=7"]).seed == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "none.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_yaml(tmp_path / "list.yaml")
