"""TinyBERT data augmentation (Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language
Understanding", Alg. 1): word replacement to multiply a GLUE training set for distillation.

For every training example, ``n_copies`` augmented copies are made; in each copy every replaceable
word is, with probability ``p_replace`` (TinyBERT: 0.4), replaced by one of its ``top_k``
(TinyBERT: 15) candidates drawn uniformly. Labels are kept (in distillation the teacher's soft
predictions on the copy are the real target anyway); pair tasks augment both sentences.

Where the candidates come from (a ``CandidateSource``):

* ``MaskedLMCandidates`` ("mlm"): TinyBERT's source for single-wordpiece words: the top-K
  predictions of a BERT MLM head at the word's position. As in TinyBERT the masked sentence is
  paired with the original one (``[CLS] masked [SEP] original [SEP]``), which keeps the predictions
  close to the original meaning. Needs a checkpoint that *has* an MLM head.
* ``EmbeddingNeighbourCandidates`` ("embedding"): nearest neighbours by cosine in the teacher's
  input word-embedding matrix, for single-wordpiece words. The packaged MiniLM has no MLM head,
  and this needs nothing but the teacher.
* ``WordNetCandidates`` ("wordnet"): WordNet synonyms, for any word. It stands in for TinyBERT's
  GloVe neighbours of multi-piece words (there is no GloVe here).
* ``CombinedCandidates``: several sources merged (round-robin, de-duplicated, capped at K), or
  ``combine: fallback``, TinyBERT's routing: the first source that has candidates for a word wins.

The default (``sources: null``) is MLM + WordNet when an MLM head is available, else embedding
neighbours + WordNet.

Deliberate differences from TinyBERT's script, each for a reason:
* Words are replaced *in place* in the original text (spans), not re-joined from lower-cased
  tokens, so an unchanged word keeps its case and spacing and ``p_replace=0`` returns the input.
* A candidate never equals the word itself (TinyBERT's MLM list may contain it), so
  ``p_replace`` is the probability that the word really changes.
* Pair tasks: each copy augments both sentences (TinyBERT loops over the sentences one after the
  other and, by mutating its row, leaves the last copy of the first sentence in the second loop).
* Stop words and anything that is not a purely alphabetic ASCII word of 2+ letters
  (punctuation, numbers, contractions such as ``n't``) are never replaced, and never inserted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..config import Config
from ..errors import ConfigError, DataError
from .glue import Example, GlueTask, get_task
from .wordnet import WordNet

log = logging.getLogger("kronbit")

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


# ==================================================================================== sources

class CandidateSource:
    """Replacement candidates for words in context: ``candidates(slots)`` → one list per slot,
    at most ``top_k`` long, best first, each passing ``usable_candidate``."""

    name = "source"

    def __init__(self, top_k: int):
        self.top_k = top_k

    def identity(self) -> str:
        """A string that changes whenever the candidates could change (part of the cache key)."""
        raise NotImplementedError

    def candidates(self, slots: Sequence[Slot]) -> list[list[str]]:
        raise NotImplementedError


class WordLevelSource(CandidateSource):
    """A source whose candidates depend on the word only, not its context: memoised per word, so
    the result cannot depend on how the words were batched."""

    def __init__(self, top_k: int):
        super().__init__(top_k)
        self._memo: dict[str, list[str]] = {}

    def lookup(self, words: list[str]) -> list[list[str]]:
        raise NotImplementedError

    def candidates(self, slots: Sequence[Slot]) -> list[list[str]]:
        words = [s.word for s in slots]
        todo = sorted({w for w in words if w not in self._memo})
        if todo:
            self._memo.update(zip(todo, self.lookup(todo)))
        return [list(self._memo[w]) for w in words]


def _whole_word_ids(tokenizer, size: int) -> list[int]:
    """Vocabulary ids that are whole words we could insert: alphabetic (so no ``##`` pieces, no
    ``[unused]``/special tokens), 2+ letters, not stop words."""
    special = set(tokenizer.all_special_tokens)
    return sorted(i for tok, i in tokenizer.get_vocab().items()
                  if i < size and tok not in special and _REPLACEABLE.fullmatch(tok)
                  and tok.lower() not in STOP_WORDS)


def _single_piece_ids(tokenizer, words: list[str]) -> list[int | None]:
    """The vocabulary id of each word if it is one wordpiece (TinyBERT's MLM condition), else None."""
    if not words:
        return []
    enc = tokenizer(words, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    return [ids[0] if len(ids) == 1 and ids[0] != unk else None for ids in enc]


def _hash_tensors(tensors) -> str:
    import torch

    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _vocab_hash(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


class EmbeddingNeighbourCandidates(WordLevelSource):
    """Cosine nearest neighbours in an input word-embedding matrix, for single-wordpiece words.

    ``embeddings`` is ``(vocab, dim)``, normally ``model.get_input_embeddings().weight`` of the
    teacher. Neighbours are restricted to whole-word vocabulary entries. Multi-piece words get no
    candidates here (their first piece's neighbours would be wrong words).
    """

    name = "embedding"

    def __init__(self, embeddings, tokenizer, top_k: int = 15, batch_size: int = 64):
        import torch

        super().__init__(top_k)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        weight = embeddings.detach().to("cpu", torch.float32)
        self._identity = f"embedding:{_hash_tensors([weight])}:{_vocab_hash(tokenizer)}:k{top_k}"
        self.unit = torch.nn.functional.normalize(weight, dim=1)
        id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
        self.allowed_ids = torch.tensor(_whole_word_ids(tokenizer, weight.shape[0]), dtype=torch.long)
        self.allowed_tokens = [id_to_token[i] for i in self.allowed_ids.tolist()]
        self.allowed_unit = self.unit[self.allowed_ids]

    @classmethod
    def from_model(cls, model, tokenizer, top_k: int = 15, batch_size: int = 64):
        return cls(model.get_input_embeddings().weight, tokenizer, top_k, batch_size)

    def identity(self) -> str:
        return self._identity

    def lookup(self, words: list[str]) -> list[list[str]]:
        import torch

        ids = _single_piece_ids(self.tokenizer, words)
        out: list[list[str]] = [[] for _ in words]
        rows = [i for i, t in enumerate(ids) if t is not None]
        # A few spare neighbours: the word itself and its case variants get filtered out.
        k = min(self.top_k + 8, len(self.allowed_tokens))
        with torch.inference_mode():
            for lo in range(0, len(rows), self.batch_size):
                chunk = rows[lo:lo + self.batch_size]
                query = self.unit[torch.tensor([ids[i] for i in chunk])]
                top = (query @ self.allowed_unit.T).topk(k, dim=1).indices
                for i, cols in zip(chunk, top.tolist()):
                    cands = [self.allowed_tokens[c] for c in cols]
                    out[i] = [c for c in cands if usable_candidate(c, words[i])][: self.top_k]
        return out


class WordNetCandidates(WordLevelSource):
    """WordNet synonyms (any word, multi-piece too), from the database files on disk."""

    name = "wordnet"

    def __init__(self, wordnet: WordNet | str | None = None, top_k: int = 15):
        super().__init__(top_k)
        self.wordnet = wordnet if isinstance(wordnet, WordNet) else WordNet(wordnet)

    @property
    def available(self) -> bool:
        return self.wordnet.available

    def unavailable_reason(self) -> str:
        return self.wordnet.unavailable_reason()

    def identity(self) -> str:
        return f"{self.wordnet.identity()}:k{self.top_k}"

    def lookup(self, words: list[str]) -> list[list[str]]:
        out = []
        for w in words:
            syns = [s for s in self.wordnet.synonyms(w) if usable_candidate(s, w)]
            out.append(syns[: self.top_k])
        return out


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar (we report problems ourselves)."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def load_masked_lm(name_or_path: str):
    """(model, tokenizer) of a checkpoint with a *trained* MLM head; ConfigError if the head would
    be freshly initialised (e.g. a sentence-embedding model such as the packaged MiniLM)."""
    from transformers import AutoModelForMaskedLM

    from ..models import _from_pretrained, load_tokenizer, resolve_model

    path = resolve_model(name_or_path)
    with _quiet_transformers():
        model, info = _from_pretrained(AutoModelForMaskedLM, path, output_loading_info=True)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ConfigError(
            f"mlm_model {name_or_path}: the checkpoint has no masked-LM head ({len(missing)} weights "
            f"would be freshly initialised, e.g. {missing[0]}); use a checkpoint trained with MLM "
            f"(e.g. bert-base-uncased) or augment.sources [embedding, wordnet]")
    return model.eval(), load_tokenizer(path)


def has_mlm_architecture(name_or_path: str) -> bool:
    """Does the checkpoint's config say it was saved with an MLM head (cheap: reads config.json)?"""
    from transformers import AutoConfig

    from ..models import _from_pretrained, resolve_model

    try:
        with _quiet_transformers():
            cfg = _from_pretrained(AutoConfig, resolve_model(name_or_path))
    except Exception:
        return False
    return any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in (cfg.architectures or []))


class MaskedLMCandidates(CandidateSource):
    """Top-K masked-LM predictions at a single-wordpiece word, in context (TinyBERT)."""

    name = "mlm"
    # Cap on logits held at once (rows × length × vocab floats, 256 MB): the MLM returns logits
    # for every position, and a 64-row batch of long MNLI pairs would need gigabytes.
    max_logits = 2**26

    def __init__(self, model, tokenizer, top_k: int = 15, batch_size: int = 64, name: str | None = None):
        super().__init__(top_k)
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"mlm_model {name or type(model).__name__}: the tokenizer has no mask token")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        vocab_size = model.get_output_embeddings().weight.shape[0]
        import torch

        allowed = torch.zeros(vocab_size, dtype=torch.bool)
        allowed[_whole_word_ids(tokenizer, vocab_size)] = True
        self.allowed = allowed
        self.id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
        self._identity = (f"mlm:{name or getattr(model, 'name_or_path', '')}:"
                          f"{_hash_tensors(model.state_dict().values())}:{_vocab_hash(tokenizer)}:k{top_k}")

    @classmethod
    def from_pretrained(cls, name_or_path: str, top_k: int = 15, batch_size: int = 64):
        model, tokenizer = load_masked_lm(name_or_path)
        return cls(model, tokenizer, top_k, batch_size, name=str(name_or_path))

    def identity(self) -> str:
        return self._identity

    def candidates(self, slots: Sequence[Slot]) -> list[list[str]]:
        import torch

        tok = self.tokenizer
        out: list[list[str]] = [[] for _ in slots]
        ids = _single_piece_ids(tok, [s.word for s in slots])
        rows = [i for i, t in enumerate(ids) if t is not None]
        max_len = min(tok.model_max_length, getattr(self.model.config, "max_position_embeddings", 512), 512)
        k = min(self.top_k + 8, int(self.allowed.sum()))
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for lo in range(0, len(rows), self.batch_size):
                chunk = rows[lo:lo + self.batch_size]
                masked = [slots[i].text[:slots[i].start] + tok.mask_token + slots[i].text[slots[i].end:]
                          for i in chunk]
                enc = tok(masked, [slots[i].text for i in chunk], padding=True, truncation=True,
                          max_length=max_len, return_tensors="pt")
                per = max(1, self.max_logits // (enc["input_ids"].shape[1] * self.allowed.numel()))
                for sub in range(0, len(chunk), per):
                    part = {key: v[sub:sub + per].to(device) for key, v in enc.items()}
                    logits = self.model(**part).logits
                    for r in range(logits.shape[0]):
                        pos = (part["input_ids"][r] == tok.mask_token_id).nonzero().cpu()
                        if len(pos) == 0:  # the word was truncated away
                            continue
                        scores = logits[r, pos[0, 0]].float().cpu().masked_fill(~self.allowed, float("-inf"))
                        i = chunk[sub + r]
                        cands = [self.id_to_token[c] for c in scores.topk(k).indices.tolist()]
                        out[i] = [c for c in cands if usable_candidate(c, slots[i].word)][: self.top_k]
        return out


class CombinedCandidates(CandidateSource):
    """Several sources as one. ``interleave``: round-robin over the sources' lists (first source
    first), de-duplicated, capped at K. ``fallback``: the first source with any candidates for the
    word (TinyBERT's routing: MLM for single pieces, GloVe, here WordNet, for the rest)."""

    name = "combined"

    def __init__(self, sources: Sequence[CandidateSource], top_k: int = 15, mode: str = "interleave"):
        super().__init__(top_k)
        if mode not in COMBINE_MODES:
            raise ConfigError(f"combine mode {mode!r} is not one of {', '.join(COMBINE_MODES)}")
        self.sources = list(sources)
        self.mode = mode

    def identity(self) -> str:
        return f"combined:{self.mode}:k{self.top_k}[" + "|".join(s.identity() for s in self.sources) + "]"

    def candidates(self, slots: Sequence[Slot]) -> list[list[str]]:
        lists = [s.candidates(slots) for s in self.sources]
        out = []
        for i in range(len(slots)):
            per = [cands[i] for cands in lists]
            if self.mode == "fallback":
                out.append(next((c for c in per if c), [])[: self.top_k])
                continue
            merged: list[str] = []
            seen: set[str] = set()
            for rank in range(max((len(c) for c in per), default=0)):
                for c in per:
                    if rank < len(c) and c[rank].lower() not in seen:
                        seen.add(c[rank].lower())
                        merged.append(c[rank])
            out.append(merged[: self.top_k])
        return out


# ==================================================================================== building

def _teacher(model, tokenizer):
    """(module, tokenizer, name) of the teacher, loading it when ``model`` is a path/hub id."""
    if model is None:
        return None, None, None
    if isinstance(model, (str, Path)):
        from transformers import AutoModel

        from ..models import _from_pretrained, load_tokenizer, resolve_model

        path = resolve_model(model)
        with _quiet_transformers():
            module = _from_pretrained(AutoModel, path)
        return module, tokenizer if tokenizer is not None else load_tokenizer(path), str(model)
    if tokenizer is None:
        raise ConfigError("augmentation with a model object needs its tokenizer too (tokenizer=...)")
    return model, tokenizer, _model_name(model)


def _model_name(model) -> str:
    if isinstance(model, (str, Path)):
        return str(model)
    return getattr(model, "name_or_path", None) or type(model).__name__


def _is_masked_lm(module) -> bool:
    return type(module).__name__.endswith(("ForMaskedLM", "ForPreTraining"))


def build_source(config: AugmentConfig, model=None, tokenizer=None) -> CandidateSource:
    """The candidate source ``config`` asks for, built from the teacher ``model`` (a path/hub id or
    a module + ``tokenizer``). Raises a one-line ConfigError when it cannot be built.

    ``sources: null`` (automatic) uses what is there: an MLM (``mlm_model``, or the teacher when
    it is a masked LM) else the teacher's embedding neighbours, plus WordNet when installed. Listed
    sources are all required: a missing one is an error, not a silent change of the method.
    """
    wordnet = WordNetCandidates(config.wordnet_dir, config.top_k)
    explicit = config.sources is not None
    built: list[CandidateSource] = []
    problems: list[str] = []

    loaded: dict[str, tuple] = {}

    def get_teacher():  # load the teacher only if a source needs it, and only once
        if "teacher" not in loaded:
            loaded["teacher"] = _teacher(model, tokenizer)
        return loaded["teacher"]

    want = list(config.sources) if explicit else list(SOURCES)
    mlm_used = False
    for name in want:
        if name == "mlm":
            if config.mlm_model:
                built.append(MaskedLMCandidates.from_pretrained(config.mlm_model, config.top_k, config.batch_size))
                mlm_used = True
            elif isinstance(model, (str, Path)) and has_mlm_architecture(str(model)):
                built.append(MaskedLMCandidates.from_pretrained(str(model), config.top_k, config.batch_size))
                mlm_used = True
            elif model is not None and not isinstance(model, (str, Path)) and _is_masked_lm(model):
                module, tok, _ = get_teacher()
                built.append(MaskedLMCandidates(module, tok, config.top_k, config.batch_size))
                mlm_used = True
            else:
                what = f"no MLM head in the teacher {_model_name(model)}" if model is not None else "no MLM model given"
                problems.append(f"{what} (set augment.mlm_model to a masked-LM checkpoint)")
        elif name == "embedding":
            if not explicit and mlm_used:
                continue  # MLM covers the same single-piece words, and better (it sees context)
            module, tok, _ = get_teacher()
            if module is None:
                problems.append("no teacher model given for embedding neighbours")
            else:
                built.append(EmbeddingNeighbourCandidates.from_model(module, tok, config.top_k, config.batch_size))
        elif name == "wordnet":
            if wordnet.available:
                built.append(wordnet)
            else:
                problems.append(wordnet.unavailable_reason())
    if explicit and problems:
        raise ConfigError(f"augment.sources {config.sources}: {'; '.join(problems)}")
    if not built:
        raise ConfigError("augmentation needs a candidate source: " + _join_and(problems))
    for p in problems:
        log.info("augmentation: not using a source: %s", p)
    if len(built) == 1:
        return built[0]
    return CombinedCandidates(built, config.top_k, config.combine)


def _join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", and " + items[-1]


def check_available(config: AugmentConfig, model=None, tokenizer=None) -> CandidateSource:
    """Fail fast, before any training, if augmentation cannot run; returns the built source so
    the caller can hand it to ``augment_examples(source=...)`` instead of building it twice."""
    return build_source(config, model, tokenizer)


# ==================================================================================== augmenting

def _example_rng(seed: int, index: int) -> random.Random:
    # One generator per example, derived from (seed, position): the copies of an example do not
    # depend on which other examples were in its batch, nor on the batch size.
    digest = hashlib.sha256(f"kronbit-augment:{seed}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _replace(text: str, spans: list[tuple[int, int]], cands: list[list[str]], rng: random.Random,
             p: float) -> str:
    pieces, last = [], 0
    for (start, end), options in zip(spans, cands):
        if not options:
            continue
        if rng.random() < p:
            pieces += [text[last:start], match_case(rng.choice(options), text[start:end])]
            last = end
    pieces.append(text[last:])
    return "".join(pieces)


def _subset(n: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def _examples_hash(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.text_a, ex.text_b, ex.label]).encode())
        h.update(b"\n")
    return h.hexdigest()


def cache_key(examples: Sequence[Example], config: AugmentConfig, source: CandidateSource) -> str:
    """Hash of everything the output depends on: the inputs, the sampling settings, the source."""
    settings = {k: getattr(config, k) for k in
                ("n_copies", "p_replace", "top_k", "seed", "max_examples", "drop_duplicates")}
    blob = json.dumps({"version": CACHE_VERSION, "examples": _examples_hash(examples),
                       "settings": settings, "source": source.identity()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_cache(path: Path, key: str) -> list[Example] | None:
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            header = json.loads(f.readline())
            if header.get("key") != key:
                return None
            rows = [Example(*json.loads(line)) for line in f]
    except (OSError, ValueError, TypeError, AttributeError):  # JSONDecodeError is a ValueError
        log.warning("augmentation cache %s is unreadable; recomputing", path)
        return None
    if len(rows) != header.get("n_examples"):
        log.warning("augmentation cache %s is incomplete; recomputing", path)
        return None
    return rows


def _write_cache(path: Path, key: str, task: str, config: AugmentConfig, source: CandidateSource,
                 n_originals: int, examples: list[Example]) -> None:
    from ..io import atomic_path

    header = {"kronbit_augment": CACHE_VERSION, "key": key, "task": task, "n_originals": n_originals,
              "n_examples": len(examples), "config": config.to_dict(), "source": source.identity()}
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for ex in examples:
            f.write(json.dumps([ex.text_a, ex.text_b, ex.label]) + "\n")


def augment_examples(examples: Sequence[Example], task: str | GlueTask | None, config: AugmentConfig,
                     model=None, tokenizer=None, *, source: CandidateSource | None = None,
                     progress: bool = True) -> list[Example]:
    """The originals (all of them, unchanged, in order) followed by the augmented copies (example by
    example, copy by copy). Deterministic for ``config.seed``; labels kept; cached in
    ``config.cache_dir`` when set.

    ``model``: the teacher, as a path/hub id (``packaged:minilm``) or a module with ``tokenizer``;
    it provides the embedding neighbours. ``source``: a ready candidate source (e.g. from
    ``check_available``), which replaces ``config.sources``.
    """
    examples = list(examples)
    task_name = (get_task(task) if isinstance(task, str) else task).name if task is not None else "task"
    if not examples:
        return []
    if source is None:
        source = build_source(config, model, tokenizer)
    key = cache_key(examples, config, source)
    cache_path = None
    if config.cache_dir:
        cache_path = Path(config.cache_dir) / f"augment-{task_name}-{key[:20]}.jsonl"
        cached = _read_cache(cache_path, key)
        if cached is not None:
            log.info("augmentation: loaded %d examples from cache %s", len(cached), cache_path)
            return cached

    from tqdm.auto import tqdm

    started = time.perf_counter()
    chosen = _subset(len(examples), config.max_examples, config.seed)
    copies: list[Example] = []
    # Candidates are asked for a chunk of examples at a time: big enough to batch the MLM /
    # embedding look-ups, small enough to show progress.
    chunk = max(config.batch_size, 256)
    with tqdm(total=len(chosen), desc=f"augment {task_name}", unit="ex", disable=not progress) as bar:
        for lo in range(0, len(chosen), chunk):
            idx = chosen[lo:lo + chunk]
            texts = [(examples[i].text_a, examples[i].text_b) for i in idx]
            spans = [[word_spans(t) if t is not None else [] for t in pair] for pair in texts]
            slots = [Slot(t, s, e) for pair, pair_spans in zip(texts, spans)
                     for t, sp in zip(pair, pair_spans) for s, e in sp]
            flat = source.candidates(slots)
            if len(flat) != len(slots):
                raise DataError(f"candidate source {source.name} returned {len(flat)} lists for {len(slots)} words")
            at = 0
            for i, pair, pair_spans in zip(idx, texts, spans):
                per_text = []
                for sp in pair_spans:
                    per_text.append(flat[at:at + len(sp)])
                    at += len(sp)
                copies.extend(_copies(examples[i], pair, pair_spans, per_text, i, config))
            bar.update(len(idx))
    out = examples + copies
    log.info("augmentation: %d examples -> %d copies of %d in %.1f s (source %s)", len(examples),
             len(copies), len(chosen), time.perf_counter() - started, source.name)
    if cache_path is not None:
        _write_cache(cache_path, key, task_name, config, source, len(examples), out)
    return out


def _copies(example: Example, texts, spans, cands, index: int, config: AugmentConfig) -> list[Example]:
    rng = _example_rng(config.seed, index)
    seen = {texts}
    out = []
    for _ in range(config.n_copies):
        new = tuple(_replace(t, sp, c, rng, config.p_replace) if t is not None else None
                    for t, sp, c in zip(texts, spans, cands))
        if config.drop_duplicates:
            if new in seen:
                continue
            seen.add(new)
        out.append(dataclasses.replace(example, text_a=new[0], text_b=new[1]))
    return out
