"""Fused binary FFN (quant.fused): the threshold-bits epilogue on every path is the comparison it
claims, and a packed W1A1 BERT with its FFNs fused gives bit-identical outputs to the same model
unfused (the up-projection's float output, GELU and the sign packing of the down-projection)."""

import pytest
import torch

from kronbit import QuantConfig, quantize_
from kronbit.formats.packed import export_packed, load_packed
from kronbit.quant import fused, kernels, pack
from kronbit.quant.packed import PackedLinear, select_kernels_
from kronbit.quant.quantizers import sign_pm1

if kernels.extension() is None:  # pragma: no cover - a machine without a compiler
    pytest.skip("the C++ kernels cannot be built here", allow_module_level=True)

BINARY_PATHS = ["portable", "avx2", "avx512"]
# Every tail of the avx512 tiles (1-5 tokens after tiles of 6) and both of its tiles (the one
# specialised for one epilogue on full runs of 32 outputs, the general one for the rest).
TILE_SHAPES = [(11, 130, 96), (10, 64, 32), (9, 70, 40), (8, 64, 30), (12, 700, 70)]


def _need(path):
    if path not in kernels.available_paths("binary"):
        pytest.skip(f"this CPU has no {path} binary path")


def _unpack(words, o):
    bits = (words.view(torch.uint8).unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.view(words.shape[0], -1)[:, :o].bool()


@pytest.mark.parametrize("path", BINARY_PATHS)
@pytest.mark.parametrize("t,k,o", [(1, 64, 8), (7, 200, 72), (13, 768, 136), (6, 300, 64)] + TILE_SHAPES)
def test_bits_epilogue_is_the_threshold_comparison_on_every_path(path, t, k, o):
    _need(path)
    gen = torch.Generator().manual_seed(t + k + o)
    w = torch.where(torch.rand(o, k, generator=gen) > 0.5, 1, -1).to(torch.int8)
    wp = kernels.prepare_binary(pack.pack_codes(w, 1), k, path)
    x, beta = torch.randn(t, k, generator=gen), 0.1 * torch.randn(k, generator=gen)
    act = kernels.pack_signs(x, beta, path=path)
    lo = torch.randint(-k, k // 2, (o,), generator=gen, dtype=torch.int32)
    hi = lo + torch.randint(0, k, (o,), generator=gen, dtype=torch.int32)
    lo[0], hi[0] = -fused.FAR, fused.FAR  # never on
    ext, p = kernels.extension(), kernels.PATHS[path]
    for mode, a, words in (("xor", sign_pm1(x - beta), act),
                           ("and", (x > 0.3).float(), kernels.pack_unsigned(x, 0.6))):
        d = (a @ w.float().t()).int()
        got = ext.binary_gemm_bits(words, k, {"xor": 0, "and": 1}[mode], wp, o, lo, hi, p)
        assert got.shape == (t, -(-o // 64)) and got.dtype == torch.int64
        assert torch.equal(_unpack(got, o), (d <= lo) | (d >= hi))
        tail = (got.view(torch.uint8).unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
        assert int(tail.view(t, -1)[:, o:].sum()) == 0  # zero past out_features, as pack_signs


def test_levels_are_the_epilogue_values():
    k, o = 50, 9
    alpha, s, b = torch.tensor(0.7), torch.rand(o), torch.randn(o)
    levels = kernels.extension().binary_levels(k, alpha, s, b, o)
    d = torch.arange(k, -k - 1, -2, dtype=torch.float32).unsqueeze(1)
    assert torch.equal(levels, d * (alpha * s) + b)


def _ffn_pair(act, k=40, o=70, seed=0):
    """A producer / consumer pair of packed W1A1 layers on the portable kernel."""
    torch.manual_seed(seed)
    from kronbit.quant.layers import QuantLinear
    up, down = (QuantLinear(i, j, config=QuantConfig(w_bits=1, a_bits=1)).eval() for i, j in ((k, o), (o, k)))
    with torch.no_grad():
        up(torch.randn(4, k))
        down(act(up(torch.randn(4, k))))
        down.input_quantizer.beta.normal_(-0.05, 0.05)
    pu, pd = PackedLinear.from_quant(up), PackedLinear.from_quant(down)
    assert pu.use_kernel("portable") and pd.use_kernel("portable")
    return pu, pd


@pytest.mark.parametrize("act", [torch.nn.GELU(), torch.nn.ReLU(), torch.nn.Tanh()])
def test_found_thresholds_give_the_unfused_bits(act):
    up, down = _ffn_pair(act)
    th = fused.find_thresholds(up, act, down)
    assert th is not None
    x = torch.randn(300, up.in_features, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = kernels.pack_signs(act(up(x)), down.input_quantizer.beta, path="portable")
        got = fused.BitsFusion(act, down).forward(up, x)
        assert torch.equal(got, want)
        assert torch.equal(down(got), down(act(up(x))))  # the consumer on packed bits = on floats


def test_an_activation_crossing_a_threshold_three_times_stays_unfused():
    class Wave(torch.nn.Module):  # not monotone between crossings: sin(40 x) - beta changes sign often
        def forward(self, x):
            return torch.sin(40 * x)
    up, down = _ffn_pair(Wave())
    assert fused.find_thresholds(up, Wave(), down) is None
    fusion = fused.BitsFusion(Wave(), down)
    assert fusion.forward(up, torch.randn(3, up.in_features)) is None  # the unfused path runs


def _w1a1_bert(make_bert, tmp_path):
    model = make_bert(seed=3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and "LayerNorm" not in name:
                p.normal_(0, 0.02)
    quantize_(model, QuantConfig(w_bits=1, a_bits=1, quantize_embeddings=True))
    with torch.no_grad():
        model(input_ids=torch.randint(0, 25, (4, 12), generator=torch.Generator().manual_seed(0)))
    export_packed(model, tmp_path / "p")
    return load_packed(tmp_path / "p")


def _logits_without(model, ids, attr: str):
    """Logits with every PackedLinear's ``attr`` plan (``fused_next`` / ``sign_output``) set aside."""
    layers = [m for m in model.modules() if isinstance(m, PackedLinear) and getattr(m, attr) is not None]
    saved = [getattr(m, attr) for m in layers]
    for m in layers:
        setattr(m, attr, None)
    try:
        return model(input_ids=ids).logits
    finally:
        for m, plan in zip(layers, saved):
            setattr(m, attr, plan)


def _logits_unfused(model, ids):
    return _logits_without(model, ids, "fused_next")


@pytest.mark.parametrize("path", BINARY_PATHS)
def test_fused_bert_is_bit_identical_to_unfused_on_every_path(make_bert, tmp_path, path):
    _need(path)
    packed = _w1a1_bert(make_bert, tmp_path)
    keys = set(packed.state_dict())
    select_kernels_(packed, path)
    layers = packed.bert.encoder.layer
    assert all(isinstance(l.intermediate.intermediate_act_fn, fused.PassBits) for l in layers)
    assert all(l.intermediate.dense.fused_next is not None for l in layers)
    assert set(packed.state_dict()) == keys  # fusion adds no tensor
    ids = torch.randint(0, 25, (3, 11), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = packed(input_ids=ids).logits
        assert torch.equal(got, _logits_unfused(packed, ids))
        th = [l.intermediate.dense.fused_next._th[1] for l in layers]
        assert all(t is not None for t in th)  # really fused, not fallen back
        layers[0].output.dense.input_quantizer.beta.add_(0.01)  # a changed threshold: found again
        moved = packed(input_ids=ids).logits
        assert layers[0].intermediate.dense.fused_next._th[1] is not th[0]
        assert torch.equal(moved, _logits_unfused(packed, ids))


def test_fusion_is_wired_on_load_and_reloads_exactly(make_bert, tmp_path):
    packed = _w1a1_bert(make_bert, tmp_path)
    assert all(l.intermediate.dense.fused_next is not None for l in packed.bert.encoder.layer)
    ids = torch.randint(0, 25, (2, 9), generator=torch.Generator().manual_seed(1))
    fresh = load_packed(tmp_path / "p")
    fresh.load_state_dict(packed.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, packed(input_ids=ids).logits)
    with torch.no_grad():
        for layer in packed.bert.encoder.layer:  # a consumer off its kernel: the producer emits floats
            layer.output.dense.drop_kernel()
        assert torch.equal(packed(input_ids=ids).logits, _logits_unfused(packed, ids))
    assert fused.fuse_ffn_(packed) == 0  # and re-wiring unwires the pairs
    assert all(l.intermediate.dense.fused_next is None for l in packed.bert.encoder.layer)


def test_w2a8_ffn_in_the_workspace_is_bit_identical(make_bert, tmp_path):
    model = make_bert(seed=3)
    quantize_(model, QuantConfig(w_bits=2, a_bits=8, quantize_embeddings=True))
    export_packed(model, tmp_path / "p")
    packed = load_packed(tmp_path / "p")
    layers = packed.bert.encoder.layer
    assert all(isinstance(l.intermediate.dense.fused_next, fused.WorkspaceFusion) for l in layers)
    ids = torch.randint(0, 25, (3, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = packed(input_ids=ids).logits
        assert torch.equal(got, _logits_unfused(packed, ids))
        seen = []  # a hook on the block's intermediate output: that tensor must stay its own
        h = layers[0].intermediate.register_forward_hook(lambda m, i, o: seen.append(o))
        assert torch.equal(packed(input_ids=ids).logits, got)
        h.remove()
        assert seen[0].data_ptr() != fused.workspace(1).data_ptr()


def test_the_workspace_survives_switching_inference_mode(make_bert, tmp_path):
    """A buffer first made under torch.inference_mode is an inference tensor; the next forward
    outside it (no_grad) must not write into that one (torch forbids it), and both agree."""
    model = make_bert(seed=5)
    quantize_(model, QuantConfig(w_bits=2, a_bits=8, quantize_embeddings=True))
    export_packed(model, tmp_path / "p")
    packed = load_packed(tmp_path / "p")
    ids = torch.randint(0, 25, (2, 9), generator=torch.Generator().manual_seed(6))
    fused._WORKSPACE.__dict__.clear()
    with torch.inference_mode():
        a = packed(input_ids=ids).logits.clone()
    with torch.no_grad():
        b = packed(input_ids=ids).logits
    with torch.inference_mode():
        c = packed(input_ids=ids).logits
    assert torch.equal(a, b) and torch.equal(b, c)


def test_selecting_off_takes_every_layer_off_its_kernel(make_bert, tmp_path):
    packed = _w1a1_bert(make_bert, tmp_path)
    linears = [m for m in packed.modules() if isinstance(m, PackedLinear)]
    if not any(m.kernel is not None for m in linears):
        pytest.skip("no bit-level kernel on this machine")
    ids = torch.randint(0, 25, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        on_kernel = packed(input_ids=ids).logits
    state = {k: v.clone() for k, v in packed.state_dict().items()}
    assert select_kernels_(packed, "off") == {}
    assert all(m.kernel is None for m in linears)
    assert all(m.fused_next is None for m in linears)
    assert all(m.packed_weight.dtype == torch.uint8 for m in linears)  # back in the file's layout
    assert all(torch.equal(v, state[k]) for k, v in packed.state_dict().items())
    with torch.no_grad():
        off = packed(input_ids=ids).logits
    assert ((off - on_kernel).abs().max() / on_kernel.abs().max()) < 1e-5
    fresh = load_packed(tmp_path / "p")
    select_kernels_(fresh, "off")
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, off)


def test_true_w1a1_ffn_fuses_into_the_unsigned_binarizer_bit_for_bit(make_bert, tmp_path):
    """With ffn_act_quantizer: elastic_unsigned the up-projection emits the {0, α} binarizer's bits
    (thresholds through GELU and the unsigned packing) and the down-projection takes them on the
    AND kernel: the same logits as unfused, on every binary path."""
    model = make_bert(seed=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and "LayerNorm" not in name:
                p.normal_(0, 0.02)
    quantize_(model, QuantConfig(w_bits=1, a_bits=1, quantize_embeddings=True, ffn_act_quantizer="elastic_unsigned"))
    ids = torch.randint(0, 25, (3, 11), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        model(input_ids=ids)
        for layer in model.bert.encoder.layer:  # an offset, as training leaves it
            layer.output.dense.input_quantizer.beta.normal_(0, 0.02)
        want = model(input_ids=ids).logits
    export_packed(model, tmp_path / "p")
    packed = load_packed(tmp_path / "p")
    layers = packed.bert.encoder.layer
    if layers[0].output.dense.kernel is None:
        pytest.skip("no bit-level kernel on this machine")
    for path in kernels.available_paths("binary"):
        select_kernels_(packed, path)
        assert all(l.output.dense.kernel.unsigned and l.intermediate.dense.fused_next is not None for l in layers)
        with torch.no_grad():
            got = packed(input_ids=ids).logits
            assert torch.equal(got, _logits_unfused(packed, ids)), path
            assert all(l.intermediate.dense.fused_next._th[1] is not None for l in layers)
        assert ((got - want).abs().max() / want.abs().max()) < 1e-5


@pytest.mark.parametrize("path", BINARY_PATHS)
@pytest.mark.parametrize("t,k,o", [(1, 64, 8), (7, 200, 72), (13, 768, 136)] + TILE_SHAPES)
def test_sign_epilogue_writes_plus_minus_scale_by_the_thresholds_on_every_path(path, t, k, o):
    _need(path)
    gen = torch.Generator().manual_seed(t + k + o)
    w = torch.where(torch.rand(o, k, generator=gen) > 0.5, 1, -1).to(torch.int8)
    wp = kernels.prepare_binary(pack.pack_codes(w, 1), k, path)
    x, beta = torch.randn(t, k, generator=gen), 0.1 * torch.randn(k, generator=gen)
    lo = torch.randint(-k, k // 2, (o,), generator=gen, dtype=torch.int32)
    hi = lo + torch.randint(0, k, (o,), generator=gen, dtype=torch.int32)
    d = (sign_pm1(x - beta) @ w.float().t()).int()
    got = kernels.extension().binary_linear_pm(x, beta, wp, o, lo, hi, 0.37, kernels.PATHS[path])
    assert torch.equal(got, torch.where((d <= lo) | (d >= hi), 0.37, -0.37))
    signs = kernels.extension().binary_linear_signs(x, beta, wp, o, lo, hi, kernels.PATHS[path])
    assert signs.dtype == torch.uint8 and torch.equal(signs, ((d <= lo) | (d >= hi)).to(torch.uint8))


def _true_w1a1_bert(make_bert, tmp_path):
    """A packed W1A1 BERT with BiT's binary attention: Q, K, V through the signed binarizer."""
    model = make_bert(seed=4)
    quantize_(model, QuantConfig(w_bits=1, a_bits=1, quantize_embeddings=True, attention="binary",
                                 ffn_act_quantizer="elastic_unsigned"))
    with torch.no_grad():
        model(input_ids=torch.randint(0, 25, (4, 12), generator=torch.Generator().manual_seed(0)))
        for layer in model.bert.encoder.layer:  # offsets away from zero, as training leaves them
            for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                lin.output_quantizer.beta.normal_(0, 0.05)
    export_packed(model, tmp_path / "p")
    return load_packed(tmp_path / "p")


def _logits_signs_in_torch(model, ids):
    return _logits_without(model, ids, "sign_output")


@pytest.mark.parametrize("path", BINARY_PATHS)
def test_qkv_signs_in_the_epilogue_are_bit_identical_on_every_path(make_bert, tmp_path, path):
    _need(path)
    packed = _true_w1a1_bert(make_bert, tmp_path)
    select_kernels_(packed, path)
    qkv = [getattr(l.attention.self, n) for l in packed.bert.encoder.layer for n in ("query", "key", "value")]
    assert all(m.sign_output is not None for m in qkv)
    others = [m for m in packed.modules() if isinstance(m, PackedLinear) and m not in qkv]
    assert all(m.sign_output is None for m in others)  # no output binarizer there
    ids = torch.randint(0, 25, (3, 11), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        got = packed(input_ids=ids).logits
        assert all(m.sign_output._th[1] is not None for m in qkv)  # really in the epilogue
        assert torch.equal(got, _logits_signs_in_torch(packed, ids))
        # the projections hand the one-pass attention sign bytes; their values are the binarizer's ±α
        assert all(m.sign_output.as_bytes for m in qkv)
        x = torch.randn(2, 5, qkv[0].in_features)
        y = qkv[0](x)
        want = qkv[0].output_quantizer(qkv[0].kernel.forward(qkv[0], x))
        alpha = float(qkv[0].output_quantizer.alpha.clamp_min(1e-8))
        assert y.dtype == torch.uint8 and torch.equal(torch.where(y != 0, alpha, -alpha), want)
        qkv[0].sign_output.as_bytes = False  # the ±α epilogue
        assert torch.equal(qkv[0](x), want)
        qkv[0].sign_output.as_bytes = True
        qkv[0].output_quantizer.beta.add_(0.02)  # a changed offset: the thresholds are found again
        th = qkv[0].sign_output._th[1]
        assert torch.equal(packed(input_ids=ids).logits, _logits_signs_in_torch(packed, ids))
        assert qkv[0].sign_output._th[1] is not th
    select_kernels_(packed, "off")
    assert all(m.sign_output is None for m in qkv)
