"""``kronbit eval`` reproduces the number a run reported: with no flags it evaluates with the
precision, batch size and sequence length the model's kronbit.json records (``eval``), and says
which it used."""

import json
import random

import pytest
import yaml
from helpers import single_thread

from kronbit.cli import main
from kronbit.workflows.evaluate import DEFAULTS, eval_settings

_one_thread = pytest.fixture(autouse=True)(single_thread)


def _long_sst2(root, n_train=96, n_dev=40):
    """Toy SST-2 of 10-word sentences (12 tokens): cut to 8 tokens they read differently."""
    rng = random.Random(0)
    filler = ["movie", "film", "plot", "actor", "the", "a", "is", "was", "very", "story"]
    (root / "SST-2").mkdir(parents=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            word = rng.choice(["good", "great", "nice"] if i % 2 else ["bad", "awful", "sad"])
            rows.append(" ".join([word] + rng.choices(filler, k=9)) + f"\t{i % 2}")
        (root / "SST-2" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_settings_precedence():
    recorded = {"eval": {"bf16": True, "batch_size": 7, "max_seq_length": 32}}
    assert eval_settings({}) == (DEFAULTS, "defaults")
    assert eval_settings(recorded) == ({"bf16": True, "batch_size": 7, "max_seq_length": 32}, "kronbit.json")
    got, where = eval_settings(recorded, bf16=False, batch_size=None, max_seq_length=None)
    assert got == {"bf16": False, "batch_size": 7, "max_seq_length": 32}
    assert where == "flags (bf16), kronbit.json (batch_size, max_seq_length)"


def test_eval_reproduces_the_teacher_and_the_stage_numbers(tmp_path, capsys, tiny_bert):
    data = _long_sst2(tmp_path / "glue")
    recipe = tmp_path / "r.yaml"
    settings = {"bf16": False, "batch_size": 16, "eval_batch_size": 5, "max_seq_length": 8}
    recipe.write_text(yaml.safe_dump({
        "name": "tiny", "train": {**settings, "learning_rate": 1e-3},
        "teacher": {**settings, "learning_rate": 3e-3, "epochs": 6},
        "kd": {"logits": 1, "hidden": 1, "layer_map": "identity"},
        "stages": [{"name": "w2", "w_bits": 2, "a_bits": 8, "init_from": "teacher"}]}))
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--model", str(tiny_bert), "--task", "sst2", "--data-dir", str(data),
                 "--output-dir", str(out), "--max-steps", "6"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stages"][-1]
    teacher = json.loads((out / "teacher" / "metrics.json").read_text())
    for model, want in ((out, row["accuracy"]), (out / "teacher", teacher["accuracy"])):
        assert main(["eval", "--model", str(model), "--data-dir", str(data), "--output", str(tmp_path / "e.json")]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["accuracy"] == want  # the run's number, exactly
        assert (got["precision"], got["batch_size"], got["max_seq_length"], got["settings_from"]) == \
            ("fp32", 5, 8, "kronbit.json")
    # a flag still wins, and the result says so
    assert main(["eval", "--model", str(out / "teacher"), "--data-dir", str(data), "--max-seq-length", "64",
                 "--output", str(tmp_path / "e.json")]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["max_seq_length"] == 64 and full["settings_from"].startswith("flags (max_seq_length)")
    # why it matters: the old fixed defaults (128 tokens) give other logits than the run's 8
    from transformers import DataCollatorWithPadding

    from kronbit.data.features import tokenize
    from kronbit.data.glue import get_task, load_split
    from kronbit.formats.load import load_model
    from kronbit.models.encoders import load_tokenizer
    from kronbit.workflows.evaluate import predict

    task, tok = get_task("sst2"), load_tokenizer(out / "model")
    model, dev = load_model(out / "model"), load_split(task, str(data), "dev")
    short, long = (predict(model, tokenize(dev, tok, task, n), DataCollatorWithPadding(tok), 5) for n in (8, 128))
    assert abs(short - long).max() > 1e-5  # well above float noise (~1e-7); this barely trained model has tiny logits
