"""End to end: fine-tune through the CLI on a tiny random BERT, then on the packaged MiniLM."""

import json

import pytest

from helpers import write_tiny_sst2
from kronbit.cli import main


def test_tiny_bert_finetune_and_eval(tmp_path, tiny_bert, capsys):
    data = write_tiny_sst2(tmp_path / "glue", n_train=96, n_dev=32)
    out = tmp_path / "run"
    rc = main(["finetune", "--model", str(tiny_bert), "--task", "sst2", "--data-dir", str(data),
               "--output-dir", str(out), "--epochs", "8", "--batch-size", "16", "--seed", "1",
               "--set", "learning_rate=3e-3", "--set", "warmup_ratio=0"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # The toy task is learnable (a sentiment word decides the label): training must beat chance.
    assert result["accuracy"] >= 0.8
    assert result["steps"] == 8 * 6
    for name in ("config.yaml", "train.log", "log.jsonl", "metrics.json", "model/model.safetensors",
                 "model/kronbit.json", "model/tokenizer.json"):
        assert (out / name).exists(), name
    assert not (out / "checkpoints").exists()  # removed after a successful run
    assert len(list((out / "metrics").glob("eval-step*.json"))) == 8
    # The best of the per-epoch evaluations is the one kept.
    evals = [json.loads(p.read_text())["eval_accuracy"] for p in (out / "metrics").glob("*.json")]
    assert result["accuracy"] == pytest.approx(max(evals))

    # kronbit eval on the run directory reproduces the Trainer's dev metric exactly.
    assert main(["eval", "--model", str(out), "--data-dir", str(data)]) == 0
    ev = json.loads(capsys.readouterr().out.strip())
    assert ev["accuracy"] == pytest.approx(result["accuracy"])
    assert json.loads((out / "eval-sst2-dev.json").read_text())["accuracy"] == ev["accuracy"]

    # A second run into the same directory is refused and leaves the first intact.
    before = (out / "model" / "model.safetensors").read_bytes()
    rc = main(["finetune", "--model", str(tiny_bert), "--task", "sst2", "--data-dir", str(data),
               "--output-dir", str(out), "--max-steps", "1"])
    assert rc == 2
    assert "output directory is not empty" in capsys.readouterr().err
    assert (out / "model" / "model.safetensors").read_bytes() == before


def test_regression_task_trains(tmp_path, tiny_bert, capsys):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    rows = [f"{i}\tg\tf\ty\t0\tn\tn\tgood movie\t{'good' if i % 2 else 'bad'} film\t{5.0 * (i % 2)}"
            for i in range(32)]
    folder = tmp_path / "glue" / "STS-B"
    folder.mkdir(parents=True)
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_text(head + "\n".join(rows) + "\n")
    rc = main(["finetune", "--model", str(tiny_bert), "--task", "stsb", "--data-dir", str(tmp_path / "glue"),
               "--output-dir", str(tmp_path / "run"), "--max-steps", "3", "--batch-size", "8"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"pearson", "spearman"} <= set(result) and -1 <= result["pearson"] <= 1
    cfg = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert len(cfg["id2label"]) == 1 and cfg["problem_type"] == "regression"


@pytest.mark.slow
def test_minilm_short_run_on_real_rte(tmp_path, glue_dir, capsys):
    out = tmp_path / "rte"
    rc = main(["finetune", "--model", "packaged:minilm", "--task", "rte", "--data-dir", str(glue_dir),
               "--output-dir", str(out), "--max-steps", "6", "--batch-size", "8", "--bf16",
               "--max-seq-length", "64"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["train_examples"] == 2490 and result["steps"] == 6 and result["bf16"] is True
    meta = json.loads((out / "model" / "kronbit.json").read_text())
    assert meta["task"] == "rte" and meta["kind"] == "teacher"
    # The saved model reloads and scores the same as the run reported (fp32 eval of a model
    # evaluated under bf16 in training: allow one example's difference out of 277).
    assert main(["eval", "--model", str(out), "--data-dir", str(glue_dir), "--bf16",
                 "--max-seq-length", "64"]) == 0
    ev = json.loads(capsys.readouterr().out.strip())
    assert ev["examples"] == 277
    assert abs(ev["accuracy"] - result["accuracy"]) <= 1 / 277 + 1e-9
