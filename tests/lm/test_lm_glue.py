"""KnGPT2's GLUE step: a decoder student compressed by a language-model recipe (Kronecker or
layer-drop) is fine-tuned on a GLUE task with ILKD from the fine-tuned teacher, through the same
stage runner and CLI (``recipes/kngpt2/glue.yaml``, ``--student``)."""

import json

import pytest
from helpers import write_tiny_sst2

from kronbit.cli import main
from helpers import tiny_llama


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture
def glue_setup(lm_world):
    tmp_path, root = lm_world
    write_tiny_sst2(root / "glue")
    lm_small = ["--set", "lm.block_size=32", "--set", "lm.max_tokens=512", "--set", "train.batch_size=4",
                "--set", "perplexity.max_length=64", "--set", "perplexity.stride=32", "--set",
                "perplexity.max_tokens=200", "--set", "train.bf16=false", "--set", "perplexity.bf16=false"]
    glue_small = ["--set", "train.bf16=false", "--set", "teacher.bf16=false", "--set", "train.batch_size=8",
                  "--set", "teacher.batch_size=8", "--set", "train.max_seq_length=32"]
    return tmp_path, root, lm_small, glue_small


def _pretrain(tmp, root, lm_small, recipe, out, *extra):
    argv = ["run", f"recipes/kngpt2/{recipe}", "--model", str(tmp / "teacher"), "--data-dir", str(root),
            "--output-dir", str(tmp / out), "--max-steps", "2", *lm_small, *extra]
    assert main(argv) == 0


def test_kronecker_student_fine_tunes_on_glue(glue_setup, capsys):
    from kronbit.formats import load_model
    from kronbit.kron.layers import KroneckerEmbedding, KroneckerLinear

    tmp, root, lm_small, glue_small = glue_setup
    _pretrain(tmp, root, lm_small, "kron-pretrain.yaml", "kron")
    capsys.readouterr()
    argv = ["run", "recipes/kngpt2/glue.yaml", "--model", str(tmp / "teacher"), "--student", str(tmp / "kron"),
            "--task", "sst2", "--data-dir", str(root / "glue"), "--output-dir", str(tmp / "kron-sst2"),
            "--max-steps", "3", *glue_small]
    assert main(argv) == 0
    table = _last_json(capsys)
    row = table["stages"][0]
    assert row["stage"] == "glue" and row["init_from"] == "student" and row["steps"] == 3
    assert 0.0 <= row["accuracy"] <= 1.0 and "accuracy" in table["teacher"]  # the teacher was fine-tuned first
    model = load_model(tmp / "kron-sst2")  # rebuilt from its transforms, as a classifier
    assert type(model).__name__ == "GPT2ForSequenceClassification"
    assert any(isinstance(m, KroneckerLinear) for m in model.modules())
    assert any(isinstance(m, KroneckerEmbedding) for m in model.modules())
    meta = json.loads((tmp / "kron-sst2" / "model" / "kronbit.json").read_text())
    assert meta["task"] == "sst2" and [t["kind"] for t in meta["transforms"]] == ["kron"]
    # same decomposition as the pre-trained student (the exact tensor hand-over is tested below)
    lm = load_model(tmp / "kron" / "model")
    shapes = {n: p.shape for n, p in lm.named_parameters() if n.startswith("transformer.")}
    assert shapes == {n: p.shape for n, p in model.named_parameters() if n.startswith("transformer.")}
    # kronbit eval reads the result like any other run directory
    assert main(["eval", "--model", str(tmp / "kron-sst2"), "--data-dir", str(root / "glue"),
                 "--max-seq-length", "32"]) == 0
    ev = _last_json(capsys)
    assert ev["task"] == "sst2" and ev["accuracy"] == pytest.approx(row["accuracy"])


@pytest.mark.parametrize("embeddings", [True, False], ids=["kronecker-embedding", "dense-embedding"])
def test_compressed_lm_loads_as_a_classifier_with_its_backbone(tmp_path, embeddings):
    """The pre-trained backbone's tensors arrive in the classifier unchanged; only the head is new
    (with the embedding decomposed as in KnGPT2, or left dense as the equal-size selection does)."""
    import torch

    from kronbit.formats.compressed import load_compressed, save_compressed
    from kronbit.data.glue import get_task
    from kronbit.kron import KroneckerConfig, kroneckerize_
    from kronbit.core.transforms import recorded_transforms

    torch.manual_seed(0)
    # tied LM head, as SmolLM2: a dense embedding is then saved once, possibly as lm_head.weight
    lm = tiny_llama(vocab_size=64, hidden_size=32, num_hidden_layers=2, tie_word_embeddings=True)
    kroneckerize_(lm, KroneckerConfig(compression=2, layers="odd", embeddings=embeddings))
    save_compressed(lm, None, tmp_path / "lm", {"kind": "student"}, recorded_transforms(lm))
    clf = load_compressed(tmp_path / "lm", get_task("rte"))
    assert type(clf).__name__ == "LlamaForSequenceClassification" and clf.config.num_labels == 2
    lm_state, clf_state = lm.state_dict(), clf.state_dict()
    body = [k for k in clf_state if k.startswith("model.")]
    assert body and all(torch.equal(clf_state[k], lm_state[k]) for k in body)
    assert {k for k in clf_state if not k.startswith("model.")} == {"score.weight"}
    # a corrupted backbone is still refused (only the heads may differ)
    from safetensors.torch import load_file, save_file

    path = tmp_path / "lm" / "kronbit_model.safetensors"
    state = load_file(str(path))
    state.pop("model.norm.weight")
    save_file(state, str(path))
    from kronbit.core.errors import ModelError

    with pytest.raises(ModelError, match="does not match its transforms"):
        load_compressed(tmp_path / "lm", get_task("rte"))


def test_layerdrop_student_learns_from_the_blocks_it_kept(glue_setup, capsys):
    tmp, root, lm_small, glue_small = glue_setup
    _pretrain(tmp, root, lm_small, "layerdrop-pretrain.yaml", "drop", "--set", "stages.0.layerdrop.keep=[0,2]")
    meta = json.loads((tmp / "drop" / "model" / "kronbit.json").read_text())
    assert meta["kept_layers"] == [0, 2]
    capsys.readouterr()
    argv = ["run", "recipes/kngpt2/glue.yaml", "--model", str(tmp / "teacher"), "--student", str(tmp / "drop"),
            "--task", "sst2", "--data-dir", str(root / "glue"), "--output-dir", str(tmp / "drop-sst2"),
            "--max-steps", "2", *glue_small]
    # identity would fail (2 student blocks, 4 teacher blocks): the kept blocks' map is used
    assert main(argv) == 0
    row = _last_json(capsys)["stages"][0]
    assert row["steps"] == 2
    meta = json.loads((tmp / "drop-sst2" / "model" / "kronbit.json").read_text())
    assert meta["kept_layers"] == [0, 2]
    log = [json.loads(line) for line in (tmp / "drop-sst2" / "stages" / "01-glue" / "log.jsonl").read_text().splitlines()]
    assert any("kd_hidden" in e for e in log)


def test_student_errors_are_one_line(glue_setup, capsys):
    tmp, root, _, glue_small = glue_setup
    base = ["run", "recipes/kngpt2/glue.yaml", "--model", str(tmp / "teacher"), "--task", "sst2",
            "--data-dir", str(root / "glue"), "--output-dir", str(tmp / "x"), *glue_small]
    cases = [
        ([], "pass --student DIR"),
        (["--student", str(tmp / "nope")], "no such directory"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("kronbit: error: ") and message in err and "\n" not in err
    argv = ["run", "recipes/tspq/ternary.yaml", "--model", str(tmp / "teacher"), "--task", "sst2",
            "--data-dir", str(root / "glue"), "--output-dir", str(tmp / "y"), "--student", str(tmp)]
    assert main(argv) == 2
    assert "no stage of recipe 'tspq-ternary' starts from it" in capsys.readouterr().err
    assert not (tmp / "x").exists() and not (tmp / "y").exists()
