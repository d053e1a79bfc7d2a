"""Bit-level kernels: every code path gives the exact integer products (so bit-identical outputs),
bits and int8 codes are the quantizers' own, packed layers and models match fake-quant, and a
machine without a compiler falls back with one warning line."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from kronbit import QuantConfig, quantize_
from kronbit.core.errors import ConfigError
from kronbit.formats.packed import export_packed, load_packed
from kronbit.formats.size import module_bytes
from kronbit.quant import kernels, pack
from kronbit.quant.layers import QuantLinear
from kronbit.quant.packed import PackedLinear
from kronbit.quant.quantizers import BWNWeight, ElasticAct, ElasticUnsignedAct, MinMaxAct, sign_pm1

if kernels.extension() is None:  # pragma: no cover - a machine without a compiler
    pytest.skip("the C++ kernels cannot be built here (the fallback is tested below)", allow_module_level=True)

BINARY_PATHS = ["portable", "avx2", "avx512"]
TERNARY_PATHS = ["portable", "avx2", "avxvnni", "avx512"]
SHAPES = [(1, 64, 8), (7, 200, 72), (13, 768, 136), (6, 3072, 64)]  # (tokens, in, out): tails, flushes
# The avx512 binary kernel's tiles: 6 tokens by 32 outputs, then one tile of the 1-5 tokens left;
# full runs of 32 outputs take a kernel specialised for the epilogue, the rest (a lone block, one
# ending past out_features) the general tile. These shapes reach every one of those.
TILE_SHAPES = [(11, 130, 96), (10, 64, 32), (9, 70, 40), (8, 64, 30), (12, 700, 70)]


def _need(path, kind):
    if path not in kernels.available_paths(kind):
        pytest.skip(f"this CPU has no {path} {kind} path")


def _rand_pm1(shape, gen):
    return torch.where(torch.rand(shape, generator=gen) > 0.5, 1, -1).to(torch.int8)


@pytest.mark.parametrize("path", BINARY_PATHS)
@pytest.mark.parametrize("t,k,o", SHAPES + TILE_SHAPES)
def test_binary_gemm_is_the_integer_product_on_every_path(path, t, k, o):
    _need(path, "binary")
    gen = torch.Generator().manual_seed(k + o)
    w = _rand_pm1((o, k), gen)
    x, beta = torch.randn(t, k, generator=gen), 0.1 * torch.randn(k, generator=gen)
    wp = kernels.prepare_binary(pack.pack_codes(w, 1), k, path)
    a = sign_pm1(x - beta)
    act = kernels.pack_signs(x, beta, path=path)
    assert torch.equal(kernels.binary_gemm(act, k, wp, o, path=path), (a @ w.float().t()).int())
    u = (torch.rand(t, k, generator=gen) > 0.7).float()  # {0, 1} activations: AND-popcount
    d_and = kernels.binary_gemm(kernels.pack_unsigned(u, 1.0), k, wp, o, mode="and", path=path)
    assert torch.equal(d_and, (u @ w.float().t()).int())
    v, b = torch.rand(o, generator=gen), torch.randn(o, generator=gen)
    y = kernels.binary_gemm(act, k, wp, o, v=v, bias=b, path=path)
    ref = kernels.binary_gemm(kernels.pack_signs(x, beta, path="portable"), k,
                              kernels.prepare_binary(pack.pack_codes(w, 1), k, "portable"), o, v=v, bias=b,
                              path="portable")
    assert torch.equal(y, ref)  # the float epilogue rounds identically on every path
    assert torch.equal(y, (a @ w.float().t()) * v + b)  # = fl(fl(v·D) + b), D exact in float32


@pytest.mark.parametrize("path", TERNARY_PATHS)
@pytest.mark.parametrize("t,k,o", SHAPES)
def test_ternary_gemm_is_the_integer_product_on_every_path(path, t, k, o):
    _need(path, "ternary")
    gen = torch.Generator().manual_seed(k * o)
    c = torch.randint(-2, 2, (o, k), generator=gen, dtype=torch.int8)  # any 2-bit code, -2 included
    x = 3 * torch.randn(t, k, generator=gen)
    q, sq, s = kernels.quantize_int8(x, path=path)
    qk = q[:, :k]
    assert torch.equal(sq, qk.int().sum(1)) and bool((q[:, k:] == 0).all())
    wp = kernels.ternary_chunks(pack.pack_codes(c, 2), k)
    d = kernels.ternary_gemm(q, sq, wp, o, path=path)
    assert torch.equal(d, (qk.double() @ c.double().t()).int())
    v, b = torch.rand(o, generator=gen), torch.randn(o, generator=gen)
    y = kernels.ternary_gemm(q, sq, wp, o, v=v, bias=b, path=path)
    assert torch.equal(y, d.float() * v + b)


@pytest.mark.parametrize("path", TERNARY_PATHS)
@pytest.mark.parametrize("clip_ratio,clip_val", [(1.0, None), (0.9, None), (1.0, 2.5)])
def test_int8_codes_are_minmax_act_codes(path, clip_ratio, clip_val):
    _need(path, "ternary")
    x = 2 * torch.randn(9, 100, generator=torch.Generator().manual_seed(1))
    x[0, :4] = torch.tensor([0.0, -0.0, 1e-30, -5.0])
    quant = MinMaxAct(8, clip_ratio=clip_ratio, clip_val=clip_val)
    q, _, s = kernels.quantize_int8(x, clip_ratio, clip_val, path=path)
    assert torch.equal(q[:, :100].float() * s, quant(x))  # same codes, same scale: same values
    half = x.clone()  # exact halves round to even, as torch.round
    half[1, :6] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 126.5]) * s
    q2, _, s2 = kernels.quantize_int8(half, clip_ratio, clip_val, path=path)
    assert torch.equal(q2[:, :100].float() * s2, quant(half))


@pytest.mark.parametrize("path", BINARY_PATHS)
def test_sign_bits_follow_the_quantizers(path):
    _need(path, "binary")
    x = torch.randn(3, 130)
    x[0, :6] = torch.tensor([0.0, -0.0, 1.0, -1.0, 0.25, 7.0])
    beta = torch.zeros(130)
    beta[2], beta[4], beta[5] = 1.0, 0.25, 7.0  # x == beta: +0, a +1
    bits = kernels.pack_signs(x, beta, path=path)
    unpacked = ((bits.view(torch.uint8).unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1).view(3, -1)[:, :130]
    assert torch.equal(unpacked.float() * 2 - 1, sign_pm1(x - beta))
    scalar = kernels.pack_signs(x, torch.tensor(0.3), path=path)
    assert torch.equal(scalar, kernels.pack_signs(x, torch.full((130,), 0.3), path=path))
    un = ElasticUnsignedAct(1)
    un.initialized.fill_(True)
    un.alpha.data.fill_(0.4)
    p = torch.rand(3, 130)
    p[0, :3] = torch.tensor([0.2, 0.20000001, 0.0])  # 0.2 / 0.4 = 0.5 rounds to 0
    ub = kernels.pack_unsigned(p, 0.4, path=path)
    got = ((ub.view(torch.uint8).unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1).view(3, -1)[:, :130]
    assert torch.equal(got.float() * 0.4, un(p))
    off = ElasticUnsignedAct(1, features=130)  # with a per-feature offset, as the FFN binarizer
    off.initialized.fill_(True)
    off.alpha.data.fill_(0.4)
    off.beta.data.normal_(0, 0.1)
    ub = kernels.pack_unsigned(p, 0.4, off.beta, path=path)
    got = ((ub.view(torch.uint8).unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1).view(3, -1)[:, :130]
    assert torch.equal(got.float() * 0.4, off(p))


@pytest.mark.parametrize("o,k", [(8, 64), (72, 200), (130, 3), (64, 1000)])
def test_weight_layouts_round_trip(o, k):
    gen = torch.Generator().manual_seed(o + k)
    b1 = pack.pack_codes(_rand_pm1((o, k), gen), 1)
    assert torch.equal(kernels.binary_words_inverse(kernels.binary_words(b1, k), o, k), b1)
    assert torch.equal(kernels.binary_nibbles_inverse(kernels.binary_nibbles(b1, k), o, k), b1)
    b2 = pack.pack_codes(torch.randint(-2, 2, (o, k), generator=gen, dtype=torch.int8), 2)
    assert torch.equal(kernels.ternary_chunks_inverse(kernels.ternary_chunks(b2, k), o, k), b2)


def _quant_linear(w_bits, a_bits, k=96, o=40, seed=0):
    torch.manual_seed(seed)
    q = QuantLinear(k, o, config=QuantConfig(w_bits=w_bits, a_bits=a_bits)).eval()
    x = torch.randn(5, 7, k)
    with torch.no_grad():
        q(x)  # the elastic binarizer initialises its scale from the first batch
        if w_bits == 1:
            q.input_quantizer.beta.normal_(0, 0.1)
    return q, x


@pytest.mark.parametrize("w_bits,a_bits,kind", [(1, 1, "binary"), (2, 8, "ternary")])
def test_packed_layer_on_each_path_matches_fake_quant(w_bits, a_bits, kind):
    q, x = _quant_linear(w_bits, a_bits)
    with torch.no_grad():
        want = q(x)
        outs = []
        for path in kernels.available_paths(kind):
            m = PackedLinear.from_quant(q)
            before = m.packed_weight.clone()
            assert m.use_kernel(path) and m.kernel.path_name == path
            outs.append(m(x))
            assert torch.equal(m.state_dict()["packed_weight"], before)  # saved in the file's layout
            assert torch.equal(m.codes(), q.quantized_weight()[0])
    assert len(outs) >= 2 and all(torch.equal(outs[0], y) for y in outs)
    assert ((outs[0] - want).abs().max() / want.abs().max()) < 1e-6


@pytest.mark.parametrize("w_bits,a_bits", [(1, 1), (2, 8)])
def test_a_layer_built_under_inference_mode_runs_and_sees_in_place_changes(w_bits, a_bits):
    # Inference tensors have no version counter: the layer's cached operands (scales, offsets)
    # are rebuilt on every call for them, so a change made in place inside inference mode counts.
    def close(a, b):
        return float((a - b).abs().max() / b.abs().max()) < 1e-5

    with torch.inference_mode():
        q, x = _quant_linear(w_bits, a_bits)
        m = PackedLinear.from_quant(q)
        assert m.use_kernel(kernels.best_path("binary" if w_bits == 1 else "ternary"))
        assert close(m(x), q(x))
        if w_bits == 1:  # the elastic binarizer's offset, moved in place in both
            before = m(x)
            for quantizer in (m.input_quantizer, q.input_quantizer):
                quantizer.beta.add_(0.3)
            assert close(m(x), q(x)) and not torch.equal(m(x), before)


def test_two_threads_give_the_same_output():
    q, x = _quant_linear(1, 1, k=256, o=520)
    m = PackedLinear.from_quant(q)
    assert m.use_kernel()
    with torch.no_grad():
        one = m(x)
        torch.set_num_threads(2)
        two = m(x)
    assert torch.equal(one, two)


def _bert_with_biases(make_bert, w_bits, a_bits):
    """Trained models have non-zero biases. With BERT's zero-initialised ones, an exact D = 0 gives
    h = +0 on the kernel while the float BLAS gives ±1e-9, and the next binarizer (sign of a GELU
    output) flips: a real difference between exact and rounded arithmetic, not a kernel error."""
    model = make_bert(seed=3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and "LayerNorm" not in name:
                p.normal_(0, 0.02)
    quantize_(model, QuantConfig(w_bits=w_bits, a_bits=a_bits, quantize_embeddings=True))
    return model


@pytest.mark.parametrize("w_bits,a_bits", [(1, 1), (2, 8)])
def test_packed_model_on_kernels_matches_fake_quant(make_bert, tmp_path, w_bits, a_bits, monkeypatch):
    model = _bert_with_biases(make_bert, w_bits, a_bits)
    ids = torch.randint(0, 25, (4, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(input_ids=ids)
        want = model(input_ids=ids).logits
    export_packed(model, tmp_path / "p")
    packed = load_packed(tmp_path / "p")
    on_kernel = [m for m in packed.modules() if isinstance(m, PackedLinear) and m.kernel is not None]
    assert len(on_kernel) == sum(isinstance(m, PackedLinear) for m in packed.modules()) > 0
    with torch.no_grad():
        got = packed(input_ids=ids).logits
    assert ((got - want).abs().max() / want.abs().max()) < 1e-5
    fresh = load_packed(tmp_path / "p")  # the kernel model's state dict is in the file's layout
    fresh.load_state_dict(packed.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, got)
    # the kernel layout replaces the file's (no second copy); it only pads rows to whole blocks
    # (in bytes: the AVX-512 and portable layouts hold int64 words, the file uint8)
    padding = sum(m.packed_weight.numel() * m.packed_weight.element_size()
                  - m.standard_packed().numel() * m.standard_packed().element_size() for m in on_kernel)
    monkeypatch.setenv(kernels.ENV_PATH, "off")
    assert module_bytes(packed) == module_bytes(load_packed(tmp_path / "p")) + padding


def test_forcing_a_path(monkeypatch):
    q, _ = _quant_linear(1, 1)
    monkeypatch.setenv(kernels.ENV_PATH, "portable")
    m = PackedLinear.from_quant(q)
    assert m.use_kernel() and m.kernel.path_name == "portable"
    monkeypatch.setenv(kernels.ENV_PATH, "off")
    assert not PackedLinear.from_quant(q).use_kernel()
    monkeypatch.setenv(kernels.ENV_PATH, "sse9")
    with pytest.raises(ConfigError, match="sse9"):
        PackedLinear.from_quant(q).use_kernel()
    missing = [p for p in BINARY_PATHS if p not in kernels.available_paths("binary")]
    if missing:
        monkeypatch.setenv(kernels.ENV_PATH, missing[0])
        with pytest.raises(ConfigError, match="not available"):
            PackedLinear.from_quant(q).use_kernel()


def test_layers_without_a_kernel_keep_their_path():
    q, _ = _quant_linear(4, 8)  # 4-bit weights: no bit-level kernel
    assert not PackedLinear.from_quant(q).use_kernel()
    q2 = QuantLinear(32, 8, config=QuantConfig(w_bits=2, a_bits=8, act_symmetric=False))
    assert not PackedLinear.from_quant(q2).use_kernel()  # asymmetric activations


FALLBACK = textwrap.dedent("""
    import logging, sys, torch
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    from kronbit.formats.packed import load_packed
    from kronbit.quant.packed import PackedLinear
    ids = torch.randint(0, 25, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = load_packed(sys.argv[1])(input_ids=ids).logits
        want = load_packed(sys.argv[1], mode="dequantized")(input_ids=ids).logits
    m = load_packed(sys.argv[1])
    print(sum(x.kernel is not None for x in m.modules() if isinstance(x, PackedLinear)), torch.equal(got, want))
""")


@pytest.mark.parametrize("how", ["no_compiler", "switch"])
def test_without_a_compiler_the_torch_path_runs_with_one_warning(make_bert, tmp_path, how):
    model = make_bert()
    quantize_(model, QuantConfig(w_bits=1, a_bits=1))
    with torch.no_grad():
        model(input_ids=torch.ones(1, 4, dtype=torch.long))
    export_packed(model, tmp_path / "p")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    if how == "no_compiler":  # a fresh build directory, and a compiler that does not exist
        env.update(CXX=str(tmp_path / "no-such-compiler"), TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    else:
        env["KRONBIT_NO_EXTENSION"] = "1"
    out = subprocess.run([sys.executable, "-c", FALLBACK, str(tmp_path / "p")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0", "True"]  # no kernel, and the exact torch path
    warnings = [line for line in out.stderr.splitlines() if "kernels not built" in line]
    assert len(warnings) == (1 if how == "no_compiler" else 0), out.stderr[-2000:]


@pytest.mark.parametrize("offset", [True, False])
def test_unsigned_binary_input_runs_on_the_and_kernel_on_each_path(offset):
    """BiT's {0, α} binarizer on a layer's input (the FFN down-projection of a true W1A1 model):
    AND-popcount, the same output on every path, the fake-quant output to float32 rounding."""
    from kronbit.quant.quantizers import ElasticUnsignedAct

    torch.manual_seed(1)
    q = QuantLinear(200, 72, config=QuantConfig(w_bits=1, a_bits=1)).eval()
    q.input_quantizer = ElasticUnsignedAct(1, features=200 if offset else None, offset=offset)
    x = torch.nn.functional.gelu(torch.randn(3, 9, 200))
    with torch.no_grad():
        q(x)  # initialises α from the first batch
        if offset:
            q.input_quantizer.beta.normal_(0, 0.05)
        want = q(x)
        outs = {}
        for path in kernels.available_paths("binary"):
            m = PackedLinear.from_quant(q)
            assert m.use_kernel(path) and m.kernel.unsigned
            outs[path] = m(x)
            bits = kernels.pack_unsigned(x.reshape(-1, 200), float(q.input_quantizer.alpha),
                                         q.input_quantizer.beta)
            words = m(bits.view(3, 9, -1))  # the fused path's input: the bits already packed
            assert torch.equal(words, outs[path])
    first = next(iter(outs.values()))
    assert len(outs) >= 2 and all(torch.equal(first, y) for y in outs.values())
    assert ((first - want).abs().max() / want.abs().max()) < 1e-6
