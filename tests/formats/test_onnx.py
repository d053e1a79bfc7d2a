"""ONNX export for every bit setting kronbit trains: the graph runs in onnxruntime and computes
what the packed torch model computes; a failed export is one line and leaves no half-written file."""

import numpy as np
import pytest
import torch

from kronbit import KroneckerConfig, QuantConfig, kroneckerize_, quantize_
from kronbit.core.errors import ModelError
from kronbit.formats.onnx import export_onnx
from kronbit.formats.packed import export_packed, load_packed
from kronbit.quant import quantizers

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def _torch_path(monkeypatch):
    """The graph is the dequantized arithmetic, so compare with the packed model's torch path: the
    bit-level kernels round differently, and these random-init models' all-zero biases make exact
    zero pre-activations whose next sign flips between the two (see tests/quant/test_kernels.py)."""
    monkeypatch.setenv("KRONBIT_KERNEL_PATH", "off")

SETTINGS = {
    "W1A1": dict(w_bits=1, a_bits=1),
    "W1A8": dict(w_bits=1, a_bits=8),
    "W2A8": dict(w_bits=2, a_bits=8),
    "W4A32": dict(w_bits=4, a_bits=32),
    "W8A8": dict(w_bits=8, a_bits=8),
}


def _packed(make_bert, calibrate, tiny_bert, out, kron: bool = False, **bits):
    from transformers import AutoTokenizer

    model = make_bert()
    if kron:
        kroneckerize_(model, KroneckerConfig(compression=2))
    quantize_(model, QuantConfig(quantize_embeddings=True, **bits))
    export_packed(calibrate(model), out, tokenizer=AutoTokenizer.from_pretrained(tiny_bert))
    return out


def _ort_equals_torch(packed_dir, onnx_path):
    """A batch other than the trace's (other batch size and length: the axes are dynamic)."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ids = torch.randint(5, 29, (3, 11), generator=torch.Generator().manual_seed(7))
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, {n: feeds[n].numpy() for n in names})[0]
    with torch.no_grad():
        want = load_packed(packed_dir)(**{n: feeds[n] for n in names}).logits.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_every_bit_setting_exports_and_runs(make_bert, calibrate, tiny_bert, tmp_path, setting):
    d = _packed(make_bert, calibrate, tiny_bert, tmp_path / "p", **SETTINGS[setting])
    result = export_onnx(d, d / "model.onnx", seq_len=16)
    assert result["max_abs_diff_vs_torch"] < 1e-5
    _ort_equals_torch(d, d / "model.onnx")


@pytest.mark.parametrize("bits", [dict(w_bits=1, a_bits=1), dict(w_bits=1, a_bits=8), dict(w_bits=2, a_bits=8)],
                         ids=["W1A1", "W1A8", "W2A8"])
def test_quantized_kronecker_exports_and_runs(make_bert, calibrate, tiny_bert, tmp_path, bits):
    d = _packed(make_bert, calibrate, tiny_bert, tmp_path / "p", kron=True, **bits)
    assert "kron_linear" in {v["kind"] for v in load_packed(d).kronbit_packed.values()}
    result = export_onnx(d, d / "model.onnx", seq_len=16)
    assert result["max_abs_diff_vs_torch"] < 1e-5
    if bits["a_bits"] > 1:
        # With binary activations on a new batch, onnxruntime's other order of the Kronecker
        # GEMMs' float additions (~1e-7) can flip the sign of an activation near zero; the trace
        # batch above is the exact check there.
        _ort_equals_torch(d, d / "model.onnx")


def test_binary_activations_in_the_graph_keep_the_sign_of_zero():
    """The exported elastic binarizer gives what copysign gives, -0 → -α included."""
    from kronbit.quant.ste import elastic_binary

    class Bin(torch.nn.Module):
        def forward(self, u):
            return elastic_binary(u, torch.tensor(0.75), 1.0)

    import io

    u = torch.tensor([[0.0, -0.0, 1e-30, -1e-30, 2.0, -3.0, float("inf"), float("-inf")]])
    buf = io.BytesIO()
    torch.onnx.export(Bin(), (u,), buf, opset_version=18, dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: u.numpy()})[0]
    assert np.array_equal(got, torch.copysign(torch.tensor(0.75), u).numpy())


def test_a_failed_export_is_one_line_and_keeps_the_previous_file(make_bert, calibrate, tiny_bert, tmp_path,
                                                                  monkeypatch):
    d = _packed(make_bert, calibrate, tiny_bert, tmp_path / "p", w_bits=1, a_bits=1)
    onnx_path = d / "model.onnx"
    # The binarizer as it was before its export form: copysign, which ONNX has no operator for.
    monkeypatch.setattr(quantizers, "elastic_binary", lambda u, a, g: torch.copysign(a, u))
    with pytest.raises(ModelError, match="aten::copysign") as e:
        export_onnx(d, onnx_path, seq_len=16)
    assert "\n" not in str(e.value) and "was not written" in str(e.value)
    assert not onnx_path.exists()
    monkeypatch.undo()
    export_onnx(d, onnx_path, seq_len=16)
    before = onnx_path.read_bytes()
    monkeypatch.setattr(quantizers, "elastic_binary", lambda u, a, g: torch.copysign(a, u))
    with pytest.raises(ModelError):
        export_onnx(d, onnx_path, seq_len=16)
    assert onnx_path.read_bytes() == before
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == []  # no temp file left
