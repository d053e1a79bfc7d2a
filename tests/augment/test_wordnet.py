"""The WordNet database reader, on a tiny hand-written database and (slow) on the Debian files."""

from __future__ import annotations

import os

import pytest

from kronbit.data.augment import WordNetCandidates
from kronbit.data.wordnet import ENV_VAR, WordNet, default_dir
from kronbit.core.errors import DataError


def test_fake_database_offsets_are_self_consistent(fake_wn):
    data = (fake_wn.directory / "data.noun").read_bytes()
    for line in data.splitlines(keepends=True):
        if not line.startswith(b"  "):
            assert int(line.split()[0]) == data.index(line)


def test_synonyms_same_synset_in_order_without_the_word(fake_wn):
    assert fake_wn.synonyms("movie") == ["film", "picture", "moving picture", "flick"]
    # film has two senses: sense 1 words first, then sense 2's
    assert fake_wn.synonyms("film") == ["movie", "picture", "moving picture", "flick", "photographic film"]


def test_synonyms_skip_proper_nouns(fake_wn):
    assert fake_wn.synonyms("movie industry") == []  # "Hollywood" is a proper noun
    assert fake_wn.synonyms("Hollywood") == ["movie industry"]  # lookups are case-insensitive
    assert fake_wn.synonyms("xyzzy") == []


def test_adjectives_use_similar_to_and_parts_of_speech_go_by_tagged_frequency(fake_wn):
    # "good" is tagged 5x as adjective, 1x as noun: adjective sense 1 (with its similar-to
    # satellites, "(p)" marker stripped) comes before noun sense 1.
    assert fake_wn.synonyms("good") == ["great", "swell", "bang-up", "cracking", "goodness"]
    assert fake_wn.synonyms("good", limit=2) == ["great", "swell"]


def test_morphology_exceptions_and_suffix_rules(fake_wn):
    assert fake_wn.base_forms("mice", "n") == ["mouse"]          # noun.exc
    assert fake_wn.base_forms("films", "n") == ["film"]          # -s
    assert fake_wn.base_forms("Movies", "n") == ["movie"]        # lower-cased first
    assert fake_wn.base_forms("films", "v") == []                # no verbs in this database
    assert fake_wn.synonyms("films") == fake_wn.synonyms("film")
    assert fake_wn.synonyms("mice") == ["computer mouse"]


def test_missing_database_says_how_to_fix(tmp_path, monkeypatch):
    wn = WordNet(tmp_path / "nowhere")
    assert not wn.available
    reason = wn.unavailable_reason()
    assert reason == (f"WordNet files not found at {tmp_path / 'nowhere'} "
                      f"(apt-get install wordnet-base, or set {ENV_VAR})")
    with pytest.raises(DataError, match="apt-get install wordnet-base"):
        wn.synonyms("movie")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere"))
    assert default_dir() == tmp_path / "elsewhere"
    assert WordNet().directory == tmp_path / "elsewhere"


def test_partial_database_is_named(fake_wn):
    (fake_wn.directory / "data.verb").unlink()
    assert "incomplete (data.verb missing)" in fake_wn.unavailable_reason()


def test_wordnet_candidates_filter_and_cap(fake_wn):
    src = WordNetCandidates(fake_wn, top_k=3)
    from kronbit.data.augment import Slot

    got = src.candidates([Slot("a good movie", 2, 6), Slot("a good movie", 7, 12)])
    assert got == [["great", "swell", "bang-up"], ["film", "picture", "moving picture"]]
    assert src.identity().startswith("wordnet:data.adj=")


@pytest.mark.slow
def test_real_debian_wordnet():
    wn = WordNet()
    if not wn.available:
        if os.environ.get("CI"):  # the install script provides it: a missing database is a failure there
            pytest.fail(wn.unavailable_reason())
        pytest.skip(f"{wn.unavailable_reason()}")
    assert "film" in wn.synonyms("movie")
    assert "film" in wn.synonyms("movies")
    assert wn.base_forms("mice", "n") == ["mouse"]
    assert wn.base_forms("running", "v")[:1] == ["run"]
    assert {"great", "nice"} & set(wn.synonyms("good", limit=30))
    assert wn.synonyms("the") == []
