"""Plain transformers loads the folders kronbit writes, once kronbit is imported: from_pretrained
(Auto classes, pipeline) builds the modules kronbit's own loaders build and computes the same
outputs bit for bit; save_pretrained writes a folder that loads again; bad folders fail in one
line. Tiny random-init BERT, RoBERTa, GPT-2 and Llama models."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, make_tiny_bert, single_thread, tiny_gpt2, tiny_llama
from safetensors.torch import load_file, save_file
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification, pipeline)
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

import kronbit
from kronbit import QuantConfig, kroneckerize_, quantize_
from kronbit.core.errors import ModelError
from kronbit.core.transforms import recorded_transforms
from kronbit.formats.compressed import WEIGHTS_NAME, load_compressed, save_compressed
from kronbit.formats.hf_config import QUANT_METHOD
from kronbit.formats.packed import PACKED_WEIGHTS, export_packed, load_packed
from kronbit.hf_classes import KronbitConfig
from kronbit.quant.packed import PackedEmbedding, PackedKroneckerLinear, PackedLinear

_one_thread = pytest.fixture(autouse=True)(single_thread)
PACKED_KINDS = (PackedLinear, PackedEmbedding, PackedKroneckerLinear)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("hf") / "tiny-bert")


def _bert(bert_dir):
    return BertForSequenceClassification.from_pretrained(bert_dir).eval()


def _roberta(_):
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=70, type_vocab_size=1, pad_token_id=1)
    return RobertaForSequenceClassification(cfg).eval()


def _gpt2_kron(_, quant: bool):
    model = tiny_gpt2()
    kroneckerize_(model, {"compression": 2, "layers": "odd", "embeddings": True})
    if quant:  # quantized Kronecker factors
        quantize_(model, QuantConfig(w_bits=4, a_bits=8))
    return model


# (name, builder, QuantConfig kwargs or None, Auto class, vocabulary)
CASES = [
    ("bert-w1a1", _bert, dict(w_bits=1, a_bits=1, quantize_embeddings=True, quantize_attention=True),
     AutoModelForSequenceClassification, 29),
    ("bert-w2a8", _bert, dict(w_bits=2, a_bits=8), AutoModelForSequenceClassification, 29),
    ("roberta-w4", _roberta, dict(w_bits=4, a_bits=32), AutoModelForSequenceClassification, 40),
    ("gpt2-w8a8-tied", lambda _: tiny_gpt2(), dict(w_bits=8, a_bits=8), AutoModelForCausalLM, 1000),
    ("gpt2-w2-embeddings", lambda _: tiny_gpt2(), dict(w_bits=2, a_bits=32, quantize_embeddings=True),
     AutoModelForCausalLM, 1000),
    ("gpt2-kron", lambda d: _gpt2_kron(d, quant=False), None, AutoModelForCausalLM, 1000),
    ("gpt2-kron-w4a8", lambda d: _gpt2_kron(d, quant=True), None, AutoModelForCausalLM, 1000),
    ("llama-w2a8", lambda _: tiny_llama(), dict(w_bits=2, a_bits=8), AutoModelForCausalLM, 1000),
    ("llama-tied-w1", lambda _: tiny_llama(tie_word_embeddings=True), dict(w_bits=1, a_bits=32),
     AutoModelForCausalLM, 1000),
]


def _build(case, bert_dir):
    _, build, qcfg, _, _ = case
    model = build(bert_dir)
    if qcfg is not None:
        quantize_(model, QuantConfig(**qcfg))
    return model


def _ids(vocab: int, shape=(3, 20)) -> torch.Tensor:
    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(0))


def _out(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _assert_same_model(got, want):
    """Same module classes under the same names, same tensors (dtype and values), same outputs."""
    assert {n: type(m) for n, m in got.named_modules()} == {n: type(m) for n, m in want.named_modules()}
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    buffers = dict(want.named_buffers())  # non-persistent ones too (position ids, rotary frequencies)
    for k, t in got.named_buffers():
        assert torch.equal(t, buffers[k]), k
    assert not [n for n, t in [*got.named_parameters(), *got.named_buffers()] if t.is_meta]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_from_pretrained_builds_what_load_packed_builds(case, bert_dir, tmp_path):
    model = _build(case, bert_dir)
    export_packed(model, tmp_path / "p")
    block = json.loads((tmp_path / "p" / "config.json").read_text())["quantization_config"]
    assert block["quant_method"] == QUANT_METHOD and block["format"] == "kronbit-packed"
    assert block["format_version"] == 1 and block["weights"] == PACKED_WEIGHTS
    assert "pip install kronbit" in block["requires"] and "import kronbit" in block["requires"]
    want = load_packed(tmp_path / "p")
    got = case[3].from_pretrained(tmp_path / "p")
    _assert_same_model(got, want)
    ids = _ids(case[4])
    assert torch.equal(_out(got, ids), _out(want, ids))
    assert torch.equal(_out(got, ids[:1, :5]), _out(want, ids[:1, :5]))  # the small-batch (LUT) path too
    packed = [m for m in got.modules() if isinstance(m, PACKED_KINDS)]
    if case[2] is not None or case[0].endswith("w4a8"):  # the weights stay packed in memory
        # (uint8 codes, or the AVX-512 / portable binary kernels' layout: the same bits as int64 words)
        assert packed and all(getattr(m, "packed_weight", getattr(m, "packed_a", None)).dtype in
                              (torch.uint8, torch.int8, torch.int64) for m in packed)
        for m in packed:  # and hold at most 8 bits a weight (kernel layouts pad rows to whole words)
            if hasattr(m, "packed_weight") and getattr(m, "bits", 8) <= 4:
                assert m.packed_weight.numel() * m.packed_weight.element_size() <= _fp32_weight_bytes([m]) / 4
    assert got.config.quantization_config.quant_method == QUANT_METHOD and got.is_quantized


def _fp32_weight_bytes(modules) -> int:
    """What the packed layers' weights would take as float32."""
    total = 0
    for m in modules:
        shape = (m.out_features, m.in_features) if hasattr(m, "in_features") else getattr(m, "weight_shape", None)
        if shape is None and hasattr(m, "num_embeddings"):
            shape = (m.num_embeddings, m.embedding_dim)
        total += 4 * shape[0] * shape[1] if shape else 0
    return total


@pytest.mark.parametrize("name", ["bert-w1a1", "gpt2-kron-w4a8", "llama-w2a8"])
def test_from_pretrained_loads_compressed_folders(name, bert_dir, tmp_path):
    case = next(c for c in CASES if c[0] == name)
    model = _build(case, bert_dir)
    save_compressed(model, None, tmp_path / "c", {"kind": "compressed"}, recorded_transforms(model))
    block = json.loads((tmp_path / "c" / "config.json").read_text())["quantization_config"]
    assert block["format"] == "kronbit-compressed" and block["weights"] == WEIGHTS_NAME
    want = load_compressed(tmp_path / "c")
    got = case[3].from_pretrained(tmp_path / "c")
    _assert_same_model(got, want)
    ids = _ids(case[4])
    assert torch.equal(_out(got, ids), _out(want, ids)) and torch.equal(_out(got, ids), _out(model, ids))
    assert got.hf_quantizer.is_trainable  # latent weights and fake quantizers: it can train on


@pytest.mark.parametrize("name,dtype", [("bert-w1a1", "float32"), ("gpt2-w8a8-tied", "float16"),
                                        ("gpt2-kron-w4a8", "float32")])
def test_save_pretrained_writes_a_folder_that_loads_again(name, dtype, bert_dir, tmp_path):
    case = next(c for c in CASES if c[0] == name)
    export_packed(_build(case, bert_dir), tmp_path / "p", dtype=dtype)
    want = load_packed(tmp_path / "p")
    got = case[3].from_pretrained(tmp_path / "p")
    got.save_pretrained(tmp_path / "saved")
    saved = tmp_path / "saved"
    assert {"config.json", "model.safetensors"} <= {p.name for p in saved.iterdir()}
    block = json.loads((saved / "config.json").read_text())["quantization_config"]
    assert block["weights"] is None and block["dtype"] == dtype and block["packed"] == want.kronbit_packed
    # the same tensors as the export wrote, in the declared dtype
    assert {k: (v.dtype, v.shape) for k, v in load_file(str(saved / "model.safetensors")).items()} == \
        {k: (v.dtype, v.shape) for k, v in load_file(str(tmp_path / "p" / PACKED_WEIGHTS)).items()}
    again = case[3].from_pretrained(saved)
    _assert_same_model(again, want)
    ids = _ids(case[4])
    assert torch.equal(_out(again, ids), _out(want, ids))


def test_save_pretrained_of_a_compressed_model(bert_dir, tmp_path):
    model = _build(CASES[1], bert_dir)
    save_compressed(model, None, tmp_path / "c", {}, recorded_transforms(model))
    AutoModelForSequenceClassification.from_pretrained(tmp_path / "c").save_pretrained(tmp_path / "saved")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    _assert_same_model(again, load_compressed(tmp_path / "c"))


def test_pipeline_text_classification(bert_dir, tmp_path):
    model = _build(CASES[0], bert_dir)
    tok = AutoTokenizer.from_pretrained(bert_dir)
    export_packed(model, tmp_path / "p", tokenizer=tok)
    classify = pipeline("text-classification", model=str(tmp_path / "p"), top_k=None)
    scores = {d["label"]: d["score"] for d in classify(["a good movie"])[0]}
    with torch.no_grad():
        want = load_packed(tmp_path / "p")(**tok("a good movie", return_tensors="pt")).logits.softmax(-1)[0]
    assert scores == pytest.approx({"LABEL_0": want[0].item(), "LABEL_1": want[1].item()}, abs=1e-6)


# ------------------------------------------------------------------------------------------------
# Bad folders: one line from kronbit's side


def _export_bert(bert_dir, path: Path) -> Path:
    export_packed(_build(CASES[1], bert_dir), path)
    return path


def _edit_block(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"].update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_a_folder_from_a_newer_kronbit_is_refused(bert_dir, tmp_path):
    d = _export_bert(bert_dir, tmp_path / "p")
    _edit_block(d, format_version=2, kronbit_version="9.0.0")
    with pytest.raises(ModelError, match=r"format_version 2 is not supported: written by kronbit 9.0.0, and this kronbit "
                                         rf"{re.escape(kronbit.__version__)} reads up to version 1; upgrade it: "
                                         r"pip install -U kronbit$"):
        AutoModelForSequenceClassification.from_pretrained(d)
    _edit_block(d, format="kronbit-sparse", format_version=1)
    with pytest.raises(ModelError, match="format 'kronbit-sparse'"):
        AutoModelForSequenceClassification.from_pretrained(d)


def test_a_config_that_does_not_match_the_tensors_is_refused(bert_dir, tmp_path):
    d = _export_bert(bert_dir, tmp_path / "p")
    block = json.loads((d / "config.json").read_text())["quantization_config"]
    name = next(iter(block["packed"]))
    _edit_block(d, packed={**block["packed"], name: {**block["packed"][name], "bits": 4}})
    with pytest.raises(ModelError, match=r"does not match the quantization_config.*1 of another shape"):
        AutoModelForSequenceClassification.from_pretrained(d)
    d = _export_bert(bert_dir, tmp_path / "q")
    tensors = load_file(str(d / PACKED_WEIGHTS))
    del tensors["classifier.bias"]
    save_file(tensors, str(d / PACKED_WEIGHTS))
    with pytest.raises(ModelError, match=r"1 missing tensor\(s\) \(e.g. \['classifier.bias'\]\)"):
        AutoModelForSequenceClassification.from_pretrained(d)
    (d / PACKED_WEIGHTS).write_bytes(b"\x05")
    with pytest.raises(ModelError, match="unreadable safetensors file"):
        AutoModelForSequenceClassification.from_pretrained(d)


def test_the_wrong_class_is_named(tmp_path):
    model = tiny_gpt2()
    quantize_(model, QuantConfig(w_bits=2, a_bits=8))
    export_packed(model, tmp_path / "p")
    with pytest.raises(ModelError, match="the folder holds a GPT2LMHeadModel"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "p")


def test_kronbit_does_not_quantize_while_loading(bert_dir):
    with pytest.raises(ModelError, match="does not quantize a model while loading"):
        AutoModelForSequenceClassification.from_pretrained(bert_dir, quantization_config=KronbitConfig())


def test_gpu_device_maps_are_refused(bert_dir, tmp_path):
    d = _export_bert(bert_dir, tmp_path / "p")
    with pytest.raises(ModelError, match="run on the CPU"):
        AutoModelForSequenceClassification.from_pretrained(d, device_map={"": "cuda:0"})


def test_folders_written_before_still_load_only_through_kronbit():
    old = REPO / "tests" / "fixtures" / "v0.1.0" / "bert-w1a1-packed"
    assert "quantization_config" not in json.loads((old / "config.json").read_text())
    with pytest.raises(OSError, match="model.safetensors"):  # plain transformers: refused, as before
        AutoModelForSequenceClassification.from_pretrained(old)
    assert any(isinstance(m, PackedLinear) for m in kronbit.load_model(old).modules())


def test_kronbit_loaders_drop_the_block_from_the_models_they_build(bert_dir, tmp_path):
    d = _export_bert(bert_dir, tmp_path / "p")
    assert not hasattr(load_packed(d).config, "quantization_config")


# ------------------------------------------------------------------------------------------------
# Registration on import kronbit


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})


def test_import_kronbit_registers_without_importing_transformers():
    r = _python("import sys, kronbit\n"
                "assert 'transformers' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\n"
                "from transformers import AutoModelForSequenceClassification\n"
                "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING as Q\n"
                "print(Q['kronbit'].__name__)")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "KronbitHfQuantizer"


def test_without_kronbit_transformers_refuses_and_importing_it_later_registers(bert_dir, tmp_path):
    d = _export_bert(bert_dir, tmp_path / "p")
    r = _python("from transformers import AutoModelForSequenceClassification as A\n"
                "try:\n"
                f"    A.from_pretrained({str(d)!r}); print('loaded')\n"
                "except OSError as e:\n"
                "    print('refused:', 'model.safetensors' in str(e))\n"
                "import kronbit\n"
                f"m = A.from_pretrained({str(d)!r}); print(type(m).__name__, m.is_quantized)")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[:2] == ["refused: True", "BertForSequenceClassification True"]
    assert "Unknown quantization type, got kronbit" in r.stderr


def test_importing_the_classes_module_first_registers_without_a_warning():
    r = _python("import kronbit.hf_classes\n"
                "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING as Q\n"
                "print(Q['kronbit'].__name__)")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "KronbitHfQuantizer" and "could not register" not in r.stderr


def test_registered_once_in_this_process():
    from kronbit.hf_classes import KronbitHfQuantizer, register

    register()  # again: a no-op
    assert AUTO_QUANTIZER_MAPPING[QUANT_METHOD] is KronbitHfQuantizer
    assert AUTO_QUANTIZATION_CONFIG_MAPPING[QUANT_METHOD] is KronbitConfig
