"""The quantization API in the torchao manner: ``quantize_(model, QuantConfig(...), filter_fn)``.

``QuantConfig`` validates eagerly. ``quantize_`` swaps the matching linear layers (``nn.Linear``
or ``Conv1D``, matched by name through the one swap mechanism in ``kronbit.modules``) for
``QuantLinear`` and, optionally, the word embeddings for ``QuantEmbedding``, in place, and returns
the swapped names. ``set_bits_`` changes the bits of an already quantized model without
rebuilding it (the progressive schedule); ``dequantize_`` swaps back to plain layers holding the
quantized weight values.

Rebuilding: ``quantize_(fresh_model, QuantConfig.from_dict(config.to_dict()))`` followed by
``load_state_dict(saved, strict=True)`` restores a quantized model exactly, learned scales
included, because every quantizer's parameters and buffers have shapes fixed at construction.

Config versions: 1 is the original set of keys; 2 adds ``attention`` (BiT's binarized attention,
``quant.attention``), ``ffn_act_quantizer``, ``embedding_bits`` and ``ffn_activation``. A version-1 config (a kronbit.json written before
them) reads with their defaults, i.e. with the meaning it was written with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from ..core.config import Config
from ..core.errors import ConfigError
from ..core.swap import FilterFn, find_modules, is_linear_like, name_matches, swap_modules
from ..core.transforms import TRANSFORMS_ATTR, forget_transforms, record_transform, update_recorded
from ..kron.layers import KroneckerLinear
from .attention import (active_binary_attention, clear_binary_attention, mark_binary_attention,
                        set_attention_bits)
from .kron_layers import QuantKroneckerLinear
from .layers import FULL, QuantEmbedding, QuantLinear, QuantModule, QuantOptions
from .quantizers import SCALE_PARAM_SUFFIXES
from .registry import ACT_QUANTIZERS, WEIGHT_QUANTIZERS, check_quantizer

BITS = (1, 2, 4, 8, 32)
# Every linear layer inside a transformer block, whatever the architecture calls its block list
# (BERT: encoder.layer.N, GPT-2: h.N, Llama: layers.N). For BERT that is query, key, value,
# attention.output.dense, intermediate.dense and output.dense; the pooler, the classifier and an
# LM head, which the papers keep in full precision, are outside the blocks.
BLOCK_LINEARS = r".*\.(layer|h|layers|block|blocks)\.\d+\..*"
# Layers whose outputs are the inputs of the attention matmuls (Q, K, V): BERT, GPT-2 (fused
# c_attn) and Llama names.
ATTENTION_INPUTS = ("query", "key", "value", "c_attn", "q_proj", "k_proj", "v_proj")
# The FFN output projections, whose inputs are the FFN intermediate activations (BERT/RoBERTa:
# GELU(intermediate.dense), not attention.output.dense; GPT-2 mlp.c_proj; DistilBERT ffn.lin2;
# Llama mlp.down_proj, whose input is signed).
FFN_OUTPUTS = r"(.*\.)?(layer\.\d+\.output\.dense|mlp\.c_proj|mlp\.down_proj|ffn\.lin2)"
VERSION = 2
# ``ffn_activation`` names -> the module Hugging Face builds for that ``hidden_act`` (its ACT2FN
# gives torch's own nn.ReLU for "relu"), so a rebuilt model has the same class
FFN_ACTIVATIONS = {"relu": nn.ReLU}


@dataclass
class QuantConfig(Config):
    """What to quantize and how. Bits: 1, 2, 4, 8, or 32 (= full precision on that side)."""

    w_bits: int = 32
    a_bits: int = 32
    weight_quantizer: str = "auto"   # auto: uniform (8, 4 bits), twn (2), bwn (1); or uniform/lsq/twn/bwn
    act_quantizer: str = "auto"      # auto: minmax (8, 4, 2 bits), elastic (1); or minmax/lsq/elastic
    granularity: Literal["row", "tensor"] = "row"  # weight scales per output row or per tensor
    symmetric: bool = True           # uniform weights: symmetric or asymmetric min-max
    act_symmetric: bool = True       # minmax activations: symmetric (TernaryBERT) or asymmetric
    mean_centering: bool = True      # bwn: sign(w - mean(w)) as BiT (False: sign(w), BinaryBERT)
    clip_ratio: float = 1.0          # uniform / minmax: clip range = clip_ratio × the min-max range
    clip_val: float | None = None    # absolute clip before uniform/twn/bwn/minmax (TernaryBERT: 2.5)
    target_modules: str | list[str] = BLOCK_LINEARS  # PEFT convention: names/suffixes, or one regex
    # The word embeddings (weights only, per row). None = auto: quantized below 4 weight bits (unless an LM head is tied to it), where a
    # full-precision embedding would be most of the model (a binary BERT-base exports to ~110 MB
    # with an fp32 embedding, ~19 MB with it quantized: docs/results/packed_export.md). Decided when quantize_ runs, and recorded resolved.
    # Other embeddings (positions, token types) are quantized when target_modules names them.
    quantize_embeddings: bool | None = None
    # The quantized word embeddings' bits when they should keep more than the linear layers:
    # max(w_bits, embedding_bits) below full precision (None: w_bits). A 384-wide MiniLM loses far
    # more to a binary embedding table than BERT-base's 768 (docs/results/tspq_stage_levers.md).
    embedding_bits: int | None = None
    quantize_attention: bool = False   # also quantize Q/K/V outputs (inputs of the attention matmuls)
    # binary: at a_bits=1, Q/K/V and the attention probabilities are binarized too (BiT). At any
    # other a_bits the attention matmuls stay full precision, so the option can stay on through a
    # schedule's weight-only stages and an intermediate k-bit stage (BiT's W1A2 → W1A1 steps); the
    # stage table records which stages had binary attention.
    attention: Literal["full", "binary"] = "full"
    ffn_act_quantizer: str | None = None  # the FFN output projection's input quantizer (None: act_quantizer),
    #                                       e.g. elastic_unsigned for BiT's {0, α} on GELU outputs
    # The FFN's activation in the student (None: the model's own). "relu" is BiT's student: ReLU in
    # place of GELU, so the intermediate activations are non-negative exactly, as the {0, α}
    # binarizer assumes. Set from the first quantized stage on, so the weight-only stages adapt the
    # network to it before the activations are binarized. BERT-style encoders only; it changes the
    # model's config (hidden_act), so the saved student rebuilds with it.
    ffn_activation: Literal["relu"] | None = None
    version: int = VERSION

    def validate(self) -> None:
        for side, bits in (("w_bits", self.w_bits), ("a_bits", self.a_bits)):
            _check_bits(side, bits)
        check_quantizer("weight_quantizer", self.weight_quantizer, self.w_bits, WEIGHT_QUANTIZERS, "w_bits")
        check_quantizer("act_quantizer", self.act_quantizer, self.a_bits, ACT_QUANTIZERS, "a_bits")
        if not 0 < self.clip_ratio <= 1:
            raise ConfigError(f"clip_ratio={self.clip_ratio} must be in (0, 1] (1 = the full min-max range)")
        if self.clip_val is not None and not self.clip_val > 0:
            raise ConfigError(f"clip_val={self.clip_val} must be a positive number, or null for no clipping")
        if self.version not in (1, VERSION):
            raise ConfigError(f"QuantConfig version {self.version} is not supported (this kronbit reads versions "
                              f"1 and {VERSION})")
        self._validate_v2()
        if not self.target_modules:
            raise ConfigError("target_modules is empty; give module names (e.g. [query, value]) or a regex")

    def _validate_v2(self) -> None:
        """The keys version 2 added: absent (at their defaults) from a version-1 config."""
        if self.version == 1 and (self.attention != "full" or self.ffn_act_quantizer is not None
                                  or self.embedding_bits is not None or self.ffn_activation is not None):
            raise ConfigError("attention / ffn_act_quantizer / embedding_bits / ffn_activation need QuantConfig "
                              "version 2 (omit version, or set 2)")
        if self.ffn_activation not in (None, "relu"):
            raise ConfigError(f"ffn_activation={self.ffn_activation!r} is not supported; choose relu (BiT's "
                              "student), or null for the model's own activation")
        if self.embedding_bits is not None:
            if self.embedding_bits not in BITS or self.embedding_bits >= 32:
                raise ConfigError(f"embedding_bits={self.embedding_bits} is not supported; choose one of "
                                  f"{', '.join(map(str, BITS[:-1]))}, or null for the weights' bits")
            check_quantizer("weight_quantizer", self.weight_quantizer, self.embedding_bits, WEIGHT_QUANTIZERS,
                            "embedding_bits")
        if self.ffn_act_quantizer is not None:
            check_quantizer("ffn_act_quantizer", self.ffn_act_quantizer, self.a_bits, ACT_QUANTIZERS, "a_bits")

    def options(self) -> QuantOptions:
        return QuantOptions.of(self)


def _check_bits(side: str, bits: Any) -> None:
    if bits not in BITS:
        raise ConfigError(f"{side}={bits} is not supported; choose one of {', '.join(map(str, BITS))} "
                          "(32 = full precision)")


def quantize_(model: nn.Module, config: QuantConfig, filter_fn: FilterFn | None = None) -> list[str]:
    """Swap the target linear layers (and, with ``quantize_embeddings``, the word embeddings) for
    quantized ones, in place; return the swapped module names in model order.

    ``filter_fn(module, name)`` can veto individual matches. Quantizing an already quantized
    model again only touches layers that are still plain."""
    targets = config.target_modules
    if not find_modules(model, targets, filter_fn, _linear_or_embedding) and quantized_modules(model):
        raise ConfigError(f"{type(model).__name__} is already quantized; change bits with set_bits_, "
                          "or dequantize_ first")

    binary_attention = config.attention == "binary"
    if config.ffn_activation is not None:
        set_ffn_activation_(model, config.ffn_activation)

    def build(name: str, module: nn.Module) -> nn.Module:
        if isinstance(module, nn.Embedding):  # an embedding named in target_modules (e.g. positions)
            return QuantEmbedding.from_module(module, config)
        attention_input = name.rsplit(".", 1)[-1] in ATTENTION_INPUTS
        ffn_act = config.ffn_act_quantizer if name_matches(name, FFN_OUTPUTS) else None
        if isinstance(module, KroneckerLinear):  # quantized Kronecker factors
            if (binary_attention and attention_input) or ffn_act:
                raise ConfigError(f"{name}: attention: binary and ffn_act_quantizer are not supported on Kronecker "
                                  "layers")
            return QuantKroneckerLinear.from_module(module, config)
        return QuantLinear.from_module(module, config, quantize_output=config.quantize_attention and attention_input,
                                       binary_output=binary_attention and attention_input, input_act_quantizer=ffn_act)

    swapped = swap_modules(model, targets, build, filter_fn, kinds=_linear_or_embedding,
                           what="linear layer or embedding")
    if binary_attention:
        mark_binary_attention(model, [n for n in swapped if n.rsplit(".", 1)[-1] in ATTENTION_INPUTS])
        set_attention_bits(model, config.a_bits)
    embeddings = config.quantize_embeddings
    if embeddings is None:  # auto: below 4 bits, unless an LM head shares the embedding matrix
        embeddings = config.w_bits < 4 and not _tied_to_head(model)
    if embeddings:
        if not hasattr(model, "get_input_embeddings"):
            raise ConfigError(f"quantize_embeddings needs a model with get_input_embeddings() (a Hugging Face "
                              f"model); {type(model).__name__} has none")
        emb = model.get_input_embeddings()
        name = next((n for n, m in model.named_modules() if m is emb), None)
        if isinstance(emb, nn.Embedding) and not isinstance(emb, QuantEmbedding) and name and (
                filter_fn is None or filter_fn(emb, name)):
            swapped += swap_modules(model, [name], lambda _, m: QuantEmbedding.from_module(m, config),
                                    what="word embedding")
    if swapped:
        # Recorded resolved, so a rebuild makes the same modules whatever "auto" means later.
        record_transform(model, "quant", {**config.to_dict(), "quantize_embeddings": embeddings})
    return swapped


def set_ffn_activation_(model: nn.Module, activation: str) -> int:
    """Give every FFN of a BERT-style encoder (``*.intermediate.intermediate_act_fn``) the named
    activation, and the config too (``hidden_act``), so a model rebuilt from its saved config has
    it; returns how many FFNs changed. A model without such FFNs is refused."""
    ffns = [m for _, m in model.named_modules() if hasattr(m, "intermediate_act_fn")]
    if not ffns:
        raise ConfigError(f"ffn_activation: {type(model).__name__} has no BERT-style FFN (intermediate_act_fn); "
                          "the option is for encoders (BERT, RoBERTa, MiniLM, ...)")
    config = getattr(model, "config", None)
    if config is not None:
        config.hidden_act = activation
    for m in ffns:
        m.intermediate_act_fn = FFN_ACTIVATIONS[activation]()
    return len(ffns)


def _tied_to_head(model: nn.Module) -> bool:
    """Does an output head use the word embedding matrix (GPT-2's tied LM head)? Then the head needs
    the full-precision matrix, and auto leaves the embedding alone."""
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return False
    emb, head = get_in(), get_out()
    return head is not None and emb is not None and getattr(head, "weight", None) is getattr(emb, "weight", None)


def _linear_or_embedding(module: nn.Module) -> bool:
    return (is_linear_like(module) or isinstance(module, KroneckerLinear)
            or (isinstance(module, nn.Embedding) and not isinstance(module, QuantEmbedding)))


def quantized_modules(model: nn.Module) -> list[tuple[str, QuantModule]]:
    """(name, module) of every quantized module, in model order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantModule)]


def set_bits_(model: nn.Module, w_bits: int | None, a_bits: int | None) -> list[str]:
    """Change the bits of every quantized module in place (no rebuild; None = 32 = full
    precision). Checked for every module before any changes, so a bad request changes nothing.
    Returns the names of the modules set."""
    w_bits, a_bits = (FULL if w_bits is None else w_bits), (FULL if a_bits is None else a_bits)
    _check_bits("w_bits", w_bits)
    _check_bits("a_bits", a_bits)
    mods = quantized_modules(model)
    if not mods:
        raise ConfigError("set_bits_: the model has no quantized modules; call quantize_ first")
    for _, m in mods:  # e.g. an explicit weight_quantizer 'twn' cannot do 4 bits
        check_quantizer("weight_quantizer", m.options.weight_quantizer, w_bits, WEIGHT_QUANTIZERS, "w_bits")
        if m.takes_activations:
            check_quantizer("act_quantizer", m.options.act_quantizer, a_bits, ACT_QUANTIZERS, "a_bits")
        if getattr(m, "input_act_quantizer", None):
            check_quantizer("ffn_act_quantizer", m.input_act_quantizer, a_bits, ACT_QUANTIZERS, "a_bits")
    for _, m in mods:
        m.set_bits(w_bits, a_bits)
    set_attention_bits(model, a_bits)
    update_recorded(model, "quant", w_bits=w_bits, a_bits=a_bits)  # a rebuild must use the new bits
    return [n for n, _ in mods]


def set_attention_(model: nn.Module, attention: str) -> int:
    """Switch a quantized model's attention matmuls between full precision ("full") and BiT's
    binary ones ("binary", in effect at ``a_bits == 1``), in place: a stage's ``attention``
    override, so a schedule can train W1A1 with full-precision attention before binarizing it.
    The choice is recorded, so a reloaded model rebuilds with it. Returns the number of attention
    modules whose binarizers are active."""
    if attention not in ("full", "binary"):
        raise ConfigError(f"attention must be 'full' or 'binary', got {attention!r}")
    projections = [(n, m) for n, m in quantized_modules(model) if n.rsplit(".", 1)[-1] in ATTENTION_INPUTS]
    if not projections:
        raise ConfigError("set_attention_: the model has no quantized Q/K/V projections; call quantize_ first")
    binary = attention == "binary"
    if binary and any(not isinstance(m, QuantLinear) for _, m in projections):
        raise ConfigError("attention: binary is not supported on Kronecker layers")
    for _, m in projections:
        if isinstance(m, QuantLinear):
            m.set_binary_output(binary)
    if binary:
        mark_binary_attention(model, [n for n, _ in projections])
    else:
        clear_binary_attention(model)
    active = set_attention_bits(model, min(m.a_bits for _, m in projections))
    update_recorded(model, "quant", attention=attention)
    return active


def dequantize_(model: nn.Module, drop_activation_quantizers: bool = False) -> list[str]:
    """Swap quantized modules back to plain ones (``to_module``) holding the quantized weight
    values, so the converted model computes exactly what the fake-quant model computed — as long
    as no activations are quantized. A plain layer cannot quantize its input, so with quantized
    activations this refuses unless ``drop_activation_quantizers=True``."""
    mods = quantized_modules(model)
    active = [n for n, m in mods if m.takes_activations and m.a_bits < FULL]
    if active and not drop_activation_quantizers:
        raise ConfigError(f"dequantize_: {len(active)} layers quantize activations (a_bits={mods[0][1].a_bits}), "
                          "which plain layers cannot; pass drop_activation_quantizers=True to drop them")
    swap_modules(model, [n for n, _ in mods], lambda _, m: m.to_module(), what="quantized module")
    clear_binary_attention(model)
    forget_transforms(model, "quant")
    return [n for n, _ in mods]


def quant_state(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per quantized module: its bits and the quantizers in use ("auto" resolved; None = full
    precision). For reports and for checking a schedule did what it should."""
    state = {}
    for name, m in quantized_modules(model):
        state[name] = {"kind": type(m).__name__, "w_bits": m.w_bits, "a_bits": m.a_bits,
                       "weight_quantizer": m.weight_quantizer_name, "act_quantizer": m.act_quantizer_name,
                       "quantize_output": bool(getattr(m, "quantize_output", False))}
    return state


def check_quant_options(model: nn.Module, config: QuantConfig, where: str) -> None:
    """One line when ``model`` was quantized with other options than ``config`` (bits aside):
    ``set_bits_`` keeps the options a model was quantized with, so a stage that re-bits a
    student from an older run would silently train what that run chose, not what it says.
    ``quantize_embeddings: null`` (auto) was decided when the student was first quantized, and
    matches whatever that decided."""
    recorded = next((t["config"] for t in model.__dict__.get(TRANSFORMS_ATTR, []) if t["kind"] == "quant"), None)
    if recorded is None:
        return
    ignore = {"w_bits", "a_bits", "version"} | ({"quantize_embeddings"} if config.quantize_embeddings is None else set())
    old = {k: v for k, v in QuantConfig.from_dict(recorded, where="recorded quant").to_dict().items() if k not in ignore}
    new = {k: v for k, v in config.to_dict().items() if k not in ignore}
    diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
    if diff:
        shown = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"{where}: the student was quantized with other options than the recipe's ({shown}); "
                          "start it from a checkpoint quantized with these options, or set them back")


def quant_summary(config: dict[str, Any] | QuantConfig) -> dict[str, Any]:
    """What a recorded quant config does at its bits, for reports: ``attention`` is "binary" only
    where it is in effect (a_bits=1), ``ffn_act_quantizer`` only where activations are quantized."""
    c = config if isinstance(config, QuantConfig) else QuantConfig.from_dict(config, where="quant transform")
    return {"w_bits": c.w_bits, "a_bits": c.a_bits,
            "attention": "binary" if c.attention == "binary" and c.a_bits == 1 else "full",
            "ffn_act_quantizer": c.ffn_act_quantizer if c.a_bits < FULL else None}


def attention_mode(model: nn.Module) -> str:
    """"binary" when the model binarizes its attention matmul inputs right now, else "full"."""
    return "binary" if active_binary_attention(model) else "full"


def bits_summary(model: nn.Module) -> dict[str, int]:
    """{"w1a1": count, ...} over quantized modules (for reports)."""
    out: dict[str, int] = {}
    for _, m in quantized_modules(model):
        key = f"w{m.w_bits}a{m.a_bits}"
        out[key] = out.get(key, 0) + 1
    return out


def quantizer_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The learnable quantizer parameters (LSQ step sizes, elastic α/β), found by the name
    convention of ``SCALE_PARAM_SUFFIXES``, e.g. for their own optimizer param group."""
    return [(n, p) for n, p in model.named_parameters() if n.endswith(SCALE_PARAM_SUFFIXES)]
