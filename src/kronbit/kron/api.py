"""``kroneckerize_`` / ``densify_``: swap a model's linear layers (and token embedding) for Kronecker
layers in place, and back, through the one swap mechanism (``kronbit.modules.swap_modules``).

KnGPT2 (Edalati et al. 2021) in config form: decompose the embedding and the odd transformer
blocks, halving their parameters ("factor 2")::

    KroneckerConfig(compression=2, layers="odd", embeddings=True, embedding_factor=2)

Factor shapes always refer to W as (out_features, in_features), whatever the storage layout
(GPT-2's ``Conv1D`` stores Wᵀ). Per layer they come from, in order: ``layer_shapes`` (explicit,
by module name), ``a_shape`` / ``b_shape`` (one shape for every layer; the missing one is derived
per layer), or the shape chooser (``shapes.choose_shape``) for the ``compression`` target.

Rebuild from config, the PEFT way: the report's ``config`` is the *frozen* config (exact module
names, factor shapes and ranks, head tying), which builds the same structure on a fresh model
without looking at its weights; ``load_state_dict(strict=True)`` then restores the tensors. Save
``report.config``, not the config you started from: the shape chooser's pick depends on the
weights it saw.

Every check runs before the first module is replaced, so a bad config never leaves a half-swapped
model behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import nn

from ..core.config import Config
from ..core.errors import ConfigError
from ..core.swap import (FilterFn, count_parameters, find_modules, is_conv1d, is_linear_like, linear_weight,
                         swap_modules)
from ..core.transforms import forget_transforms, record_transform
from .layers import KroneckerEmbedding, KroneckerLinear, KroneckerTiedHead, kron_flops
from .nkp import divisors, relative_error, resolve_rank, resolve_shapes
from .shapes import choose_shape
from .timing import TimingCache, default_dtype

CONFIG_VERSION = 2  # 2 added shape_speed
SHAPE_SPEEDS = ("flops", "measured")

# The transformer block a module belongs to: "...h.3..." (GPT-2), "...layers.3..." (Llama, BERT's
# "layer.3"), "...blocks.3..." (nanoGPT-style).
_BLOCK = r"(?:h|layers|layer|blocks|block)\.(\d+)"
BLOCK_RE = re.compile(r"(?:^|\.)" + _BLOCK + r"(?:\.|$)")
# Default targets: every linear layer inside a transformer block (not the LM head or a classifier).
DEFAULT_TARGETS = r"(?:.*\.)?" + _BLOCK + r"\..*"
LAYER_SETS = ("odd", "even", "all")


@dataclass
class KroneckerConfig(Config):
    """What to decompose and how. See the module docstring for the order shapes are resolved in."""

    # PEFT convention: a list of names (exact or suffix match) or one full regex string. None =
    # every nn.Linear / Conv1D inside a transformer block; [] = none (embedding only).
    target_modules: list[str] | str | None = None
    rank: int | str = 1                  # terms in Σ A_i ⊗ B_i: an integer, or "full" (exact)
    a_shape: list[int] | None = None     # explicit A (m1, n1) for every targeted layer
    b_shape: list[int] | None = None     # explicit B (m2, n2) for every targeted layer
    compression: float | None = None     # else: shape chooser; dense params / Kronecker params ≥ this
    min_speedup: float = 1.25            # chooser: minimum ideal FLOP speed-up over dense
    # chooser: rank the shapes near the best error by FLOPs, or by forward + backward time measured
    # on this machine (``timing``: cached per machine; the pick is frozen into layer_shapes)
    shape_speed: str = "flops"
    # Only these transformer blocks (0-based indices as in module names: "odd" = h.1, h.3, ...).
    # Modules outside any numbered block are not filtered by this.
    layers: list[int] | str | None = None
    embeddings: bool = False             # decompose the input token embedding (KnGPT2)
    embedding_factor: int = 2            # f: table (v × d) ≈ A (v × d/f) ⊗ B (1 × f)
    embedding_rank: int = 1
    tie_head: bool | None = None         # output head reads the Kronecker embedding; None = if tied now
    # module name → [m1, n1, m2, n2] or [m1, n1, m2, n2, rank]; filled in by the frozen config
    layer_shapes: dict[str, list[int]] | None = None
    version: int = CONFIG_VERSION

    def validate(self) -> None:
        if self.version not in (1, CONFIG_VERSION):
            raise ConfigError(f"KroneckerConfig.version {self.version} is not supported (this kronbit reads "
                              f"1 and {CONFIG_VERSION})")
        if self.shape_speed not in SHAPE_SPEEDS:
            raise ConfigError(f"shape_speed: {self.shape_speed!r} is not one of {', '.join(SHAPE_SPEEDS)}")
        if self.version == 1 and self.shape_speed != "flops":
            raise ConfigError("shape_speed needs KroneckerConfig version 2 (omit version, or set 2)")
        if not (self.rank == "full" or (isinstance(self.rank, int) and not isinstance(self.rank, bool)
                                        and self.rank >= 1)):
            raise ConfigError(f"rank must be an integer ≥ 1 or 'full', got {self.rank!r}")
        for key in ("a_shape", "b_shape"):
            shape = getattr(self, key)
            if shape is not None and (len(shape) != 2 or min(shape) < 1):
                raise ConfigError(f"{key} must be two positive integers [rows, cols], got {shape}")
        if self.compression is not None:
            if self.compression <= 1:
                raise ConfigError(f"compression must be > 1 (dense params / Kronecker params; 2 = half), "
                                  f"got {self.compression}")
            if self.a_shape is not None or self.b_shape is not None:
                raise ConfigError("set either a_shape/b_shape (explicit factor shapes) or compression "
                                  "(shape chooser), not both")
            if self.rank == "full":
                raise ConfigError("rank 'full' reproduces W exactly and cannot meet a compression target; "
                                  "use an integer rank with compression")
        if self.min_speedup < 1:
            raise ConfigError(f"min_speedup must be ≥ 1 (never pick a shape slower than dense), "
                              f"got {self.min_speedup}")
        if self.target_modules != [] and self.a_shape is None and self.b_shape is None \
                and self.compression is None and not self.layer_shapes and self.rank != "full":
            raise ConfigError("KroneckerConfig: set a_shape and/or b_shape, or compression (e.g. compression: 2 "
                              "halves each layer's parameters), or rank: full (exact; the most balanced shape)")
        if self.target_modules == [] and not self.embeddings:
            raise ConfigError("KroneckerConfig: target_modules is [] and embeddings is false: nothing to decompose")
        if isinstance(self.layers, str) and self.layers not in LAYER_SETS:
            raise ConfigError(f"layers: {self.layers!r} is not one of {', '.join(LAYER_SETS)} or a list of "
                              "block indices")
        if isinstance(self.layers, list) and (not self.layers or min(self.layers) < 0):
            raise ConfigError(f"layers must be a non-empty list of block indices ≥ 0, got {self.layers}")
        if self.embedding_factor < 2:
            raise ConfigError(f"embedding_factor must be ≥ 2 (B is 1 × f), got {self.embedding_factor}")
        if self.embedding_rank < 1:
            raise ConfigError(f"embedding_rank must be ≥ 1, got {self.embedding_rank}")
        if self.tie_head is not None and not self.embeddings:
            raise ConfigError("tie_head applies only with embeddings: true")
        for name, spec in (self.layer_shapes or {}).items():
            if len(spec) not in (4, 5) or min(spec) < 1:
                raise ConfigError(f"layer_shapes['{name}'] must be [m1, n1, m2, n2] or [m1, n1, m2, n2, rank] "
                                  f"of positive integers, got {spec}")


@dataclass
class LayerReport:
    name: str
    kind: str                    # linear | conv1d | embedding | tied_head
    shape: list[int]             # W as (out, in); (vocab, dim) for the embedding
    a_shape: list[int]
    b_shape: list[int]
    rank: int
    params_before: int
    params_after: int
    relative_error: float | None  # ‖W − Σ A⊗B‖_F / ‖W‖_F at initialisation
    order: str | None = None
    flops_speedup: float | None = None  # ideal, per token (dense MACs / Kronecker MACs)


@dataclass
class KroneckerReport:
    layers: list[LayerReport]
    config: KroneckerConfig          # frozen: rebuilds this structure on a fresh model
    params_before: int               # whole model, unique parameters
    params_after: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [vars(r).copy() for r in self.layers], "config": self.config.to_dict(),
                "params_before": self.params_before, "params_after": self.params_after, "notes": self.notes}

    def __str__(self) -> str:
        lines = [f"{'layer':<40} {'W':>12} {'A':>10} {'B':>10} {'rank':>4} {'params':>21} {'rel.err':>7}"]
        for r in self.layers:
            err = "" if r.relative_error is None else f"{r.relative_error:.4f}"
            lines.append(f"{r.name:<40} {'×'.join(map(str, r.shape)):>12} {'×'.join(map(str, r.a_shape)):>10} "
                         f"{'×'.join(map(str, r.b_shape)):>10} {r.rank:>4} "
                         f"{r.params_before:>10,}→{r.params_after:<10,} {err:>7}")
        lines.append(f"model parameters: {self.params_before:,} → {self.params_after:,} "
                     f"({self.params_before / max(self.params_after, 1):.2f}× smaller)")
        return "\n".join(lines + self.notes)


@dataclass
class _LinearPlan:
    name: str
    a_shape: tuple[int, int]
    b_shape: tuple[int, int]
    rank: int


def block_index(name: str) -> int | None:
    """The transformer block index in a module name ("transformer.h.3.mlp.c_fc" → 3), or None."""
    found = BLOCK_RE.findall(name)
    return int(found[-1]) if found else None


def _block_count(model: nn.Module) -> int:
    idx = [i for i in (block_index(n) for n, _ in model.named_modules()) if i is not None]
    return max(idx) + 1 if idx else 0


def _layer_filter(model: nn.Module, layers: list[int] | str | None) -> FilterFn | None:
    if layers is None or layers == "all":
        return None
    n_blocks = _block_count(model)
    if n_blocks == 0:
        raise ConfigError(f"layers: {layers!r} given, but {type(model).__name__} has no numbered transformer "
                          "blocks (h.N / layers.N / blocks.N)")
    if isinstance(layers, str):
        keep = set(range(1 if layers == "odd" else 0, n_blocks, 2))
    else:
        bad = [i for i in layers if i >= n_blocks]
        if bad:
            raise ConfigError(f"layers {bad} out of range: {type(model).__name__} has blocks 0-{n_blocks - 1}")
        keep = set(layers)

    def keep_fn(module: nn.Module, name: str) -> bool:
        i = block_index(name)
        return i is None or i in keep
    return keep_fn


def _module_name(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise ConfigError(f"module {type(target).__name__} is not part of {type(model).__name__}")


def _plan_linears(model: nn.Module, config: KroneckerConfig, filter_fn: FilterFn | None) -> list[_LinearPlan]:
    if config.target_modules == []:
        return []
    targets = DEFAULT_TARGETS if config.target_modules is None else config.target_modules
    # Dry run of the one swap mechanism (build returns None = keep): it raises the standard
    # "matched nothing; candidates: ..." error, and lists what it would touch.
    seen: list[tuple[str, nn.Module]] = []
    swap_modules(model, targets, lambda n, m: seen.append((n, m)), filter_fn=filter_fn, kinds=is_linear_like,
                 what="linear layer")
    keep = _layer_filter(model, config.layers)
    found = [(n, m) for n, m in seen if keep is None or keep(m, n)]
    if not found:
        blocks = sorted({block_index(n) for n, _ in seen} - {None})
        raise ConfigError(f"target_modules matched {len(seen)} linear layer(s), but none in layers "
                          f"{config.layers!r}; they sit in blocks {blocks}")
    names = {n for n, _ in found}
    unknown = sorted(set(config.layer_shapes or {}) - names)
    if unknown:
        raise ConfigError(f"layer_shapes names {unknown[0]!r}, which is not a targeted linear layer; targeted: "
                          f"{', '.join(sorted(names)[:6])}{', ...' if len(names) > 6 else ''}")
    plans = []
    timings: TimingCache | None = None  # one cache file read per call, only if a shape is timed
    for name, module in found:
        W, _, _ = linear_weight(module)
        m, n = W.shape
        where = f"layer {name} (W {m}×{n} as out×in)"
        rank = config.rank
        spec = (config.layer_shapes or {}).get(name)
        if spec is not None:
            a, b = resolve_shapes((m, n), spec[:2], spec[2:4], where)
            if len(spec) == 5:
                rank = spec[4]
        elif config.a_shape is not None or config.b_shape is not None or rank == "full":
            a, b = resolve_shapes((m, n), config.a_shape, config.b_shape, where, rank=rank)
        elif config.compression is None or not isinstance(rank, int):
            raise ConfigError(f"{where}: no factor shapes for it: not in layer_shapes, and neither a_shape/b_shape "
                              "nor compression is set")
        else:
            speed = None
            if config.shape_speed == "measured":
                timings = timings or TimingCache()
                speed = (lambda c, m=m, n=n: timings.speedup(m, n, c.shape.a_shape, c.shape.b_shape, c.rank,
                                                             default_dtype()))
            pick = choose_shape(W.detach(), rank, config.compression, min_speedup=config.min_speedup, where=where,
                                speed=speed)
            a, b = pick.shape.a_shape, pick.shape.b_shape
        plans.append(_LinearPlan(name, a, b, resolve_rank(rank, (m, n), a, b, where)))
    return plans


@dataclass
class _EmbeddingPlan:
    name: str
    factor: int
    rank: int
    head_name: str | None        # replaced by a KroneckerTiedHead when set
    was_tied: bool


def _plan_embedding(model: nn.Module, config: KroneckerConfig, linear_names: set[str]) -> _EmbeddingPlan:
    get_in = getattr(model, "get_input_embeddings", None)
    emb = get_in() if callable(get_in) else None
    if not isinstance(emb, nn.Embedding):
        raise ConfigError(f"embeddings: true, but {type(model).__name__} has no nn.Embedding input embedding "
                          f"(get_input_embeddings() gave {type(emb).__name__})")
    name = _module_name(model, emb)
    v, d = emb.weight.shape
    f = config.embedding_factor
    if d % f:
        valid = [k for k in divisors(d) if k > 1]
        raise ConfigError(f"embedding_factor {f} does not divide the embedding dim {d} of {name}; valid: "
                          f"{', '.join(map(str, valid))}")
    where = f"embedding {name} ({v}×{d})"
    rank = resolve_rank(config.embedding_rank, (v, d), (v, d // f), (1, f), where)
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    was_tied = isinstance(head, nn.Linear) and head.weight is emb.weight
    tie = was_tied if config.tie_head is None else config.tie_head
    head_name = None
    if tie:
        if not isinstance(head, nn.Linear) or tuple(head.weight.shape) != (v, d):
            raise ConfigError(f"tie_head: true, but the output head of {type(model).__name__} is "
                              f"{type(head).__name__}, not an nn.Linear of shape ({v}, {d}); set tie_head: false")
        head_name = _module_name(model, head)
        if head_name in linear_names:
            raise ConfigError(f"{head_name} is both in target_modules and tied to the Kronecker embedding; "
                              "remove it from target_modules or set tie_head: false")
    return _EmbeddingPlan(name, f, rank, head_name, was_tied)


def _untie_in_hf_config(model: nn.Module, gone: set[str]) -> bool:
    """Forget Hugging Face ties that involve parameters which no longer exist (``gone``: names
    like ``lm_head.weight``). Otherwise ``tie_weights()`` (run by every HF load) would look up a
    dense weight that is gone, or plant one on a Kronecker layer. Returns whether anything changed.
    """
    tied = getattr(model, "all_tied_weights_keys", None)
    hit = []
    if isinstance(tied, dict):
        hit = [k for k, src in tied.items() if k in gone or src in gone]
        for k in hit:
            tied.pop(k)
    cfg = getattr(model, "config", None)
    if hit and cfg is not None and getattr(cfg, "tie_word_embeddings", False):
        cfg.tie_word_embeddings = False
    return bool(hit)


def _error(W, A, B) -> float | None:
    """The decomposition error, or None for meta-device weights: a structure-only rebuild
    (``load_packed``) has no values to compare, and its factors come from the checkpoint."""
    return None if W.is_meta else relative_error(W, A, B)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def kroneckerize_(model: nn.Module, config: KroneckerConfig | Mapping[str, Any],
                  filter_fn: FilterFn | None = None) -> KroneckerReport:
    """Replace the targeted linear layers (and, with ``embeddings``, the token embedding and a
    tied head) by Kronecker layers initialised to the nearest Kronecker product, in place.

    ``filter_fn(module, name) -> bool`` further restricts the targets. Returns a report with one row
    per replaced layer and the frozen config (save that one to rebuild the model).
    """
    if isinstance(config, Mapping):
        config = KroneckerConfig.from_dict(config)
    params_before = count_parameters(model)

    # ---- plan: every check, before anything changes
    plans = _plan_linears(model, config, filter_fn)
    emb_plan = _plan_embedding(model, config, {p.name for p in plans}) if config.embeddings else None

    # ---- apply
    rows: list[LayerReport] = []
    by_name = {p.name: p for p in plans}

    def build(name: str, module: nn.Module) -> nn.Module | None:
        p = by_name.get(name)
        if p is None:
            return None
        W, bias, _ = linear_weight(module)
        new = KroneckerLinear.from_module(module, p.a_shape, p.b_shape, p.rank)
        rows.append(LayerReport(name, "conv1d" if is_conv1d(module) else "linear", list(W.shape),
                                list(p.a_shape), list(p.b_shape), p.rank, _params(module), _params(new),
                                _error(W, new.a, new.b), new.order,
                                W.numel() / kron_flops(p.a_shape, p.b_shape, p.rank)))
        return new

    if plans:
        targets = DEFAULT_TARGETS if config.target_modules is None else config.target_modules
        swap_modules(model, targets, build, filter_fn=filter_fn, kinds=is_linear_like, what="linear layer")

    notes = []
    if emb_plan is not None:
        holder: dict[str, KroneckerEmbedding] = {}

        def build_emb(name: str, module: nn.Module) -> nn.Module:
            new = KroneckerEmbedding.from_module(module, emb_plan.factor, emb_plan.rank)
            holder["emb"] = new
            rows.append(LayerReport(name, "embedding", list(module.weight.shape), list(new.a_shape),
                                    list(new.b_shape), new.rank, _params(module), _params(new),
                                    _error(module.weight, new.a, new.b)))
            return new

        swap_modules(model, [emb_plan.name], build_emb, kinds=(nn.Embedding,), what="embedding")
        emb = holder["emb"]
        if emb_plan.head_name is not None:
            def build_head(name: str, module: nn.Module) -> nn.Module:
                head = KroneckerTiedHead(emb, module.bias)
                shared = emb_plan.was_tied  # its weight was the embedding's, counted there
                rows.append(LayerReport(name, "tied_head", [emb.num_embeddings, emb.embedding_dim],
                                        list(emb.a_shape), list(emb.b_shape), emb.rank,
                                        0 if shared else _params(module), _params(head), None, head.order,
                                        emb.num_embeddings * emb.embedding_dim
                                        / kron_flops(emb.a_shape, emb.b_shape, emb.rank)))
                return head

            swap_modules(model, [emb_plan.head_name], build_head, kinds=(nn.Linear,), what="output head")

    gone = {f"{p.name}.weight" for p in plans}
    if emb_plan is not None:
        gone |= {f"{emb_plan.name}.weight"} | ({f"{emb_plan.head_name}.weight"} if emb_plan.head_name else set())
    if _untie_in_hf_config(model, gone):
        notes.append("Hugging Face weight tying switched off (config.tie_word_embeddings = false): "
                     + ("the head's tie to the embedding is kept by KroneckerTiedHead"
                        if emb_plan is not None and emb_plan.head_name else "the tied weights now differ"))

    frozen = config.replace(
        target_modules=[p.name for p in plans], layers=None, a_shape=None, b_shape=None, compression=None,
        layer_shapes={p.name: [*p.a_shape, *p.b_shape, p.rank] for p in plans},
        tie_head=(emb_plan.head_name is not None) if emb_plan is not None else None)
    if rows:
        record_transform(model, "kron", frozen.to_dict())
    return KroneckerReport(rows, frozen, params_before, count_parameters(model), notes)


def densify_(model: nn.Module) -> list[str]:
    """Merge every Kronecker layer back into its dense original type, in place; a tied head is
    tied again to the densified embedding. Returns the names replaced."""
    kron_kinds = (KroneckerLinear, KroneckerEmbedding, KroneckerTiedHead)
    if not find_modules(model, r".*", kinds=kron_kinds):
        return []
    dense_of: dict[int, nn.Embedding] = {}

    def build_emb(name: str, module: nn.Module) -> nn.Module:
        new = module.to_module()
        dense_of[id(module)] = new
        return new

    swapped: list[str] = []
    if find_modules(model, r".*", kinds=(KroneckerEmbedding,)):
        swapped += swap_modules(model, r".*", build_emb, kinds=(KroneckerEmbedding,), what="Kronecker embedding")
    retied: list[tuple[str, str]] = []

    def build(name: str, module: nn.Module) -> nn.Module:
        if isinstance(module, KroneckerTiedHead):
            emb = dense_of.get(id(module.embedding))
            if emb is not None:
                retied.append((name, _module_name(model, emb)))
            return module.to_module(emb)
        return module.to_module()

    if find_modules(model, r".*", kinds=(KroneckerLinear, KroneckerTiedHead)):
        swapped += swap_modules(model, r".*", build, kinds=(KroneckerLinear, KroneckerTiedHead),
                                what="Kronecker layer")
    for head_name, emb_name in retied:  # the dense model is tied again: tell Hugging Face
        cfg = getattr(model, "config", None)
        if cfg is not None and hasattr(cfg, "tie_word_embeddings"):
            cfg.tie_word_embeddings = True
        tied = getattr(model, "all_tied_weights_keys", None)
        if isinstance(tied, dict):
            tied[f"{head_name}.weight"] = f"{emb_name}.weight"
    forget_transforms(model, "kron")
    return swapped


def kronecker_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Kronecker layer in ``model``."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (KroneckerLinear, KroneckerEmbedding, KroneckerTiedHead))]


__all__ = ["KroneckerConfig", "KroneckerReport", "LayerReport", "kroneckerize_", "densify_", "kronecker_layers",
           "block_index", "DEFAULT_TARGETS"]
