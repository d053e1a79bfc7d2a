"""Making the augmented copies of a training set, with a cache keyed by everything that changes
them (the examples, the config, the candidate source)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from ...core.errors import DataError
from ...core.io import atomic_path
from ..glue import Example, GlueTask, get_task
from .config import CACHE_VERSION, AugmentConfig, Slot, match_case, word_spans
from .sources import CandidateSource, build_source

log = logging.getLogger("kronbit")


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
