"""BiT's binarized attention (quant.attention: binary) and the unsigned FFN binarizer on tiny
random-init BERT and RoBERTa: what the matmuls see, gradients, checkpoints and packed reloads."""

import json

import pytest
import torch
from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, RobertaConfig,
                          RobertaForSequenceClassification, TrainingArguments)

from kronbit.core.errors import ConfigError, ModelError
from kronbit.core.transforms import recorded_transforms
from kronbit.distill.attention import NAME as KRONBIT_ATTENTION
from kronbit.distill.attention import PROB_QUANTIZER, record_attention_scores
from kronbit.distill.losses import KDConfig
from kronbit.distill.trainer import DistillationTrainer
from kronbit.formats import export_packed, load_model, load_packed, save_compressed, size_report
from kronbit.formats.compressed import WEIGHTS_NAME
from kronbit.formats.meta import KRONBIT_META
from kronbit.formats.onnx import export_onnx
from kronbit.quant import QuantConfig, dequantize_, quantize_, set_bits_
from kronbit.quant.api import attention_mode, check_quant_options
from kronbit.quant.attention import active_binary_attention, binary_attention_modules
from kronbit.quant.quantizers import ElasticAct, ElasticUnsignedAct
from kronbit.quant.size import estimate_size

KINDS = ["bert", "roberta"]
W1A1 = dict(w_bits=1, a_bits=1, quantize_embeddings=True, attention="binary", ffn_act_quantizer="elastic_unsigned")


def _model(kind: str, seed: int = 0, dropout: float = 0.1):
    torch.manual_seed(seed)
    common = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(max_position_embeddings=64, **common)).eval()
    return RobertaForSequenceClassification(RobertaConfig(max_position_embeddings=70, pad_token_id=1,
                                                          type_vocab_size=1, **common)).eval()


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three rows of 10 tokens, the last two padded (4 and 2 pad positions): 30 tokens, above the
    packed layers' lookup-table threshold, so the packed reload takes the exact path."""
    ids = torch.randint(5, 40, (3, 10), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 8:] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 1), "attention_mask": mask}


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _binary(kind: str, **cfg):
    model = _model(kind)
    quantize_(model, QuantConfig(**{**W1A1, **cfg}))
    _logits(model, _batch())  # the elastic quantizers initialise α from this first batch
    # A random-init model attends almost uniformly, and BiT's α = 4·mean(p) then puts every
    # probability below the threshold α/2 (a trained model's peaked attention does not): set α
    # so that about half of them are above it, as in a trained model.
    with torch.no_grad():
        for _, attn in binary_attention_modules(model):
            getattr(attn, PROB_QUANTIZER).alpha.fill_(0.2)
    return model


def _capture(model, batch):
    """Inputs/outputs of every attention-input quantizer, probability binarizer and attention
    module of one forward pass, per layer."""
    seen: dict[str, list] = {}
    hooks = []

    def keep(key):
        def hook(mod, args, out):
            seen.setdefault(key, []).append((args[0].detach(), (out[0] if isinstance(out, tuple) else out).detach()))
        return hook

    for _, attn in binary_attention_modules(model):
        for part in ("query", "key", "value"):
            hooks.append(getattr(attn, part).output_quantizer.register_forward_hook(keep(part)))
        hooks.append(getattr(attn, PROB_QUANTIZER).register_forward_hook(keep("probs")))
        hooks.append(attn.register_forward_hook(keep("context")))
    for name, m in model.named_modules():
        if name.endswith("output.dense") and ".attention." not in name:
            hooks.append(m.input_quantizer.register_forward_hook(keep("ffn")))
    try:
        out = model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


@pytest.mark.parametrize("kind", KINDS)
def test_every_attention_matmul_input_is_binary_and_masked_keys_stay_zero(kind):
    model = _binary(kind)
    attns = [m for _, m in binary_attention_modules(model)]
    assert len(attns) == 2 and model.config._attn_implementation == KRONBIT_ATTENTION
    batch = _batch(1)
    with torch.no_grad():
        _, seen = _capture(model, batch)
    key_ok = batch["attention_mask"].bool()[:, None, None, :]  # (batch, 1, 1, keys)
    for layer, attn in enumerate(attns):
        qkv = {}
        for part in ("query", "key", "value"):
            out = seen[part][layer][1]
            alpha = getattr(attn, part).output_quantizer.alpha.detach()
            assert torch.equal(out.abs(), alpha.expand_as(out)), part  # ±α: one bit per element
            qkv[part] = out
        p_in, p_out = seen["probs"][layer]
        alpha_p = getattr(attn, PROB_QUANTIZER).alpha.detach()
        assert set(p_out.unique().tolist()) == {0.0, float(alpha_p)}  # {0, α}
        assert torch.equal(p_out, torch.where(p_in > alpha_p / 2, alpha_p, 0.0))  # threshold α/2
        assert (p_out.masked_select(~key_ok.expand_as(p_out)) == 0).all()  # padded keys get nothing
        # the attention output is exactly the second matmul on those binary inputs
        b, s, _ = qkv["query"].shape
        heads = lambda x: x.view(b, s, 2, 16).transpose(1, 2)  # noqa: E731
        q, k, v = heads(qkv["query"]), heads(qkv["key"]), heads(qkv["value"])
        scores = q @ k.transpose(-1, -2) * 16 ** -0.5
        probs = torch.softmax(scores.masked_fill(~key_ok, torch.finfo(torch.float32).min), -1)
        torch.testing.assert_close(p_in, probs)
        want = (p_out @ v).transpose(1, 2).reshape(b, s, 32)
        torch.testing.assert_close(seen["context"][layer][1], want)
    for x_in, x_out in seen["ffn"]:  # the FFN intermediate activations: {0, α} per tensor
        assert len(x_out.unique()) == 2 and x_out.min() == 0 and (x_in.min() < 0 < x_in.max())


@pytest.mark.parametrize("kind", KINDS)
def test_binary_attention_acts_only_at_one_bit(kind):
    full, binary = _model(kind), _model(kind)
    quantize_(full, QuantConfig(w_bits=1, a_bits=32, quantize_embeddings=True))
    quantize_(binary, QuantConfig(w_bits=1, a_bits=32, quantize_embeddings=True, attention="binary"))
    batch = _batch()
    # weight-only stage: nothing changes, the model keeps its default attention path
    assert active_binary_attention(binary) == 0 and attention_mode(binary) == "full"
    assert binary.config._attn_implementation != KRONBIT_ATTENTION
    assert torch.equal(_logits(binary, batch), _logits(full, batch))
    # W1A1: Q/K/V binarized in both (quantize_attention on the reference); the probabilities
    # only with attention: binary, and that changes the outputs
    ref = _model(kind)
    quantize_(ref, QuantConfig(w_bits=1, a_bits=32, quantize_embeddings=True, quantize_attention=True))
    set_bits_(ref, 1, 1)
    set_bits_(binary, 1, 1)
    assert active_binary_attention(binary) == 2 and attention_mode(binary) == "binary"
    assert binary.config._attn_implementation == KRONBIT_ATTENTION
    assert not torch.allclose(_logits(binary, batch), _logits(ref, batch))
    binary.set_attn_implementation("eager")  # same arithmetic as kronbit's, minus the binarizer
    with pytest.raises(ModelError, match="binary attention needs the 'kronbit_eager' attention"):
        _logits(binary, batch)


def test_set_bits_schedule_keeps_learned_scales_and_leaves_k_bit_attention_full_precision():
    model = _model("bert")
    quantize_(model, QuantConfig(w_bits=2, a_bits=32, attention="binary", ffn_act_quantizer="elastic_unsigned"))
    set_bits_(model, 1, 1)
    attn = binary_attention_modules(model)[0][1]
    q = getattr(attn, PROB_QUANTIZER)
    assert isinstance(q, ElasticUnsignedAct) and q.beta is None
    assert isinstance(attn.query.output_quantizer, ElasticAct)
    ffn_in = model.bert.encoder.layer[0].output.dense.input_quantizer
    assert isinstance(ffn_in, ElasticUnsignedAct) and ffn_in.beta.shape == (64,)
    assert isinstance(model.bert.encoder.layer[0].attention.output.dense.input_quantizer, ElasticAct)
    with torch.no_grad():
        q.alpha.fill_(0.3)
    set_bits_(model, 1, 1)
    assert getattr(attn, PROB_QUANTIZER) is q and q.alpha.item() == pytest.approx(0.3)
    # An intermediate k-bit stage (BiT's W1A2 before W1A1): the linear layers' inputs at k bits,
    # the attention matmuls full precision (no Q/K/V binarizers, no probability binarizer).
    set_bits_(model, 1, 2)
    assert active_binary_attention(model) == 0 and attn.query.output_quantizer is None
    assert attn.query.a_bits == 2 and attn.query.input_quantizer is not None
    assert recorded_transforms(model)[0]["config"]["a_bits"] == 2
    quantize_(k_bit := _model("bert"), QuantConfig(w_bits=1, a_bits=2, attention="binary"))
    assert active_binary_attention(k_bit) == 0 and len(binary_attention_modules(k_bit)) == 2
    set_bits_(model, 1, 32)
    assert active_binary_attention(model) == 0 and attn.query.output_quantizer is None
    set_bits_(model, 1, 1)  # back at one bit: a fresh binarizer (its old α belonged to the old run)
    assert isinstance(getattr(attn, PROB_QUANTIZER), ElasticUnsignedAct) and active_binary_attention(model) == 2
    dequantize_(model, drop_activation_quantizers=True)
    assert not binary_attention_modules(model) and getattr(attn, PROB_QUANTIZER, None) is None
    assert recorded_transforms(model) == []


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_flow_through_every_binarizer(kind):
    model = _binary(kind).train()  # dropout on: the probabilities are binarized after it
    batch = _batch(2)
    out, seen = _capture(model, batch)
    for _, p_out in seen["probs"]:
        assert len(p_out.unique()) == 2  # still {0, α} in training
    out.logits.square().sum().backward()
    attn = binary_attention_modules(model)[0][1]
    grads = {"prob α": getattr(attn, PROB_QUANTIZER).alpha.grad,
             # K reaches the output only through the scores, the probability and the K binarizers
             "key weight": attn.key.weight.grad, "key α": attn.key.output_quantizer.alpha.grad,
             "key β": attn.key.output_quantizer.beta.grad, "value β": attn.value.output_quantizer.beta.grad}
    layer = getattr(model, kind).encoder.layer[0]
    grads["ffn α"] = layer.output.dense.input_quantizer.alpha.grad
    grads["ffn β"] = layer.output.dense.input_quantizer.beta.grad
    grads["intermediate weight"] = layer.intermediate.dense.weight.grad
    for name, g in grads.items():
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


@pytest.mark.parametrize("kind", KINDS)
def test_compressed_checkpoint_reloads_exactly(kind, tmp_path):
    model = _binary(kind)
    batch = _batch(3)
    want = _logits(model, batch)
    save_compressed(model, None, tmp_path / "m", {"kind": "compressed"}, recorded_transforms(model))
    cfg = json.loads((tmp_path / "m" / KRONBIT_META).read_text())["transforms"][0]["config"]
    assert cfg["attention"] == "binary" and cfg["ffn_act_quantizer"] == "elastic_unsigned" and cfg["version"] == 2
    back = load_model(tmp_path / "m")
    assert back.config._attn_implementation == KRONBIT_ATTENTION and active_binary_attention(back) == 2
    assert torch.equal(_logits(back, batch), want)


@pytest.mark.parametrize("kind", KINDS)
def test_packed_reload_equals_fake_quant(kind, tmp_path):
    model = _binary(kind)
    batch = _batch(4)
    want = _logits(model, batch)
    export_packed(model, tmp_path / "p")
    for mode in ("packed", "dequantized"):
        back = load_packed(tmp_path / "p", mode=mode)
        assert active_binary_attention(back) == 2 and back.config._attn_implementation == KRONBIT_ATTENTION
        assert torch.equal(_logits(back, batch), want), mode
    report = size_report(tmp_path / "p", in_memory=False)
    assert report["quant"] == {"w_bits": 1, "a_bits": 1, "attention": "binary",
                               "ffn_act_quantizer": "elastic_unsigned"}
    assert estimate_size(model)["attention"] == "binary"


def test_version_1_description_loads_with_its_old_meaning(tmp_path):
    """A kronbit.json written before attention/ffn_act_quantizer existed (QuantConfig version 1)."""
    model = _model("bert")
    quantize_(model, QuantConfig(w_bits=1, a_bits=1, quantize_attention=True))
    batch = _batch(5)
    want = _logits(model, batch)
    save_compressed(model, None, tmp_path / "m", {"kind": "compressed"}, recorded_transforms(model))
    meta_path = tmp_path / "m" / KRONBIT_META
    meta = json.loads(meta_path.read_text())
    cfg = meta["transforms"][0]["config"]
    for key in ("attention", "ffn_act_quantizer"):
        del cfg[key]
    cfg["version"] = 1
    meta_path.write_text(json.dumps(meta))
    back = load_model(tmp_path / "m")
    assert attention_mode(back) == "full" and not binary_attention_modules(back)
    assert torch.equal(_logits(back, batch), want)
    assert (tmp_path / "m" / WEIGHTS_NAME).is_file()


def test_attention_kd_step_on_a_binary_student(tmp_path):
    """The trainer's path: attention KD records the student's scores on kronbit's eager attention;
    they are products of the binary Q and K (α_q·α_k·scale times an integer)."""
    student = _binary("bert").train()
    teacher = _model("bert", seed=1)
    kd = KDConfig(logits=1, attention=1, layer_map="identity")
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = DistillationTrainer(model=student, args=args, teacher=teacher, kd=kd)
    batch = _batch(6)
    loss = trainer.compute_loss(student, {**batch, "labels": torch.tensor([0, 1, 0])})
    assert torch.isfinite(loss) and set(trainer._kd_sums) == {"logits", "attention"}
    loss.backward()
    attn = binary_attention_modules(student)[0][1]
    assert getattr(attn, PROB_QUANTIZER).alpha.grad.abs() > 0
    with torch.no_grad(), record_attention_scores() as records:
        student.eval()(**batch)
    unit = attn.query.output_quantizer.alpha * attn.key.output_quantizer.alpha * 16 ** -0.5
    steps = records[0][0] / unit
    torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-3)


def test_rebitting_a_student_quantized_with_other_options_is_refused():
    """A stage that lowers bits keeps the options the student was quantized with: a recipe that
    now says attention: binary must not silently train a student quantized without it."""
    model = _model("bert")
    quantize_(model, QuantConfig(w_bits=1, a_bits=32, quantize_embeddings=True))
    check_quant_options(model, QuantConfig(w_bits=1, a_bits=1, quantize_embeddings=True), "stage 'w1a1'")
    with pytest.raises(ConfigError, match=r"stage 'w1a1': the student was quantized with other options than the "
                                          r"recipe's \(attention: 'full' → 'binary'\)"):
        check_quant_options(model, QuantConfig(w_bits=1, a_bits=1, quantize_embeddings=True, attention="binary"),
                            "stage 'w1a1'")
    # quantize_embeddings: auto was decided when the student was first quantized: any decision matches
    check_quant_options(model, QuantConfig(w_bits=1, a_bits=1, quantize_embeddings=None), "stage 'w1a1'")
    with pytest.raises(ConfigError, match=r"ffn_act_quantizer: None → 'elastic_unsigned'"):
        check_quant_options(model, QuantConfig(w_bits=1, a_bits=1, quantize_embeddings=True,
                                               ffn_act_quantizer="elastic_unsigned"), "stage 'w1a1'")


def test_onnx_export_of_a_binary_attention_model(tmp_path, tiny_bert):
    """The signed binarizer avoids copysign (ONNX has none), so a true W1A1 model exports."""
    pytest.importorskip("onnxruntime")
    model = BertForSequenceClassification.from_pretrained(tiny_bert).eval()
    quantize_(model, QuantConfig(**W1A1))
    _logits(model, {"input_ids": torch.randint(5, 29, (2, 9))})
    export_packed(model, tmp_path / "p", tokenizer=AutoTokenizer.from_pretrained(tiny_bert))
    result = export_onnx(tmp_path / "p", tmp_path / "p" / "model.onnx", seq_len=16)
    assert result["max_abs_diff_vs_torch"] < 1e-5


def test_gpt2_binary_attention_on_the_fused_projection_and_causal_mask(tmp_path, monkeypatch):
    """GPT-2: Q/K/V come out of one fused Conv1D (c_attn), binarized as one tensor; the causal
    future's probabilities (exactly 0) stay 0; the packed reload computes the same logits."""
    monkeypatch.setenv("KRONBIT_KERNEL_PATH", "off")  # bit-exact torch path (the kernels: test_kernels.py)
    from helpers import tiny_gpt2

    model = tiny_gpt2(n_layer=2)
    quantize_(model, QuantConfig(**{**W1A1, "quantize_embeddings": None}))
    assert active_binary_attention(model) == 2 and model.config._attn_implementation == KRONBIT_ATTENTION
    assert model.transformer.h[0].mlp.c_proj.input_act_quantizer == "elastic_unsigned"
    assert model.transformer.h[0].attn.c_proj.input_act_quantizer is None
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(7))
    seen = []
    attn = model.transformer.h[0].attn
    hook = getattr(attn, PROB_QUANTIZER).register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    with torch.no_grad():
        want = model(ids).logits
    hook.remove()
    future = torch.ones(12, 12, dtype=torch.bool).triu(1)
    alpha = float(getattr(attn, PROB_QUANTIZER).alpha)  # 4·mean(p): early queries' few keys are above α/2
    assert set(seen[0].unique().tolist()) == {0.0, alpha} and (seen[0][..., future] == 0).all()
    export_packed(model, tmp_path / "p")
    back = load_packed(tmp_path / "p")
    with torch.no_grad():
        assert torch.equal(back(ids).logits, want)


def test_binary_attention_is_refused_on_kronecker_layers(make_bert):
    from kronbit.kron import kroneckerize_

    model = make_bert()
    kroneckerize_(model, {"target_modules": ["query"], "compression": 2})
    with pytest.raises(ConfigError, match="attention: binary and ffn_act_quantizer are not supported on Kronecker"):
        quantize_(model, QuantConfig(**W1A1))


def _packed_binary(kind, tmp_path):
    """(a batch, the fake-quant model's logits on it, the packed reload) of a true-W1A1 model."""
    model = _binary(kind)
    batch = _batch(5)
    want = _logits(model, batch)
    export_packed(model, tmp_path / "p")
    return batch, want, load_packed(tmp_path / "p")


@pytest.mark.parametrize("kind", KINDS)
def test_packed_binary_attention_runs_both_matmuls_on_the_kernel(kind, tmp_path, monkeypatch):
    from kronbit.distill.attention import FAST_PATH
    from kronbit.quant import kernels
    from kronbit.quant.packed import select_kernels_

    if kernels.extension() is None:
        pytest.skip("no C++ extension here")
    batch, want, back = _packed_binary(kind, tmp_path)
    assert all(FAST_PATH in m.__dict__ for _, m in binary_attention_modules(back))
    calls = {"scores": 0, "values": 0, "fused": 0}
    originals = {name: getattr(kernels, f"attention_{name}") for name in calls}

    def count(name, fn):
        def wrapped(*a, **k):
            out = fn(*a, **k)
            calls[name] += out is not None
            return out
        return wrapped
    for name, fn in originals.items():
        monkeypatch.setattr(kernels, f"attention_{name}", count(name, fn))
    got = {}
    for path in kernels.available_paths("binary"):  # every path: the same integers, the same logits
        monkeypatch.setenv(kernels.ENV_PATH, path)
        got[path] = _logits(back, batch)
    # the batch pads its shorter rows: a key-padding mask, so the one-pass kernel runs
    assert calls["fused"] == 2 * len(got) and calls["scores"] == calls["values"] == 0
    monkeypatch.setattr(kernels, "attention_fused", lambda *a, **k: None)  # declined: the two-kernel path
    for path in kernels.available_paths("binary"):
        monkeypatch.setenv(kernels.ENV_PATH, path)
        assert torch.equal(_logits(back, batch), got[path])
    monkeypatch.delenv(kernels.ENV_PATH)
    assert calls["scores"] == calls["values"] == 2 * len(got)
    first = next(iter(got.values()))
    assert all(torch.equal(g, first) for g in got.values())
    assert ((first - want).abs().max() / want.abs().max()) < 1e-5
    with torch.enable_grad():  # gradients wanted: the float path (the kernel has no backward)
        before = dict(calls)
        back(**batch).logits.sum()
        assert calls == before
    select_kernels_(back, "off")  # off the kernels: the float attention again, the same logits
    assert not any(FAST_PATH in m.__dict__ for _, m in binary_attention_modules(back))
    assert ((_logits(back, batch) - want).abs().max() / want.abs().max()) < 1e-5


def test_binary_attention_kernel_declines_operands_that_are_not_binary():
    from kronbit.quant import kernels

    if kernels.extension() is None:
        pytest.skip("no C++ extension here")
    g = torch.Generator().manual_seed(0)
    q = torch.where(torch.rand(1, 2, 5, 8, generator=g) > 0.5, 0.5, -0.5)
    k = q.clone()
    assert kernels.attention_scores(q, k, 1.0) is not None
    k[0, 1, 3, 2] = 0.49  # one element off the ±a grid (e.g. a rotary embedding applied after the binarizer)
    assert kernels.attention_scores(q, k, 1.0) is None
    probs = torch.rand(1, 2, 5, 5, generator=g)
    assert kernels.attention_values(probs, 0.3, q * 1.0001 ** torch.arange(8), 1.0) is None


def test_attention_kernels_read_transposed_heads_in_place_on_every_path():
    """The projections hand Q, K, V over as transposed views of (batch, seq, heads, head_dim): the
    kernels read those strides in place and equal the float reference (grouped-query heads too)."""
    from kronbit.quant import kernels

    if kernels.extension() is None:
        pytest.skip("no C++ extension here")
    gen = torch.Generator().manual_seed(9)
    B, S, H, Hk, D = 2, 70, 4, 2, 80  # head_dim and keys above one 64-bit word

    def pm(heads, a):  # ±a, laid out (B, S, heads, D) and viewed (B, heads, S, D)
        return (a * torch.where(torch.rand(B, S, heads, D, generator=gen) > 0.5, 1.0, -1.0)).transpose(1, 2)
    q, k, v = pm(H, 0.3), pm(Hk, 0.7), pm(Hk, 0.2)
    assert not q.is_contiguous()
    rep = H // Hk
    kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    probs = torch.softmax(torch.randn(B, H, S, S, generator=gen), -1)
    want_s = 0.5 * (torch.sign(q) @ torch.sign(kk).transpose(-1, -2))
    want_v = 0.25 * ((probs / 0.02 > 0.5).float() @ torch.sign(vv))
    for path in kernels.available_paths("binary"):
        s = kernels.attention_scores(q, k, 0.5, path=path)
        o = kernels.attention_values(probs, 0.02, v, 0.25, path=path)
        assert torch.equal(s, want_s) and torch.equal(o, want_v), path
        assert torch.equal(s, kernels.attention_scores(q.contiguous(), k.contiguous(), 0.5, path=path))
        assert o.transpose(1, 2).is_contiguous()  # (B, S, H, D): the output projection's layout


def _pm_heads(gen, B, S, heads, D, a):  # ±a, laid out (B, S, heads, D) and viewed (B, heads, S, D)
    return (a * torch.where(torch.rand(B, S, heads, D, generator=gen) > 0.5, 1.0, -1.0)).transpose(1, 2)


def test_one_pass_attention_equals_scores_softmax_values_on_every_path():
    """The one-pass kernel finds each row's probability threshold from the counts of its integer
    scores; it equals scores -> mask -> float32 softmax -> binarizer -> values, on every path, for
    grouped-query heads, head_dim and key length above one word, and padded keys."""
    from kronbit.quant import kernels
    from kronbit.quant.attention import key_padding

    if kernels.extension() is None:
        pytest.skip("no C++ extension here")
    gen = torch.Generator().manual_seed(3)
    B, S, H, Hk, D = 3, 70, 4, 2, 80
    q, k, v = _pm_heads(gen, B, S, H, D, 0.3), _pm_heads(gen, B, S, Hk, D, 0.7), _pm_heads(gen, B, S, Hk, D, 0.2)
    c, alpha = 0.3 * 0.7 * D ** -0.5, 0.03
    mask = torch.zeros(B, 1, 1, S)
    mask[1, ..., 50:] = torch.finfo(torch.float32).min
    mask[2, ..., 3:] = torch.finfo(torch.float32).min  # three real keys
    keep = key_padding(mask, B, S)
    assert keep.tolist() == (mask[:, 0, 0] == 0).tolist()
    probs = torch.softmax(kernels.attention_scores(q, k, c) + mask, dim=-1)
    ratio = probs / alpha
    assert 0.02 < (ratio > 0.5).float().mean() < 0.5  # the threshold cuts through the rows
    assert ((ratio - 0.5).abs() > 1e-5).all()  # no probability at the float rounding of the threshold
    want = kernels.attention_values(probs, alpha, v, alpha * 0.2)
    for path in kernels.available_paths("binary"):
        got = kernels.attention_fused(q, k, v, keep, c, alpha, alpha * 0.2, path=path)
        assert torch.equal(got, want), path
        assert got.transpose(1, 2).is_contiguous()
        assert torch.equal(kernels.attention_fused(q, k, v, None, c, alpha, alpha * 0.2, path=path),
                           kernels.attention_values(torch.softmax(kernels.attention_scores(q, k, c), -1), alpha, v,
                                                    alpha * 0.2, path=path)), path


def test_one_pass_attention_declines_what_it_cannot_do():
    from kronbit.quant import kernels
    from kronbit.quant.attention import key_padding

    if kernels.extension() is None:
        pytest.skip("no C++ extension here")
    gen = torch.Generator().manual_seed(4)
    q, k, v = (_pm_heads(gen, 2, 6, 2, 8, a) for a in (0.5, 0.5, 0.5))
    assert kernels.attention_fused(q, k, v, None, 0.1, 0.2, 0.1) is not None
    dead = torch.tensor([[1, 1, 0, 0, 0, 0], [0] * 6], dtype=torch.bool)  # a batch row with no real key
    assert kernels.attention_fused(q, k, v, dead, 0.1, 0.2, 0.1) is None
    off = v.clone()
    off[1, 0, 4, 3] = 0.49  # one element off the ±a grid
    assert kernels.attention_fused(q, k, off, None, 0.1, 0.2, 0.1) is None
    # masks: none or all-zero -> no padding; padding -> the real keys; anything else -> the general path
    min32 = torch.finfo(torch.float32).min
    assert key_padding(None, 2, 6) is None and key_padding(torch.zeros(2, 1, 1, 6), 2, 6) is None
    pad = torch.zeros(2, 1, 1, 6)
    pad[0, ..., 4:] = min32
    assert key_padding(pad, 2, 6).tolist() == [[True] * 4 + [False] * 2, [True] * 6]
    assert key_padding(pad.expand(2, 1, 6, 6), 2, 6).tolist() == key_padding(pad, 2, 6).tolist()
    causal = torch.triu(torch.full((6, 6), min32), 1).expand(2, 1, 6, 6)
    assert key_padding(causal, 2, 6) is False
    assert key_padding(torch.full((2, 1, 1, 6), -0.5), 2, 6) is False  # a bias, not a mask
    assert key_padding(torch.ones(2, 1, 1, 6, dtype=torch.bool), 2, 6) is False
    # answered once per mask object and version: another mask, or this one changed in place, is new
    pad2 = pad.clone()
    pad2[1, ..., 5:] = min32
    assert key_padding(pad, 2, 6)[1].all() and not key_padding(pad2, 2, 6)[1].all()
    pad[1, ..., 5:] = min32
    assert not key_padding(pad, 2, 6)[1].all()


def test_sign_byte_operands_equal_float_operands_on_every_path():
    """The projections of a packed model hand the one-pass kernel sign bytes (1 = +α): the same
    output as the ±α floats they stand for, on every path, strided heads and grouped queries too."""
    from kronbit.quant import kernels

    if kernels.extension() is None:
        pytest.skip("no C++ extension here")
    gen = torch.Generator().manual_seed(5)
    B, S, H, Hk, D = 2, 70, 4, 2, 80
    signs = [(torch.rand(B, S, h, D, generator=gen) > 0.5).to(torch.uint8).transpose(1, 2) for h in (H, Hk, Hk)]
    scales = (0.3, 0.7, 0.2)
    floats = [torch.where(s != 0, a, -a) for s, a in zip(signs, scales)]
    keep = torch.ones(B, S, dtype=torch.bool)
    keep[0, 40:] = False
    c, alpha = scales[0] * scales[1] * D ** -0.5, 0.03
    want = kernels.attention_fused(*floats, keep, c, alpha, alpha * scales[2])
    assert want is not None and (want != 0).any()
    for path in kernels.available_paths("binary"):
        assert torch.equal(kernels.attention_fused(*signs, keep, c, alpha, alpha * scales[2], path=path), want), path
    with pytest.raises(TypeError, match="must all be uint8"):
        kernels.attention_fused(signs[0], *floats[1:], keep, c, alpha, alpha)


@pytest.mark.parametrize("kind", KINDS)
def test_sign_bytes_reach_every_attention_path_as_their_values(kind, tmp_path, monkeypatch):
    """Q, K, V arrive as sign bytes; where the one-pass kernel declines (another mask, or no fast
    path at all) they are turned back into ±α and the logits do not change beyond float rounding."""
    from kronbit.distill.attention import FAST_PATH, SIGN_FLOATS
    from kronbit.quant import kernels
    from kronbit.quant.attention import SIGN_SOURCES

    if kernels.extension() is None:
        pytest.skip("no C++ extension here")
    batch, want, back = _packed_binary(kind, tmp_path)
    mods = [m for _, m in binary_attention_modules(back)]
    assert all(SIGN_SOURCES in m.__dict__ and SIGN_FLOATS in m.__dict__ for m in mods)
    assert all(p.sign_output.as_bytes for m in mods for p in getattr(m, SIGN_SOURCES))
    seen = []
    fused = kernels.attention_fused
    monkeypatch.setattr(kernels, "attention_fused", lambda q, *a, **k: seen.append(q.dtype) or fused(q, *a, **k))
    one_pass = _logits(back, batch)
    assert seen and set(seen) == {torch.uint8}
    monkeypatch.setattr(kernels, "attention_fused", lambda *a, **k: None)  # declined: the two-kernel path
    assert torch.equal(_logits(back, batch), one_pass)
    for m in mods:  # no fast path: the float attention, fed the bytes' ±α
        delattr(m, FAST_PATH)
    assert ((_logits(back, batch) - want).abs().max() / want.abs().max()) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_relu_student_reloads_exactly(kind, tmp_path):
    """BiT's student activation (quant.ffn_activation: relu): every FFN computes ReLU, the config
    says so, and the compressed and packed reloads rebuild it and compute the same logits."""
    teacher = _model(kind)
    model = _model(kind)
    quantize_(model, QuantConfig(**W1A1, ffn_activation="relu"))
    ffns = [layer.intermediate.intermediate_act_fn for layer in getattr(model, kind).encoder.layer]
    assert all(isinstance(f, torch.nn.ReLU) for f in ffns) and model.config.hidden_act == "relu"
    assert teacher.config.hidden_act == "gelu"  # a separate model is untouched
    batch = _batch(6)
    want = _logits(model, batch)
    assert not torch.equal(want, _logits(_binary(kind), batch))  # the activation changed the output
    save_compressed(model, None, tmp_path / "m", {"kind": "compressed"}, recorded_transforms(model))
    back = load_model(tmp_path / "m")
    assert back.config.hidden_act == "relu" and torch.equal(_logits(back, batch), want)
    export_packed(model, tmp_path / "p")
    assert torch.equal(_logits(load_packed(tmp_path / "p", mode="dequantized"), batch), want)
    # The binary kernels' epilogue rounds once where the BLAS rounds per partial sum: equal to
    # float32 rounding (GELU students too: ~1e-9 on these logits for most batches).
    torch.testing.assert_close(_logits(load_packed(tmp_path / "p", mode="packed"), batch), want, rtol=1e-5, atol=1e-7)


def test_ffn_activation_bad_requests():
    with pytest.raises(ConfigError, match="ffn_activation='gelu' is not supported; choose relu"):
        QuantConfig(w_bits=1, a_bits=1, ffn_activation="gelu")
    with pytest.raises(ConfigError, match="need QuantConfig version 2"):
        QuantConfig(w_bits=1, a_bits=1, ffn_activation="relu", version=1)
    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    with pytest.raises(ConfigError, match="GPT2LMHeadModel has no BERT-style FFN"):
        quantize_(gpt2, QuantConfig(w_bits=2, ffn_activation="relu"))


@pytest.mark.parametrize("kind", KINDS)
def test_set_attention_switches_a_w1a1_model_both_ways(kind, tmp_path):
    """A progressive schedule's attention step (W1A1 with full-precision attention, then binary):
    switched off, the model computes exactly what a model quantized with attention: full
    computes; switched back on, fresh Q/K/V and probability binarizers; the choice is recorded, so
    a saved model reloads with it."""
    from kronbit.distill.attention import use_kronbit_attention
    from kronbit.quant.api import set_attention_
    model = _binary(kind)
    full = _model(kind)
    quantize_(full, QuantConfig(**{**W1A1, "attention": "full"}))
    full.load_state_dict({k: v for k, v in model.state_dict().items()
                          if "output_quantizer" not in k and PROB_QUANTIZER not in k})
    use_kronbit_attention(full)  # the attention path a switched model keeps
    batch = _batch(2)
    assert set_attention_(model, "full") == 0
    assert not binary_attention_modules(model) and attention_mode(model) == "full"
    assert all(attn.query.output_quantizer is None for attn in (m.attention.self for m in _layers(model)))
    assert torch.equal(_attention_outputs(model, batch), _attention_outputs(full, batch))
    assert recorded_transforms(model)[0]["config"]["attention"] == "full"
    save_compressed(model, None, tmp_path / "full", {"kind": "compressed"}, recorded_transforms(model))
    back = load_model(tmp_path / "full")
    assert active_binary_attention(back) == 0  # reloads on the default path; the same arithmetic on ours:
    assert torch.equal(_attention_outputs(use_kronbit_attention(back), batch), _attention_outputs(full, batch))

    assert set_attention_(back, "binary") == 2  # at one bit: the binarizers act at once
    attn = binary_attention_modules(back)[0][1]
    assert isinstance(attn.query.output_quantizer, ElasticAct) and getattr(attn, PROB_QUANTIZER) is not None
    assert len(attn._forward_pre_hooks) == 1  # the path check is registered once, however often it switches
    assert back.config._attn_implementation == KRONBIT_ATTENTION
    _logits(back, _batch())  # the new binarizers initialise from this batch; α as in _binary
    with torch.no_grad():
        for _, a in binary_attention_modules(back):
            getattr(a, PROB_QUANTIZER).alpha.fill_(0.2)
    # (compared before the classifier: binary activations downstream can absorb the change)
    assert not torch.allclose(_attention_outputs(back, batch), _attention_outputs(full, batch))
    assert recorded_transforms(back)[0]["config"]["attention"] == "binary"
    set_attention_(back, "full")
    set_attention_(back, "binary")
    assert len(attn._forward_pre_hooks) == 1


def _layers(model):
    return (model.bert if hasattr(model, "bert") else model.roberta).encoder.layer


def _attention_outputs(model, batch) -> torch.Tensor:
    """Every layer's self-attention output on ``batch``, concatenated."""
    got = []
    hooks = [layer.attention.self.register_forward_hook(lambda mod, args, out: got.append(out[0].flatten()))
             for layer in _layers(model)]
    try:
        _logits(model, batch)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(got)


def test_set_attention_refuses_bad_input():
    from kronbit.quant.api import set_attention_
    with pytest.raises(ConfigError, match="attention must be 'full' or 'binary', got 'half'"):
        set_attention_(_model("bert"), "half")
    with pytest.raises(ConfigError, match="no quantized Q/K/V projections; call quantize_ first"):
        set_attention_(_model("bert"), "binary")
