"""TinyBERT-style augmentation: sampling, candidate sources, cache, availability errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from kronbit.core.config import Config
from kronbit.data.augment import (
    AugmentConfig, CandidateSource, CombinedCandidates, EmbeddingNeighbourCandidates,
    MaskedLMCandidates, Slot, WordNetCandidates, augment_examples, check_available,
    match_case, usable_candidate, word_spans,
)
from kronbit.data.glue import Example
from kronbit.core.errors import ConfigError


class FakeSource(CandidateSource):
    """Fixed candidates per lower-cased word (``default`` for any other word); counts its calls."""

    name = "fake"

    def __init__(self, table=None, default=None, top_k: int = 15):
        super().__init__(top_k)
        self.table = table or {}
        self.default = default or []
        self.calls = 0
        self.words: list[str] = []

    def identity(self) -> str:
        return "fake:" + json.dumps([self.table, self.default], sort_keys=True)

    def candidates(self, slots):
        self.calls += 1
        self.words += [s.word for s in slots]
        return [list(self.table.get(s.word.lower(), self.default))[: self.top_k] for s in slots]


TABLE = {"movie": ["film", "picture", "flick"], "good": ["great", "fine", "nice", "decent"],
         "plot": ["story", "storyline"], "actors": ["cast", "performers"], "dull": ["boring", "tedious"]}

SENTENCES = ["a good movie .", "the plot is dull , the actors are good", "Good movie !",
             "it is n't a good plot", "nothing here", "the MOVIE was good and the plot was dull"]


def examples(n: int | None = None) -> list[Example]:
    out = [Example(s, None, i % 2) for i, s in enumerate(SENTENCES)]
    if n is not None:
        out = [Example(f"{out[i % len(out)].text_a} {i}", None, i % 2) for i in range(n)]
    return out


def run(exs, source=None, **cfg):
    cfg.setdefault("n_copies", 4)
    return augment_examples(exs, "sst2", AugmentConfig(**cfg), source=source or FakeSource(TABLE),
                            progress=False)


# ---------------------------------------------------------------------------- config

def test_config_defaults_and_validation():
    cfg = AugmentConfig()
    assert (cfg.n_copies, cfg.p_replace, cfg.top_k, cfg.sources) == (10, 0.4, 15, None)
    assert isinstance(cfg, Config)
    for bad, match in [({"p_replace": 1.5}, r"p_replace must be in \[0, 1\]"),
                       ({"n_copies": 0}, "n_copies must be >= 1"),
                       ({"sources": ["glove"]}, "unknown source 'glove'; valid: mlm, embedding, wordnet"),
                       ({"sources": []}, "sources is empty"),
                       ({"combine": "mix"}, "not one of interleave, fallback")]:
        with pytest.raises(ConfigError, match=match) as e:
            AugmentConfig(**bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="did you mean 'p_replace'"):
        AugmentConfig.from_dict({"p_replce": 0.3})


# ---------------------------------------------------------------------------- words

def test_word_spans_skip_stop_words_punctuation_contractions_numbers():
    text = "The movie , isn't it n't 2nd café good-looking ACTORS a x !"
    words = [text[s:e] for s, e in word_spans(text)]
    assert words == ["movie", "good", "looking", "ACTORS"]


def test_usable_candidate_and_case():
    assert usable_candidate("film", "movie") and usable_candidate("moving picture", "movie")
    assert usable_candidate("bang-up", "good")
    for bad in ("movie", "Movie", "the", "##s", "[unused0]", "x", "2nd", "can't"):
        assert not usable_candidate(bad, "movie"), bad
    assert [match_case("film", w) for w in ("movie", "Movie", "MOVIE", "I")] == ["film", "Film", "FILM", "Film"]


# ---------------------------------------------------------------------------- sampling

def test_originals_first_labels_kept_and_counts():
    exs = examples()
    out = run(exs, n_copies=5, drop_duplicates=False)
    assert out[: len(exs)] == exs
    copies = out[len(exs):]
    assert len(copies) == 5 * len(exs)
    # copies come example by example, each with its example's label
    for i, ex in enumerate(exs):
        assert all(c.label == ex.label and c.text_b is None for c in copies[5 * i: 5 * i + 5])


def test_same_seed_same_output_different_seed_different():
    exs = examples()
    a, b = run(exs, seed=1), run(exs, seed=1)
    c = run(exs, seed=2)
    assert a == b
    assert a[len(exs):] != c[len(exs):]


def test_output_independent_of_batch_size():
    exs = examples(300)  # more than one 256-example chunk at batch_size 1
    one = run(exs, batch_size=1, n_copies=2)
    big = run(exs, batch_size=512, n_copies=2)
    assert one == big
    assert len(one) > 300


def test_p_zero_copies_equal_originals():
    exs = examples()
    out = run(exs, p_replace=0.0, n_copies=3, drop_duplicates=False)
    assert out[len(exs):] == [ex for ex in exs for _ in range(3)]
    # TinyBERT drops copies identical to the original: with p=0 none are left.
    assert run(exs, p_replace=0.0, n_copies=3) == exs


def test_p_one_replaces_every_content_word_and_nothing_else():
    src = FakeSource(default=["zzz"])
    exs = [Example("The movie , is n't GOOD ! Really-good 42 acting .", None, 1)]
    out = run(exs, source=src, p_replace=1.0, n_copies=1)
    assert out[1].text_a == "The zzz , is n't ZZZ ! Zzz-zzz 42 zzz ."
    assert sorted(set(src.words)) == ["GOOD", "Really", "acting", "good", "movie"]


def test_drop_duplicates_keeps_distinct_copies():
    exs = [Example("good", None, 0)]  # one word, four candidates: at most 4 distinct copies
    out = run(exs, n_copies=30, p_replace=0.5)
    texts = [e.text_a for e in out[1:]]
    assert len(texts) == len(set(texts)) and set(texts) <= {"great", "fine", "nice", "decent"}


def test_pair_task_augments_both_sentences():
    exs = [Example("a good movie", "the plot is dull", 2), Example("good plot", "dull movie", 0)]
    out = augment_examples(exs, "mnli", AugmentConfig(n_copies=3, p_replace=1.0, drop_duplicates=False),
                           source=FakeSource(TABLE), progress=False)
    assert out[:2] == exs
    for c, ex in zip(out[2:], [exs[0]] * 3 + [exs[1]] * 3):
        assert c.label == ex.label
        assert c.text_a != ex.text_a and c.text_b != ex.text_b
        assert len(c.text_b.split()) == len(ex.text_b.split())


def test_max_examples_augments_a_seeded_subset():
    exs = examples(40)
    out = run(exs, max_examples=5, n_copies=2, drop_duplicates=False)
    assert out[:40] == exs and len(out) == 40 + 10
    assert run(exs, max_examples=5, n_copies=2, drop_duplicates=False) == out


# ---------------------------------------------------------------------------- cache

def test_cache_second_call_makes_no_candidate_calls(tmp_path, caplog):
    exs = examples()
    src = FakeSource(TABLE)
    cfg = AugmentConfig(n_copies=3, cache_dir=str(tmp_path / "cache"))
    first = augment_examples(exs, "sst2", cfg, source=src, progress=False)
    calls = src.calls
    assert calls > 0
    files = list((tmp_path / "cache").glob("augment-sst2-*.jsonl"))
    assert len(files) == 1
    with caplog.at_level(logging.INFO, logger="kronbit"):
        second = augment_examples(exs, "sst2", cfg, source=src, progress=False)
    assert second == first and src.calls == calls
    assert "loaded" in caplog.text
    header = json.loads(files[0].read_text().splitlines()[0])
    assert header["n_originals"] == len(exs) and header["n_examples"] == len(first)
    # Anything that changes the output changes the key: a new seed recomputes into a new file.
    augment_examples(exs, "sst2", cfg.replace(seed=7), source=src, progress=False)
    assert src.calls == calls + 1
    assert len(list((tmp_path / "cache").glob("*.jsonl"))) == 2
    # batch_size does not change the output, so it shares the cache entry.
    augment_examples(exs, "sst2", cfg.replace(batch_size=2), source=src, progress=False)
    assert src.calls == calls + 1


def test_truncated_cache_is_recomputed(tmp_path):
    exs = examples()
    src = FakeSource(TABLE)
    cfg = AugmentConfig(n_copies=3, cache_dir=str(tmp_path))
    first = augment_examples(exs, "sst2", cfg, source=src, progress=False)
    (path,) = tmp_path.glob("*.jsonl")
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:3]))
    again = augment_examples(exs, "sst2", cfg, source=src, progress=False)
    assert again == first and src.calls == 2


# ---------------------------------------------------------------------------- embedding neighbours

def tiny_embedding_vocab():
    from transformers import BertTokenizerFast

    rows = {  # token: embedding; cosines to "good": great .994, fine .707, bad -1
        "[PAD]": (1, .01, 0), "[UNK]": (1, .01, 0), "[CLS]": (1, .01, 0), "[SEP]": (1, .01, 0),
        "[MASK]": (1, .01, 0), "[unused0]": (1, 0, 0), "##s": (1, 0, 0), "the": (.99, 0, 0),
        "x": (1, 0, 0), "good": (1, 0, 0), "great": (.9, .1, 0), "fine": (.7, .7, 0), "bad": (-1, 0, 0),
        "movie": (0, 0, 1), "film": (0, .1, 1), "plot": (0, 1, 1),
    }
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(rows)}, do_lower_case=True)
    return torch.tensor(list(rows.values()), dtype=torch.float32), tok


def test_embedding_neighbours_on_hand_made_matrix():
    emb, tok = tiny_embedding_vocab()
    src = EmbeddingNeighbourCandidates(emb, tok, top_k=2)
    slots = [Slot("a good movie", 2, 6), Slot("a good movie", 7, 12), Slot("Good", 0, 4),
             Slot("movies", 0, 6), Slot("zebra", 0, 5)]
    assert src.candidates(slots) == [["great", "fine"], ["film", "plot"], ["great", "fine"], [], []]
    # All whole-word candidates, never special/[unused]/## pieces/stop words/single letters:
    full = EmbeddingNeighbourCandidates(emb, tok, top_k=20).candidates([Slot("good", 0, 4)])[0]
    assert full[:2] == ["great", "fine"] and full[-1] == "bad"
    assert sorted(full) == ["bad", "film", "fine", "great", "movie", "plot"]


def test_embedding_neighbours_independent_of_batch_size():
    emb, tok = tiny_embedding_vocab()
    words = ["good", "movie", "plot", "bad", "film", "fine", "great"]
    slots = [Slot(w, 0, len(w)) for w in words]
    assert (EmbeddingNeighbourCandidates(emb, tok, 3, batch_size=1).candidates(slots)
            == EmbeddingNeighbourCandidates(emb, tok, 3, batch_size=64).candidates(slots))


def test_combined_interleave_and_fallback():
    a = FakeSource({"good": ["great", "fine", "nice"]})
    b = FakeSource({"good": ["fine", "swell"], "movies": ["films"]})
    slots = [Slot("good", 0, 4), Slot("movies", 0, 6)]
    # round-robin: a1, b1, a2 (dup of b1, skipped), b2, a3
    assert CombinedCandidates([a, b], top_k=4).candidates(slots) == [["great", "fine", "swell", "nice"], ["films"]]
    assert CombinedCandidates([a, b], top_k=2).candidates(slots) == [["great", "fine"], ["films"]]
    assert CombinedCandidates([a, b], 15, "fallback").candidates(slots) == [["great", "fine", "nice"], ["films"]]


# ---------------------------------------------------------------------------- masked LM

MLM_WORDS = "good great fine nice bad awful movie film plot story actor the a is was and dull fun".split()


@pytest.fixture
def tiny_mlm(tmp_path):
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "##s", *MLM_WORDS]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    path = tmp_path / "tiny-mlm"
    BertForMaskedLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_masked_lm_candidates_in_context_and_batched(tiny_mlm):
    src = MaskedLMCandidates.from_pretrained(str(tiny_mlm), top_k=5, batch_size=1)
    slots = [Slot("a good movie", 2, 6), Slot("the plot was dull", 9, 13), Slot("good films", 5, 10),
             Slot("a dull story and a fun plot", 2, 6)]
    got = src.candidates(slots)
    assert got[2] == []  # "films" = film + ##s: not one wordpiece
    for cands, slot in zip(got, slots):
        assert all(c in MLM_WORDS and usable_candidate(c, slot.word) for c in cands)
    assert all(len(got[i]) == 5 for i in (0, 1, 3))
    big = MaskedLMCandidates.from_pretrained(str(tiny_mlm), top_k=5, batch_size=8)
    assert big.candidates(slots) == got
    assert src.identity() == big.identity()


def test_fresh_mlm_head_is_refused(tiny_bert):
    with pytest.raises(ConfigError) as e:
        MaskedLMCandidates.from_pretrained(str(tiny_bert))
    msg = str(e.value)
    assert "\n" not in msg and "has no masked-LM head" in msg and "cls.predictions" in msg


# ---------------------------------------------------------------------------- availability

def test_nothing_available_is_one_line_error(tmp_path):
    cfg = AugmentConfig(wordnet_dir=str(tmp_path / "no-wordnet"))
    with pytest.raises(ConfigError) as e:
        check_available(cfg)
    assert str(e.value) == (
        "augmentation needs a candidate source: no MLM model given (set augment.mlm_model to a "
        "masked-LM checkpoint), no teacher model given for embedding neighbours, and WordNet files "
        f"not found at {tmp_path / 'no-wordnet'} (apt-get install wordnet-base, or set KRONBIT_WORDNET_DIR)")


def test_listed_sources_are_all_required(tmp_path, tiny_bert):
    with pytest.raises(ConfigError, match=r"augment.sources \['wordnet'\]: WordNet files not found .*"
                                          r"apt-get install wordnet-base"):
        check_available(AugmentConfig(sources=["wordnet"], wordnet_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="no MLM head in the teacher"):
        check_available(AugmentConfig(sources=["mlm"]), str(tiny_bert))
    with pytest.raises(ConfigError, match="has no masked-LM head"):
        check_available(AugmentConfig(mlm_model=str(tiny_bert)), str(tiny_bert))


def test_automatic_sources(tmp_path, tiny_bert, tiny_mlm, fake_wn):
    wn_dir = str(fake_wn.directory)
    src = check_available(AugmentConfig(wordnet_dir=wn_dir), str(tiny_bert))
    assert isinstance(src, CombinedCandidates)
    assert [type(s) for s in src.sources] == [EmbeddingNeighbourCandidates, WordNetCandidates]
    # no WordNet: embedding neighbours alone
    src = check_available(AugmentConfig(wordnet_dir=str(tmp_path / "none")), str(tiny_bert))
    assert isinstance(src, EmbeddingNeighbourCandidates)
    # an MLM replaces the embedding neighbours (same words, but in context)
    src = check_available(AugmentConfig(wordnet_dir=wn_dir, mlm_model=str(tiny_mlm)), str(tiny_bert))
    assert [type(s) for s in src.sources] == [MaskedLMCandidates, WordNetCandidates]
    # a teacher that is itself a masked LM is used as the MLM
    src = check_available(AugmentConfig(wordnet_dir=wn_dir), str(tiny_mlm))
    assert [type(s) for s in src.sources] == [MaskedLMCandidates, WordNetCandidates]
    # WordNet alone needs no model
    assert isinstance(check_available(AugmentConfig(wordnet_dir=wn_dir)), WordNetCandidates)


def test_end_to_end_with_teacher_path(tiny_bert, fake_wn, tmp_path):
    exs = [Example("a good movie", None, 1), Example("the plot was dull", None, 0)]
    cfg = AugmentConfig(n_copies=4, p_replace=1.0, wordnet_dir=str(fake_wn.directory), cache_dir=str(tmp_path))
    out = augment_examples(exs, "sst2", cfg, str(tiny_bert), progress=False)
    assert out[:2] == exs and len(out) > 2
    original = {e.label: e.text_a for e in exs}
    assert all(c.text_a != original[c.label] for c in out[2:])  # p=1: every copy changed
    assert augment_examples(exs, "sst2", cfg, str(tiny_bert), progress=False) == out


@pytest.mark.slow
def test_packaged_minilm_embedding_neighbours(minilm_dir):
    from kronbit.models.encoders import load_tokenizer

    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm_dir))
    src = EmbeddingNeighbourCandidates.from_model(model, load_tokenizer(minilm_dir), top_k=10)
    (movie,) = src.candidates([Slot("movie", 0, 5)])
    assert "film" in movie or "films" in movie
    assert all(usable_candidate(c, "movie") for c in movie)
