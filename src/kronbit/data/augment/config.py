"""What augmentation does (``AugmentConfig``) and which words it may touch (stop words, word
spans, usable candidates)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...core.config import Config
from ...core.errors import ConfigError

SOURCES = ("mlm", "embedding", "wordnet")
COMBINE_MODES = ("interleave", "fallback")
CACHE_VERSION = 1

# English stop words (the usual NLTK list, which TinyBERT uses): never replaced, never inserted.
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her
hers herself it its itself they them their theirs themselves what which who whom this that these
those am is are was were be been being have has had having do does did doing a an the and but if
or because as until while of at by for with about against between into through during before
after above below to from up down in out on off over under again further then once here there when
where why how all any both each few more most other some such no nor not only own same so than too
very s t can will just don should now d ll m o re ve y ain aren couldn didn doesn hadn hasn haven
isn ma mightn mustn needn shan shouldn wasn weren won wouldn
""".split())

# A token is a run of word characters (with inner apostrophes, so "don't" and "n't" stay whole),
# or one other non-space character. Only purely alphabetic ASCII tokens are candidates for
# replacement; the others (punctuation, numbers, contractions, "café") stay as they are.
_TOKEN = re.compile(r"\w+(?:['\u2019]\w+)*|\S")
_REPLACEABLE = re.compile(r"[A-Za-z]{2,}")
# What may be inserted: a lower-case-able word, or a short multi-word / hyphenated WordNet lemma.
_INSERTABLE = re.compile(r"[A-Za-z]+(?:[ -][A-Za-z]+)*")


@dataclass
class AugmentConfig(Config):
    """TinyBERT-style augmentation of a GLUE training split."""

    n_copies: int = 10        # augmented copies per example (TinyBERT: 20 for SST-2, 10 for MNLI/QQP)
    p_replace: float = 0.4    # per-word replacement probability (TinyBERT p_t)
    top_k: int = 15           # candidates per word (TinyBERT K)
    sources: list[str] | None = None  # subset of mlm, embedding, wordnet; null = automatic
    combine: str = "interleave"       # interleave | fallback (first source with candidates)
    mlm_model: str | None = None      # checkpoint with an MLM head (hub id, directory, packaged:...)
    wordnet_dir: str | None = None    # null = $KRONBIT_WORDNET_DIR, else the Debian location
    drop_duplicates: bool = True      # drop copies equal to the original or an earlier copy (TinyBERT)
    seed: int = 42
    max_examples: int | None = None   # augment only a seeded random subset of this many examples
    cache_dir: str | None = None      # where the augmented set is cached; null = no cache
    batch_size: int = 64              # MLM / embedding batch size (does not change the output)

    def validate(self) -> None:
        if self.n_copies < 1:
            raise ConfigError(f"augment.n_copies must be >= 1, got {self.n_copies}")
        if not 0.0 <= self.p_replace <= 1.0:
            raise ConfigError(f"augment.p_replace must be in [0, 1], got {self.p_replace}")
        if self.top_k < 1:
            raise ConfigError(f"augment.top_k must be >= 1, got {self.top_k}")
        if self.sources is not None:
            if not self.sources:
                raise ConfigError(f"augment.sources is empty; use null (automatic) or some of: "
                                  f"{', '.join(SOURCES)}")
            for s in self.sources:
                if s not in SOURCES:
                    raise ConfigError(f"augment.sources: unknown source {s!r}; valid: {', '.join(SOURCES)}")
            if len(set(self.sources)) != len(self.sources):
                raise ConfigError(f"augment.sources lists a source twice: {self.sources}")
        if self.combine not in COMBINE_MODES:
            raise ConfigError(f"augment.combine: {self.combine!r} is not one of {', '.join(COMBINE_MODES)}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(f"augment.max_examples must be >= 1 or null, got {self.max_examples}")
        if self.batch_size < 1:
            raise ConfigError(f"augment.batch_size must be >= 1, got {self.batch_size}")


# ==================================================================================== words

@dataclass(frozen=True)
class Slot:
    """One replaceable word: ``text[start:end]`` in its sentence (the context for an MLM)."""

    text: str
    start: int
    end: int

    @property
    def word(self) -> str:
        return self.text[self.start:self.end]


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the words of ``text`` that may be replaced: alphabetic, 2+ letters, not a
    stop word."""
    return [(m.start(), m.end()) for m in _TOKEN.finditer(text)
            if _REPLACEABLE.fullmatch(m.group()) and m.group().lower() not in STOP_WORDS]


def usable_candidate(candidate: str, word: str) -> bool:
    """May ``candidate`` replace ``word``? A real word, not a stop word, not the word itself."""
    low = candidate.lower()
    return (len(low) >= 2 and low != word.lower() and low not in STOP_WORDS
            and _INSERTABLE.fullmatch(candidate) is not None)


def match_case(candidate: str, word: str) -> str:
    """Give ``candidate`` the capitalisation pattern of ``word`` (UPPER, Title, or as is)."""
    if len(word) > 1 and word.isupper():
        return candidate.upper()
    if word[:1].isupper():
        return candidate[:1].upper() + candidate[1:]
    return candidate


