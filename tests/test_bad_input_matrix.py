"""The bad-input matrix: every user mistake gives one line ``kronbit: error: ...`` naming the
problem, exit code 2, and leaves existing outputs byte for byte as they were.

Each case is listed in docs/bad-inputs.md (a test below checks the two agree). Cases go through
the real CLI (``kronbit.cli.main``) unless the mistake lives in the Python API (then the
``KronbitError`` subclass and message are checked).
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
from helpers import REPO, single_thread, write_tiny_sst2

from kronbit.cli import main
from kronbit.core.errors import ConfigError, KronbitError

_one_thread = pytest.fixture(autouse=True)(single_thread)
BINARY = str(REPO / "recipes" / "tspq" / "binary.yaml")
KRON = str(REPO / "recipes" / "kngpt2" / "kron-pretrain.yaml")
GLUE_KD = str(REPO / "recipes" / "kngpt2" / "glue.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory, request):
    """A tiny model, GLUE data, a compressed and a packed model, and a finished run to protect."""
    from helpers import make_tiny_bert
    from transformers import AutoTokenizer, BertForSequenceClassification

    from kronbit import QuantConfig, quantize_
    from kronbit.formats.compressed import save_compressed
    from kronbit.formats.packed import export_packed

    root = tmp_path_factory.mktemp("world")
    tiny = make_tiny_bert(root / "tiny")
    write_tiny_sst2(root / "glue")
    model = BertForSequenceClassification.from_pretrained(tiny)
    cfg = QuantConfig(w_bits=1, a_bits=1)
    quantize_(model, cfg)
    tok = AutoTokenizer.from_pretrained(tiny)
    save_compressed(model, tok, root / "compressed", {"kind": "compressed", "task": "sst2"},
                    [{"kind": "quant", "config": cfg.to_dict()}])
    export_packed(model, root / "packed", tokenizer=tok, meta={"task": "sst2"})
    done = root / "done"  # a finished run someone cares about
    (done / "model").mkdir(parents=True)
    (done / "metrics.json").write_text('{"accuracy": 0.9}\n')
    (done / "model" / "weights.bin").write_bytes(b"precious")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "broken.yaml").write_text("a: [1, 2\n")
    (root / "noconf").mkdir()
    return root


def _glue_variant(world: Path, name: str, edit) -> Path:
    d = world / f"glue-{name}"
    if not d.exists():
        shutil.copytree(world / "glue", d)
        edit(d / "SST-2")
    return d


def _copy(world: Path, src: str, name: str, edit) -> Path:
    d = world / name
    if not d.exists():
        shutil.copytree(world / src, d)
        edit(d)
    return d


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damaged_teacher(d: Path) -> None:
    (d / "kronbit.json").write_text('{"kind": "teacher", "task": "sst2"}')
    _truncate(d / "model.safetensors")


def ft(w, *extra, data=None, out="o"):
    return ["finetune", "--model", str(w / "tiny"), "--task", "sst2", "--data-dir", str(data or w / "glue"),
            "--output-dir", str(w / out), *extra]


def run(w, recipe=BINARY, *extra):
    return ["run", recipe, "--model", str(w / "tiny"), "--task", "sst2", "--data-dir", str(w / "glue"),
            "--output-dir", str(w / "r"), *extra]


def ev(w, model, *extra):
    return ["eval", "--model", str(model), "--data-dir", str(w / "glue"), *extra]


# (id, group, mistake, argv builder, expected phrase)
CLI_CASES = [
    # ---- config
    ("config-unknown-key", "config", "typo in a config key", lambda w: ft(w, "--set", "learnig_rate=1e-4"),
     "unknown key 'learnig_rate'; did you mean 'learning_rate'?"),
    ("config-wrong-type", "config", "a number that is not a number", lambda w: ft(w, "--set", "epochs=abc"),
     "expected a number, got 'abc'"),
    ("config-out-of-range", "config", "epochs = 0", lambda w: ft(w, "--epochs", "0"), "epochs must be > 0"),
    ("config-bad-set", "config", "--set without '='", lambda w: ft(w, "--set", "epochs"), "must look like key=value"),
    ("config-yaml-not-mapping", "config", "YAML config that is a list",
     lambda w: ft(w, "--config", str(w / "list.yaml")), "expected a mapping at the top level"),
    ("config-yaml-syntax", "config", "YAML config with a syntax error",
     lambda w: ft(w, "--config", str(w / "broken.yaml")), "not valid YAML at line"),
    ("config-file-missing", "config", "--config path that does not exist",
     lambda w: ft(w, "--config", str(w / "none.yaml")), "config file not found"),
    # ---- recipe
    ("recipe-missing", "recipe", "recipe file that does not exist",
     lambda w: run(w, str(w / "none.yaml")), "config file not found"),
    ("recipe-unknown-key", "recipe", "typo in a stage key", lambda w: run(w, BINARY, "--set", "stages.0.w_bitz=4"),
     "unknown key 'w_bitz'; did you mean 'w_bits'?"),
    ("recipe-unsupported-bits", "recipe", "bit-width the chosen quantizer cannot do",
     lambda w: run(w, BINARY, "--set", "quant.weight_quantizer=twn"), "weight_quantizer 'twn' supports w_bits 2"),
    ("recipe-bits-not-allowed", "recipe", "w_bits = 3", lambda w: run(w, BINARY, "--set", "stages.0.w_bits=3"),
     "w_bits=3 is not supported"),
    ("recipe-init-later", "recipe", "init_from names a later stage",
     lambda w: run(w, BINARY, "--set", "stages.0.init_from=w1"), "names a later stage"),
    ("recipe-init-missing", "recipe", "init_from names no stage",
     lambda w: run(w, BINARY, "--set", "stages.1.init_from=w9"), "names no earlier stage"),
    ("recipe-duplicate-stage", "recipe", "two stages with one name",
     lambda w: run(w, BINARY, "--set", "stages.1.name=w2"), "stage name 'w2' is used twice"),
    ("recipe-no-stages", "recipe", "empty stage list", lambda w: run(w, BINARY, "--set", "stages=[]"),
     "a recipe needs at least one stage"),
    ("recipe-no-task", "recipe", "TSPQ recipe without --task",
     lambda w: [a for a in run(w) if a not in ("--task", "sst2")], "needs --task"),
    ("recipe-kron-and-layerdrop", "recipe", "a KnGPT2 stage asking for both transforms",
     lambda w: run(w, KRON, "--set", "stages.0.layerdrop.keep=2"), "choose kron or layerdrop, not both"),
    ("recipe-kron-typo", "recipe", "typo in a Kronecker key",
     lambda w: run(w, KRON, "--set", "stages.0.kron.compresion=2"), "did you mean 'compression'"),
    ("recipe-student-missing", "recipe", "a stage starts from the student, no --student given",
     lambda w: run(w, GLUE_KD), "pass --student DIR"),
    ("recipe-student-not-found", "recipe", "--student path that does not exist",
     lambda w: run(w, GLUE_KD, "--student", str(w / "none")), "--student"),
    ("recipe-student-unused", "recipe", "--student given to a recipe that never uses it",
     lambda w: run(w, BINARY, "--student", str(w / "tiny")), "no stage of recipe 'tspq-binary' starts from it"),
    # ---- data
    ("data-unknown-task", "data", "task name typo", lambda w: ft(w, "--set", "task=sst3"),
     "unknown task 'sst3'; did you mean 'sst2'?"),
    ("data-dir-missing", "data", "data directory that does not exist", lambda w: ft(w, data=w / "nowhere"),
     "data directory not found"),
    ("data-task-folder-missing", "data", "no folder for the task", lambda w: ft(w, "--set", "task=rte"),
     "no RTE/ folder for task rte"),
    ("data-missing-split", "data", "dev.tsv missing",
     lambda w: ft(w, data=_glue_variant(w, "nodev", lambda p: (p / "dev.tsv").unlink())), "missing dev split"),
    ("data-empty-tsv", "data", "TSV with a header only",
     lambda w: ft(w, data=_glue_variant(w, "empty", lambda p: (p / "train.tsv").write_text("sentence\tlabel\n"))),
     "no examples after the header"),
    ("data-column-count", "data", "a row with an extra column",
     lambda w: ft(w, data=_glue_variant(w, "cols", lambda p: (p / "train.tsv").write_text(
         "sentence\tlabel\ngood movie\t1\textra\n"))), "expected 2 tab-separated columns, got 3"),
    ("data-bad-label", "data", "a label outside the task's labels",
     lambda w: ft(w, data=_glue_variant(w, "label", lambda p: (p / "train.tsv").write_text(
         "sentence\tlabel\ngood movie\t7\n"))), "label '7' is not one of 0, 1"),
    ("data-no-header", "data", "header line missing",
     lambda w: ft(w, data=_glue_variant(w, "nohdr", lambda p: (p / "train.tsv").write_text("good movie\t1\n"))),
     "header has no column 'sentence'"),
    ("data-test-split-unlabelled", "data", "scoring the unlabelled test split",
     lambda w: ev(w, w / "tiny", "--task", "sst2", "--split", "test"), "has no labels to score"),
    # ---- model
    ("model-path-missing", "model", "model path that does not exist", lambda w: ev(w, w / "none", "--task", "sst2"),
     "model path does not exist"),
    ("model-no-config", "model", "directory without config.json", lambda w: ev(w, w / "noconf", "--task", "sst2"),
     "holds no config.json"),
    ("model-other-task", "model", "evaluating a model on another task than it was trained for",
     lambda w: ev(w, w / "compressed", "--task", "cola"), "was trained for task sst2, not cola"),
    ("model-export-plain", "model", "exporting a full-precision checkpoint",
     lambda w: ["export", "--model", str(w / "tiny"), "--output-dir", str(w / "x")], "nothing to pack"),
    # ---- checkpoints
    ("ckpt-truncated-compressed", "checkpoint", "truncated kronbit_model.safetensors",
     lambda w: ev(w, _copy(w, "compressed", "c-trunc", lambda d: _truncate(d / "kronbit_model.safetensors"))),
     "unreadable safetensors file"),
    ("ckpt-truncated-packed", "checkpoint", "truncated kronbit_packed.safetensors",
     lambda w: ev(w, _copy(w, "packed", "p-trunc", lambda d: _truncate(d / "kronbit_packed.safetensors"))),
     "truncated"),
    ("ckpt-packed-version", "checkpoint", "packed format_version from the future",
     lambda w: ev(w, _copy(w, "packed", "p-version", lambda d: (d / "kronbit.json").write_text(json.dumps(
         {**json.loads((d / "kronbit.json").read_text()), "format_version": 99})))),
     "format_version 99 is not supported"),
    ("ckpt-meta-not-json", "checkpoint", "kronbit.json that is not JSON",
     lambda w: ev(w, _copy(w, "compressed", "c-json", lambda d: (d / "kronbit.json").write_text("{oops"))),
     "kronbit.json"),
    ("ckpt-transforms-mismatch", "checkpoint", "transforms that do not match the tensors",
     lambda w: ev(w, _copy(w, "compressed", "c-mismatch", lambda d: (d / "kronbit.json").write_text(json.dumps(
         {**json.loads((d / "kronbit.json").read_text()), "transforms": []})))),
     "does not match its transforms"),
    ("ckpt-truncated-plain-finetune", "checkpoint", "fine-tuning a model whose model.safetensors is cut short",
     lambda w: ["finetune", "--model", str(_copy(w, "tiny", "t-trunc", lambda d: _truncate(d / "model.safetensors"))),
                "--task", "sst2", "--data-dir", str(w / "glue"), "--output-dir", str(w / "o")],
     "t-trunc/model.safetensors: truncated safetensors file"),
    ("ckpt-truncated-teacher-run", "checkpoint", "a recipe whose fine-tuned teacher's weights are cut short",
     lambda w: ["run", BINARY, "--model", str(_copy(w, "tiny", "teacher-trunc", _damaged_teacher)), "--task", "sst2",
                "--data-dir", str(w / "glue"), "--output-dir", str(w / "r")],
     "teacher-trunc/model.safetensors: truncated safetensors file"),
    ("ckpt-size-nothing", "checkpoint", "kronbit size on a directory without tensors",
     lambda w: ["size", str(w / "noconf")], "no model tensors found"),
    # ---- outputs
    ("out-not-empty", "output", "output directory exists and is not empty",
     lambda w: ft(w, out="done"), "output directory is not empty"),
    ("out-nothing-to-resume", "output", "--resume of a run that does not exist",
     lambda w: ft(w, "--resume", out="never"), "nothing to resume"),
    ("out-export-not-empty", "output", "export into a non-empty directory",
     lambda w: ["export", "--model", str(w / "compressed"), "--output-dir", str(w / "done")], "pass --overwrite"),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_case(world, capsys, case):
    case_id, _, _, build, phrase = case
    argv = build(world)
    protected = {name: _snapshot(world / name) for name in ("done", "compressed", "packed")}
    assert main(argv) == 2, case_id
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1, errors
    assert errors[0].startswith("kronbit: error: ") and phrase in errors[0], errors[0]
    for name, snap in protected.items():
        assert _snapshot(world / name) == snap, f"{case_id} changed {name}/"
    # and no new output directory is left behind, even when the mistake shows only once the
    # run directory exists (a damaged model found while loading it)
    for name in ("o", "r", "x", "never"):
        assert not (world / name).exists(), f"{case_id} left {name}/ behind"


# ---- mistakes made through the Python API


def _kron_bad_shape():
    from kronbit import KroneckerConfig, kroneckerize_
    from helpers import tiny_gpt2

    kroneckerize_(tiny_gpt2(n_embd=32), KroneckerConfig(a_shape=[3, 5]))


def _kron_rank_too_high():
    from kronbit import KroneckerConfig, kroneckerize_
    from helpers import tiny_gpt2

    kroneckerize_(tiny_gpt2(n_embd=32), KroneckerConfig(a_shape=[2, 2], rank=10_000))


def _quant_no_match():
    from kronbit import QuantConfig, quantize_
    from helpers import tiny_gpt2

    quantize_(tiny_gpt2(), QuantConfig(w_bits=1, target_modules=["q_proj"]))


def _quant_bits():
    from kronbit import QuantConfig

    QuantConfig(w_bits=3)


API_CASES = [
    ("api-kron-shape", "model", "Kronecker factor shapes that do not divide the layer", _kron_bad_shape,
     "does not divide"),
    ("api-kron-rank", "model", "rank above the maximum for the factor shapes", _kron_rank_too_high, "rank"),
    ("api-quant-no-match", "model", "target pattern that matches no layer", _quant_no_match,
     "matched no linear layer or embedding"),
    ("api-quant-bits", "config", "QuantConfig with an unsupported bit-width", _quant_bits, "w_bits=3 is not supported"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_case(case):
    _, _, _, fn, phrase = case
    with pytest.raises(ConfigError) as e:
        fn()
    assert phrase in str(e.value) and "\n" not in str(e.value)


def test_disk_full_on_export_keeps_the_old_export(world, capsys, monkeypatch):
    import kronbit.formats.packed

    out = _copy(world, "packed", "p-diskfull", lambda d: None)
    before = _snapshot(out)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(kronbit.formats.packed, "save_file", full)
    assert main(["export", "--model", str(world / "compressed"), "--output-dir", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kronbit: error: disk full while writing")
    assert _snapshot(out) == before


def test_every_case_is_documented():
    doc = (REPO / "docs" / "bad-inputs.md").read_text()
    ids = [c[0] for c in CLI_CASES + API_CASES] + ["disk-full", "nan-loss"]
    missing = [i for i in ids if f"`{i}`" not in doc]
    assert not missing, f"not in docs/bad-inputs.md: {missing}"
    assert len(ids) >= 30
    assert issubclass(ConfigError, KronbitError)
