"""Helpers for the augmentation tests: a tiny WordNet database written on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest

from kronbit.data.wordnet import WordNet

LICENCE = "  1 This is a fake WordNet database for tests.\n  2 Lines starting with two spaces are the licence.\n"


def write_fake_wordnet(root: Path) -> Path:
    """A tiny WordNet: movie/film senses, a proper noun, mouse/mice, and "good" as an adjective
    (with similar-to satellites) and, less often tagged, as a noun."""
    root.mkdir(parents=True, exist_ok=True)
    noun_synsets = [
        ("n", ["movie", "film", "picture", "moving_picture", "flick"], [], "a form of entertainment"),
        ("n", ["film", "photographic_film"], [], "a thin coating"),
        ("n", ["Hollywood", "movie_industry"], [], "the film industry"),
        ("n", ["mouse"], [], "a small rodent"),
        ("n", ["mouse", "computer_mouse"], [], "a hand-operated pointing device"),
        ("n", ["good", "goodness"], [], "moral excellence"),
    ]
    adj_synsets = [
        ("a", ["good"], [("&", "1"), ("&", "2")], "having desirable qualities"),
        ("s", ["great", "swell(p)"], [("&", "0")], "very good"),
        ("s", ["bang-up", "cracking"], [("&", "0")], "very good"),
    ]
    noun_off = _write_data(root / "data.noun", noun_synsets)
    adj_off = _write_data(root / "data.adj", adj_synsets)
    (root / "data.verb").write_text(LICENCE)
    (root / "data.adv").write_text(LICENCE)

    def idx(lemma, pos, offs, tagged=1):
        return f"{lemma} {pos} {len(offs)} 1 @ {len(offs)} {tagged} " + " ".join(f"{o:08d}" for o in offs) + "  \n"

    (root / "index.noun").write_text(LICENCE + "".join([
        idx("computer_mouse", "n", [noun_off[4]]),
        idx("film", "n", [noun_off[0], noun_off[1]]),
        idx("good", "n", [noun_off[5]], tagged=1),
        idx("goodness", "n", [noun_off[5]]),
        idx("flick", "n", [noun_off[0]]),
        idx("hollywood", "n", [noun_off[2]]),
        idx("mouse", "n", [noun_off[3], noun_off[4]]),
        idx("movie", "n", [noun_off[0]]),
        idx("movie_industry", "n", [noun_off[2]]),
        idx("moving_picture", "n", [noun_off[0]]),
        idx("picture", "n", [noun_off[0]]),
    ]))
    (root / "index.adj").write_text(LICENCE + "".join([
        idx("bang-up", "a", [adj_off[2]]), idx("cracking", "a", [adj_off[2]]),
        idx("good", "a", [adj_off[0]], tagged=5), idx("great", "a", [adj_off[1]]),
        idx("swell", "a", [adj_off[1]]),
    ]))
    (root / "index.verb").write_text(LICENCE)
    (root / "index.adv").write_text(LICENCE)
    (root / "noun.exc").write_text("mice mouse\n")
    return root


def _write_data(path: Path, synsets) -> list[int]:
    """Write ``data.<pos>``: every line starts with its own byte offset (the database's key);
    pointer targets are given as synset indices and written as those synsets' offsets."""
    header = LICENCE.encode()
    bodies = []
    for ss_type, words, pointers, gloss in synsets:
        word_part = " ".join(f"{w} 0" for w in words)
        ptr_pos = "a" if ss_type == "s" else ss_type
        bodies.append((ss_type, word_part, [(sym, int(t), ptr_pos) for sym, t in pointers], gloss))

    def render(offsets):
        lines = []
        for i, (ss_type, word_part, ptrs, gloss) in enumerate(bodies):
            ptr_part = "".join(f" {sym} {offsets[t]:08d} {p} 0000" for sym, t, p in ptrs)
            n_words = len(word_part.split()) // 2
            lines.append(f"{offsets[i]:08d} 05 {ss_type} {n_words:02x} {word_part} {len(ptrs):03d}"
                         f"{ptr_part} | {gloss}  \n".encode())
        return lines

    offsets = [0] * len(bodies)
    lines = render(offsets)  # widths do not depend on the offsets' values, so one pass fixes them
    at = len(header)
    for i, line in enumerate(lines):
        offsets[i] = at
        at += len(line)
    path.write_bytes(header + b"".join(render(offsets)))
    return offsets


@pytest.fixture
def fake_wn(tmp_path) -> WordNet:
    return WordNet(write_fake_wordnet(tmp_path / "wn"))
