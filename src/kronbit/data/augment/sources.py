"""Where replacement candidates come from (``CandidateSource``): a masked LM's predictions,
neighbours in the teacher's word-embedding matrix, WordNet synonyms, or several combined; and
``build_source`` / ``check_available``, which pick them from an ``AugmentConfig``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Iterator, Sequence

import torch
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM
from transformers.utils import logging as hf_logging

from ...core.errors import ConfigError
from ...models.encoders import load_tokenizer
from ...models.hub import from_pretrained
from ...models.resolve import resolve_model
from ..wordnet import WordNet
from .config import _REPLACEABLE, COMBINE_MODES, SOURCES, STOP_WORDS, AugmentConfig, Slot, usable_candidate

log = logging.getLogger("kronbit")


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
    path = resolve_model(name_or_path)
    with _quiet_transformers():
        model, info = from_pretrained(AutoModelForMaskedLM, path, output_loading_info=True)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ConfigError(
            f"mlm_model {name_or_path}: the checkpoint has no masked-LM head ({len(missing)} weights "
            f"would be freshly initialised, e.g. {missing[0]}); use a checkpoint trained with MLM "
            f"(e.g. bert-base-uncased) or augment.sources [embedding, wordnet]")
    return model.eval(), load_tokenizer(path)


def has_mlm_architecture(name_or_path: str) -> bool:
    """Does the checkpoint's config say it was saved with an MLM head (cheap: reads config.json)?"""
    try:
        with _quiet_transformers():
            cfg = from_pretrained(AutoConfig, resolve_model(name_or_path))
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
        path = resolve_model(model)
        with _quiet_transformers():
            module = from_pretrained(AutoModel, path)
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


