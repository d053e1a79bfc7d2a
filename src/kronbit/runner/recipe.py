"""A recipe: a typed list of stages plus the sections every stage shares, validated once.

A recipe is YAML (``recipes/**.yaml``) parsed into ``Recipe``. Every section is a typed config
dataclass that validates itself when it is built (``train``/``teacher``: ``TrainSettings``;
``kd``: ``KDConfig``; ``quant``: ``QuantConfig`` without bits; ``augment``: ``AugmentConfig``;
``lm``: ``LMDataConfig``; ``perplexity``: ``PerplexityConfig``; per stage ``kron``:
``KroneckerConfig`` and ``layerdrop``: ``LayerDropConfig``). A section given in YAML keeps the
defaults written here for the keys it leaves out, so the defaults a run uses are the ones the
validation saw. What a method accepts beyond that (bits only in GLUE recipes, ``kron`` only in
language-model ones, ...) is checked by the method's own ``validate`` in the run-method
registry (``RUN_METHODS``; each method module registers itself once).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.config import Config, apply_overrides, load_yaml
from ..core.errors import ConfigError
from ..core.hardware import BF16Setting
from ..data.augment import AugmentConfig
from ..data.lm import LMDataConfig
from ..distill.losses import KDConfig
from ..kron import KroneckerConfig
from ..layerdrop import LayerDropConfig
from ..quant import QuantConfig
from ..workflows.perplexity import PerplexityConfig
from ..workflows.training import TrainingOptions

RECIPE_VERSION = 1
# init_from keywords: the fine-tuned teacher, the stage before, the model given as ``--student``.
RESERVED = ("teacher", "previous", "student")
FULL = 32
# The text a language-model recipe distils on when its ``lm`` section names none.
DEFAULT_LM_FILES = ["wikitext2-valid", "tinyshakespeare"]


@dataclass(kw_only=True)
class TrainSettings(TrainingOptions):
    """How one stage trains (each stage may override epochs / learning_rate / max_steps)."""

    epochs: float = 1.0
    bf16: BF16Setting = "auto"
    scale_lr_multiplier: float = 1.0  # learning-rate multiplier for learnable quantizer scales
    # Memory (GiB) the teacher's outputs for the training set may take: computed once and reused by
    # every epoch and by later stages on the same examples, so a KD step skips the teacher's
    # forward. Larger training sets distil live; 0 turns the cache off.
    teacher_cache_gb: float = 4.0

    def validate(self) -> None:
        super().validate()
        if self.scale_lr_multiplier <= 0:
            raise ConfigError(f"scale_lr_multiplier must be > 0, got {self.scale_lr_multiplier}")
        if self.teacher_cache_gb < 0:
            raise ConfigError(f"teacher_cache_gb must be ≥ 0 (0 = off), got {self.teacher_cache_gb}")


@dataclass
class StageConfig(Config):
    name: str
    init_from: str = "previous"      # teacher | previous | student | the name of an earlier stage
    # Whose outputs the stage distils: the full-precision teacher, or an earlier stage's student
    # (previous | its name): BiT's multi-distillation, where a W1A2 student teaches the W1A1 one
    # (a closer teacher than full precision for a binary-activation student to imitate).
    distill_from: str = "teacher"
    w_bits: int = FULL               # 32 = full-precision weights
    a_bits: int = FULL               # 32 = full-precision activations
    # The stage's own quant.attention (full | binary; None: the recipe's): a progressive schedule
    # trains W1A1 with full-precision attention matmuls, then binarizes them in a later stage.
    attention: str | None = None
    augment: bool = False            # train on the augmented training set
    epochs: float | None = None      # None: the recipe's train.epochs
    learning_rate: float | None = None
    max_steps: int | None = None
    kd: dict[str, Any] | None = None  # per-stage KD weight overrides (merged onto the recipe's kd)
    kron: KroneckerConfig | None = None        # language-model stages: decompose this stage's start
    layerdrop: LayerDropConfig | None = None   # language-model stages: keep a subset of the blocks

    def validate(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"stage name {self.name!r} must be letters, digits, '-' or '_'")
        if self.name in RESERVED:
            raise ConfigError(f"stage name '{self.name}' is reserved (it is an init_from keyword)")
        if self.attention not in (None, "full", "binary"):
            raise ConfigError(f"stage '{self.name}': attention must be 'full' or 'binary', got {self.attention!r}")

    @property
    def quantized(self) -> bool:
        return self.w_bits < FULL or self.a_bits < FULL


@dataclass(frozen=True)
class RunMethod:
    """One kind of recipe: what it accepts and how it runs. ``run(recipe, **run_recipe kwargs)``
    returns the stage table; ``describe(recipe, index)`` is the stage's one-line header."""

    name: str
    validate: Callable[["Recipe"], None]
    run: Callable[..., dict[str, Any]]
    describe: Callable[["Recipe", int], str]
    needs_task: bool = True
    aliases: tuple[str, ...] = ()


RUN_METHODS: dict[str, RunMethod] = {}


def register_run_method(method: RunMethod) -> RunMethod:
    for name in (method.name, *method.aliases):
        if name in RUN_METHODS and RUN_METHODS[name] is not method:
            raise ValueError(f"run method '{name}' is registered twice")
        RUN_METHODS[name] = method
    return method


@dataclass
class Recipe(Config):
    name: str
    # glue (alias tspq): GLUE distillation stages, quantized or not; kngpt2: language-model stages
    method: str = "tspq"
    description: str = ""
    recipe_version: int = RECIPE_VERSION
    teacher: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=3.0))
    train: TrainSettings = field(default_factory=TrainSettings)
    kd: KDConfig = field(default_factory=KDConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)    # every QuantConfig key but the bits
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    stages: list[StageConfig] = field(default_factory=list)
    lm: LMDataConfig = field(default_factory=lambda: LMDataConfig(files=list(DEFAULT_LM_FILES), block_size=256))
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)

    def validate(self) -> None:
        if self.recipe_version != RECIPE_VERSION:
            raise ConfigError(f"recipe_version {self.recipe_version} is not supported "
                              f"(this kronbit reads {RECIPE_VERSION})")
        if self.method not in RUN_METHODS:
            raise ConfigError(f"method '{self.method}' is not known; choose one of: {', '.join(RUN_METHODS)}")
        if not self.stages:
            raise ConfigError("a recipe needs at least one stage")
        if self.quant.w_bits != FULL or self.quant.a_bits != FULL:
            raise ConfigError("quant: set w_bits / a_bits per stage, not in the quant section")
        seen: list[str] = []
        for s in self.stages:
            self._check_stage_order(s, seen)
            if s.kd:
                self.kd_config(s)
            seen.append(s.name)
        self.run_method.validate(self)

    @property
    def run_method(self) -> RunMethod:
        return RUN_METHODS[self.method]

    def _check_stage_order(self, s: StageConfig, seen: list[str]) -> None:
        """Unique names; ``init_from`` names the teacher, the previous stage or an earlier one."""
        if s.name in seen:
            raise ConfigError(f"stage name '{s.name}' is used twice")
        if s.init_from not in RESERVED and s.init_from not in seen:
            if s.init_from in [x.name for x in self.stages]:
                raise ConfigError(f"stage '{s.name}': init_from '{s.init_from}' names a later stage; "
                                  f"a stage can start only from teacher, previous, or an earlier stage")
            choices = ", ".join([*RESERVED, *seen])
            raise ConfigError(f"stage '{s.name}': init_from '{s.init_from}' names no earlier stage; "
                              f"choose one of: {choices}")
        if s.distill_from not in ("teacher", "previous") and s.distill_from not in seen:
            choices = ", ".join(["teacher", "previous", *seen])
            raise ConfigError(f"stage '{s.name}': distill_from '{s.distill_from}' names no earlier stage; "
                              f"choose one of: {choices}")
        if s.distill_from == "previous" and not seen:
            raise ConfigError(f"stage '{s.name}': distill_from 'previous' needs an earlier stage; the first "
                              "stage distils from the teacher")

    # What one stage runs with: the shared sections merged with the stage's own values.
    def quant_config(self, stage: StageConfig) -> QuantConfig:
        where = f"stage '{stage.name}' quant"
        try:
            own = {"w_bits": stage.w_bits, "a_bits": stage.a_bits}
            if stage.attention is not None:
                own["attention"] = stage.attention
            return QuantConfig.from_dict({**self.quant.to_dict(), **own}, where=where)
        except ConfigError as e:
            raise ConfigError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None

    def kd_config(self, stage: StageConfig) -> KDConfig:
        if not stage.kd:
            return self.kd
        return KDConfig.from_dict({**self.kd.to_dict(), **stage.kd}, where=f"stage '{stage.name}' kd")

    def train_settings(self, stage: StageConfig, max_steps_cap: int | None = None) -> TrainSettings:
        t = dataclasses.replace(self.train)
        if stage.epochs is not None:
            t.epochs = stage.epochs
        if stage.learning_rate is not None:
            t.learning_rate = stage.learning_rate
        if stage.max_steps is not None:
            t.max_steps = stage.max_steps
        if max_steps_cap is not None:
            t.max_steps = min(t.max_steps or max_steps_cap, max_steps_cap)
        return t

    @property
    def needs_student(self) -> bool:
        return any(s.init_from == "student" for s in self.stages)

    def resolve_init(self, index: int) -> str:
        """The stage name (or 'teacher' / 'student') that stage ``index`` starts from."""
        s = self.stages[index]
        if s.init_from == "previous":
            return "teacher" if index == 0 else self.stages[index - 1].name
        return s.init_from

    def resolve_distill(self, index: int) -> str:
        """'teacher', or the name of the earlier stage whose student stage ``index`` distils."""
        s = self.stages[index]
        return self.stages[index - 1].name if s.distill_from == "previous" else s.distill_from

    def index_of(self, name: str) -> int:
        return [s.name for s in self.stages].index(name)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    data = load_yaml(path)
    return Recipe.from_dict(apply_overrides(data, list(overrides)), where=Path(path).name)
