"""Packed export: reload equals fake-quant, the file really is small, bad files fail clearly."""

import json

import pytest
import torch

from kronbit import QuantConfig, kroneckerize_, quantize_
from kronbit.core.errors import ModelError
from kronbit.formats.packed import PACKED_WEIGHTS, export_packed, load_packed
from kronbit.formats.size import module_bytes, size_report
from kronbit.quant.layers import QuantLinear
from kronbit.quant.packed import PackedLinear


def _ids(seed=0, shape=(4, 12), vocab=25):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


CASES = [dict(w_bits=1, a_bits=1), dict(w_bits=2, a_bits=8), dict(w_bits=4, a_bits=32),
         dict(w_bits=8, a_bits=8), dict(w_bits=1, a_bits=32, granularity="tensor"),
         dict(w_bits=4, a_bits=32, weight_quantizer="lsq"), dict(w_bits=2, a_bits=8, symmetric=False,
                                                                 weight_quantizer="uniform"),
         dict(w_bits=1, a_bits=1, embedding_bits=2)]  # ternary embedding table beside binary linears


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_packed_reload_equals_fake_quant_exactly(make_bert, tmp_path, cfg, monkeypatch):
    # The bit-level kernels (W1A1, W2A8) agree up to float rounding (tests/quant/test_kernels.py);
    # without them every packed path is bit-exact.
    monkeypatch.setenv("KRONBIT_KERNEL_PATH", "off")
    model = make_bert()
    quantize_(model, QuantConfig(quantize_embeddings=True, quantize_attention=True, **cfg))
    ids = _ids()  # 48 tokens: above the LUT threshold, so the packed model takes the exact path
    want = _logits(model, ids)
    export_packed(model, tmp_path / "p")
    for mode in ("packed", "dequantized"):
        got = _logits(load_packed(tmp_path / "p", mode=mode), ids)
        assert torch.equal(got, want), mode
    # the source model is untouched by the export
    assert any(isinstance(m, QuantLinear) for m in model.modules())


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_lut_path_matches_within_float_rounding(make_bert, tmp_path, bits):
    model = make_bert()
    quantize_(model, QuantConfig(w_bits=bits, a_bits=32))
    ids = _ids(shape=(1, 6))  # 6 tokens: the lookup-table kernel
    export_packed(model, tmp_path / "p")
    packed = load_packed(tmp_path / "p")
    lin = next(m for m in packed.modules() if isinstance(m, PackedLinear))
    assert lin.bits <= 4 and 6 <= lin.lut_max_tokens
    # a different order of the same float additions: ~1e-6 relative
    torch.testing.assert_close(_logits(packed, ids), _logits(model, ids), rtol=1e-4, atol=1e-5)


def test_packed_linear_conv1d_layout_and_dequantized_weight(make_gpt2):
    model = make_gpt2()
    quantize_(model, QuantConfig(w_bits=2, a_bits=8))
    q = model.transformer.h[0].attn.c_attn
    assert isinstance(q, QuantLinear) and q.fan_in_fan_out
    p = PackedLinear.from_quant(q)
    assert torch.equal(p.dequantized_weight(), q.fake_quant_weight())
    x = torch.randn(2, 20, q.in_features)
    with torch.no_grad():
        assert torch.equal(p(x), q(x))


def test_gpt2_with_tied_head_round_trip(make_gpt2, tmp_path):
    model = make_gpt2()
    quantize_(model, QuantConfig(w_bits=1, a_bits=8, quantize_embeddings=True))
    ids = _ids(shape=(2, 16), vocab=100)
    want = _logits(model, ids)
    export_packed(model, tmp_path / "p")
    got = _logits(load_packed(tmp_path / "p"), ids)
    assert torch.equal(got, want)


def test_kronecker_then_quantized_model_exports(make_gpt2, tmp_path):
    model = make_gpt2()
    kroneckerize_(model, {"compression": 2, "layers": "all"})
    ids = _ids(shape=(2, 16), vocab=100)
    want = _logits(model, ids)
    desc = export_packed(model, tmp_path / "k")
    assert [t["kind"] for t in desc["transforms"]] == ["kron"]
    assert torch.equal(_logits(load_packed(tmp_path / "k"), ids), want)
    # half-precision storage halves the Kronecker factors' bytes and changes outputs only slightly
    export_packed(model, tmp_path / "k16", dtype="float16")
    r32, r16 = size_report(tmp_path / "k", in_memory=False), size_report(tmp_path / "k16", in_memory=False)
    assert r16["disk_bytes"] < 0.55 * r32["disk_bytes"]
    torch.testing.assert_close(_logits(load_packed(tmp_path / "k16"), ids), want, rtol=0.05, atol=0.05)


def test_size_arithmetic(make_bert, tmp_path):
    model = make_bert()
    n_params = sum(p.numel() for p in model.parameters())
    quantize_(model, QuantConfig(w_bits=1, quantize_embeddings=True))
    export_packed(model, tmp_path / "p")
    report = size_report(tmp_path / "p")
    assert report["fp32_parameters"] == n_params and report["fp32_bytes"] == 4 * n_params
    assert report["disk_bytes"] == (tmp_path / "p" / PACKED_WEIGHTS).stat().st_size
    assert report["ratio_vs_fp32"] == round(4 * n_params / report["disk_bytes"], 3)
    # the breakdown covers every tensor byte of the file (the rest is the safetensors header)
    total = sum(report["breakdown_mb"].values()) * 1e6
    assert abs(report["disk_bytes"] - total) < 0.01 * report["disk_bytes"] + 20_000
    # packed bits: one bit per weight for every quantized linear, padded to bytes per row
    packed = load_packed(tmp_path / "p")
    for m in packed.modules():
        if isinstance(m, PackedLinear):
            assert m.packed_weight.numel() == m.out_features * -(-m.in_features // 8)
    assert report["memory_bytes"] == module_bytes(packed)


def test_truncated_or_damaged_file_fails_clearly(make_bert, tmp_path):
    model = make_bert()
    quantize_(model, QuantConfig(w_bits=1))
    export_packed(model, tmp_path / "p")
    f = tmp_path / "p" / PACKED_WEIGHTS
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated|unreadable"):
        load_packed(tmp_path / "p")
    with pytest.raises(ModelError, match="truncated"):
        size_report(tmp_path / "p", in_memory=False)
    f.write_bytes(b"\x05")
    with pytest.raises(ModelError, match="truncated|unreadable"):
        load_packed(tmp_path / "p")


def test_wrong_format_version_is_refused(make_bert, tmp_path):
    model = make_bert()
    quantize_(model, QuantConfig(w_bits=1))
    export_packed(model, tmp_path / "p")
    meta_path = tmp_path / "p" / "kronbit.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ModelError, match="format_version 99 is not supported"):
        load_packed(tmp_path / "p")


def test_export_refuses_a_plain_model_and_keeps_an_old_export(make_bert, tmp_path):
    with pytest.raises(ModelError, match="nothing to pack"):
        export_packed(make_bert(), tmp_path / "p")
    model = make_bert()
    quantize_(model, QuantConfig(w_bits=1))
    export_packed(model, tmp_path / "p")
    before = (tmp_path / "p" / PACKED_WEIGHTS).read_bytes()
    with pytest.raises(ModelError, match="dtype='float8'"):
        export_packed(model, tmp_path / "p", dtype="float8")
    assert (tmp_path / "p" / PACKED_WEIGHTS).read_bytes() == before


def test_onnx_export_matches_torch(make_bert, tmp_path, tiny_bert):
    pytest.importorskip("onnxruntime")
    from transformers import AutoTokenizer

    from kronbit.formats.onnx import export_onnx

    model = make_bert()
    quantize_(model, QuantConfig(w_bits=1, a_bits=8, quantize_embeddings=True))
    export_packed(model, tmp_path / "p", tokenizer=AutoTokenizer.from_pretrained(tiny_bert))
    result = export_onnx(tmp_path / "p", tmp_path / "p" / "model.onnx", seq_len=16)
    assert result["max_abs_diff_vs_torch"] < 1e-5
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(tmp_path / "p" / "model.onnx")).graph
    dtypes = {numpy_helper.to_array(i).dtype.name for i in graph.initializer}
    assert "uint8" in dtypes  # the weights stay packed inside the ONNX file


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_bf16_path_is_close(make_bert, tmp_path, bits):
    from kronbit.quant import pack

    for b in (1, 2, 4):  # the byte tables give exactly the unpacked codes
        c = torch.randint(*pack.code_range(b), (3, 21), dtype=torch.int8)
        c = torch.where(c == 0, torch.ones_like(c), c) if b == 1 else c
        assert torch.equal(pack.unpack_codes_as(pack.pack_codes(c, b), b, 21, torch.bfloat16).float(), c.float())
    model = make_bert()
    quantize_(model, QuantConfig(w_bits=bits, a_bits=8))
    export_packed(model, tmp_path / "p")
    ids = _ids(shape=(4, 16))
    got = _logits(load_packed(tmp_path / "p", compute_dtype="bfloat16"), ids)
    # bf16 inputs and products: ~3 significant digits per layer
    torch.testing.assert_close(got, _logits(model, ids), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("bits", [1, 2, 8])
def test_quantized_kronecker_factors_train_and_export_exactly(make_gpt2, tmp_path, bits):
    from kronbit.quant import quant_state, set_bits_
    from kronbit.quant.kron_layers import QuantKroneckerLinear
    from kronbit.quant.size import estimate_size

    model = make_gpt2()
    kroneckerize_(model, {"compression": 2, "layers": "all"})
    dense_kron_bytes = estimate_size(model)["total_bytes"]
    quantize_(model, QuantConfig(w_bits=4, a_bits=8))
    qk = [m for m in model.modules() if isinstance(m, QuantKroneckerLinear)]
    assert qk and all(isinstance(m.a, torch.nn.Parameter) for m in qk)
    set_bits_(model, w_bits=bits, a_bits=8)  # the progressive schedule works on Kronecker factors too
    assert {s["w_bits"] for s in quant_state(model).values()} == {bits}
    # the factors get gradients through the fake quantizers
    ids = _ids(shape=(2, 16), vocab=100)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(m.a.grad is not None and m.b.grad is not None for m in qk)
    model.eval()
    want = _logits(model, ids)
    desc = export_packed(model, tmp_path / "qk")
    assert [t["kind"] for t in desc["transforms"]] == ["kron", "quant"]
    assert {v["kind"] for v in desc["packed"].values()} == {"kron_linear"}
    assert torch.equal(_logits(load_packed(tmp_path / "qk"), ids), want)
    assert estimate_size(model)["total_bytes"] < dense_kron_bytes


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=100, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _on_meta(model):
    return [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]


@pytest.mark.parametrize("arch", ["bert", "gpt2", "gpt2-kron-embedding", "llama"])
def test_packed_load_materialises_every_tensor(make_bert, make_gpt2, tmp_path, arch, monkeypatch):
    """The architecture is built with its parameters on the meta device; after loading nothing may
    be left there, the buffers the checkpoint does not hold (BERT's position_ids / token_type_ids,
    Llama's rotary inv_freq) must have their values, and a tied head must still be tied."""
    monkeypatch.setenv("KRONBIT_KERNEL_PATH", "off")  # bit-exact torch path (the kernels: test_kernels.py)
    model = {"bert": make_bert, "gpt2": make_gpt2, "gpt2-kron-embedding": make_gpt2, "llama": _tiny_llama}[arch]()
    if arch == "gpt2-kron-embedding":  # a KroneckerTiedHead reads the embedding's factors
        kroneckerize_(model, {"compression": 2, "layers": "all", "embeddings": True})
    quantize_(model, QuantConfig(w_bits=2, a_bits=8))  # auto: BERT quantizes its word embeddings, GPT-2 (tied head) keeps them fp32
    vocab = 25 if arch == "bert" else 100
    ids = _ids(shape=(2, 16), vocab=vocab)
    want = _logits(model, ids)
    export_packed(model, tmp_path / "p")
    loaded = load_packed(tmp_path / "p")
    assert _on_meta(loaded) == []
    source_buffers = dict(model.named_buffers())
    for name, b in loaded.named_buffers():
        if name in source_buffers:
            assert torch.equal(b, source_buffers[name]), name
    if arch == "bert":
        assert torch.equal(loaded.bert.embeddings.position_ids[0], torch.arange(64))
    if arch in ("gpt2", "llama"):
        assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    assert torch.equal(_logits(loaded, ids), want)


def test_packed_load_runs_no_weight_initialisation(make_bert, make_gpt2, tmp_path, monkeypatch):
    """Rebuilding the architecture must not allocate and randomly initialise the fp32 weights the
    checkpoint replaces: no random initialiser may write to a real (non-meta) tensor."""
    for name, make in (("bert", make_bert), ("gpt2", make_gpt2)):
        model = make()
        quantize_(model, QuantConfig(w_bits=1, a_bits=8, quantize_embeddings=True))
        export_packed(model, tmp_path / name)
    written = []
    for op in ("normal_", "uniform_"):  # what nn.init and Hugging Face's _init_weights end in
        def spy(t, *args, _op=getattr(torch.Tensor, op), **kwargs):
            if not t.is_meta:
                written.append(tuple(t.shape))
            return _op(t, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, op, spy)
    for name in ("bert", "gpt2"):
        assert _on_meta(load_packed(tmp_path / name)) == []
    assert written == []
