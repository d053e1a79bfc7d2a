"""A small reader of the WordNet 3.0 database files, for synonym candidates in data augmentation.

Why our own reader: the only thing augmentation needs is "synonyms of this word", which is a
dictionary lookup plus a seek into one text file. nltk would bring a package and a download step
for that; the Debian package ``wordnet-base`` already puts the database files on disk, offline.

The database format (``man 5 wndb``), one file pair per part of speech (noun, verb, adj, adv):

* ``index.<pos>``: one line per lemma, sorted, lowercase, spaces written as ``_``::

      lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt synset_offset...

  The offsets are listed most frequent sense first. Lines starting with two spaces are the licence.
* ``data.<pos>``: one line per synset, found by *byte offset* (the offset is the line's first
  field)::

      offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt [ptr...] ... | gloss

  ``w_cnt`` is two hex digits; adjectives may carry a marker such as ``galore(ip)``; each pointer is
  ``symbol offset pos source/target``.
* ``<pos>.exc``: irregular inflections, ``inflected base [base...]`` (``mice mouse``).

Morphology is WordNet's own ``morphy`` rules (man 7 morphy): the exception list, then a few suffix
detachments (``-ies`` → ``-y``, ``-ing`` → ``-e``/"", ...) kept only when the result is a lemma.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..core.errors import DataError

DEFAULT_DIR = "/usr/share/wordnet"  # where Debian's wordnet-base installs the database
ENV_VAR = "KRONBIT_WORDNET_DIR"
INSTALL_HINT = "apt-get install wordnet-base"

POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}

# WordNet's morphy detachment rules: (suffix, replacement) tried in this order per part of speech.
_SUFFIX_RULES = {
    "n": (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"),
          ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}

_ADJ_MARKER = re.compile(r"\([a-z]+\)$")  # galore(ip), outback(a): syntactic position markers


def default_dir() -> Path:
    """``$KRONBIT_WORDNET_DIR`` if set, else the Debian location."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


class WordNet:
    """Lookups in a WordNet database directory. Index files are read on first use (~1 s)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else default_dir()
        self._index: dict[str, dict[str, tuple[int, list[int]]]] | None = None
        self._exceptions: dict[str, dict[str, list[str]]] | None = None
        self._synset_words: dict[tuple[str, int], tuple[list[str], list[int]]] = {}

    # ---------------------------------------------------------------- availability
    def missing_files(self) -> list[str]:
        """The database files that are not there (the ``.exc`` lists are optional)."""
        need = [f"{kind}.{name}" for name in POS_FILES.values() for kind in ("index", "data")]
        return [f for f in need if not (self.directory / f).is_file()]

    @property
    def available(self) -> bool:
        return not self.missing_files()

    def unavailable_reason(self) -> str:
        """One phrase saying why this WordNet cannot be used and how to fix it ('' if it can)."""
        missing = self.missing_files()
        if not missing:
            return ""
        where = "not found" if len(missing) == 2 * len(POS_FILES) else f"incomplete ({missing[0]} missing)"
        return f"WordNet files {where} at {self.directory} ({INSTALL_HINT}, or set {ENV_VAR})"

    def identity(self) -> str:
        """What distinguishes this database from another one (for cache keys): file sizes."""
        sizes = [f"{f}={(self.directory / f).stat().st_size}"
                 for f in sorted(os.listdir(self.directory)) if f.startswith(("index.", "data."))
                 and f.split(".", 1)[1] in POS_FILES.values()]
        return "wordnet:" + ",".join(sizes)

    # ---------------------------------------------------------------- loading
    def _load(self) -> None:
        if self._index is not None:
            return
        if not self.available:
            raise DataError(self.unavailable_reason())
        index: dict[str, dict[str, tuple[int, list[int]]]] = {}
        exceptions: dict[str, dict[str, list[str]]] = {}
        for pos, name in POS_FILES.items():
            entries: dict[str, tuple[int, list[int]]] = {}
            with open(self.directory / f"index.{name}", encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("  "):  # licence header
                        continue
                    fields = line.split()
                    if len(fields) < 6:
                        continue
                    n_synsets, n_ptrs = int(fields[2]), int(fields[3])
                    # after the pointer symbols: sense_cnt, tagsense_cnt, then the synset offsets
                    tagged = int(fields[5 + n_ptrs])
                    offsets = [int(x) for x in fields[6 + n_ptrs:6 + n_ptrs + n_synsets]]
                    entries[fields[0]] = (tagged, offsets)
            index[pos] = entries
            exc: dict[str, list[str]] = {}
            exc_path = self.directory / f"{name}.exc"
            if exc_path.is_file():
                with open(exc_path, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        fields = line.split()
                        if len(fields) >= 2:
                            exc.setdefault(fields[0], []).extend(fields[1:])
            exceptions[pos] = exc
        self._index, self._exceptions = index, exceptions

    # ---------------------------------------------------------------- lookups
    def base_forms(self, word: str, pos: str) -> list[str]:
        """Lemmas of ``word`` in part of speech ``pos`` (n, v, a, r): itself, exceptions, suffix rules."""
        self._load()
        word = word.lower().replace(" ", "_")
        entries = self._index[pos]
        forms = [word] if word in entries else []
        for base in self._exceptions[pos].get(word, []):
            if base in entries and base not in forms:
                forms.append(base)
        for suffix, repl in _SUFFIX_RULES[pos]:
            if word.endswith(suffix) and len(word) > len(suffix):
                base = word[: len(word) - len(suffix)] + repl
                if base in entries and base not in forms:
                    forms.append(base)
        return forms

    def synsets(self, word: str, pos: str) -> list[int]:
        """Synset offsets of ``word`` as ``pos``, most frequent sense first, over its base forms."""
        out: list[int] = []
        for form in self.base_forms(word, pos):
            out.extend(o for o in self._index[pos][form][1] if o not in out)
        return out

    def _read_synset(self, pos: str, offset: int) -> tuple[list[str], list[int]]:
        """(words, similar-to offsets) of one synset, read at its byte offset in ``data.<pos>``."""
        key = (pos, offset)
        if key not in self._synset_words:
            with open(self.directory / f"data.{POS_FILES[pos]}", "rb") as f:
                f.seek(offset)
                line = f.readline().decode("utf-8", errors="replace")
            fields = line.split(" | ", 1)[0].split()
            if not fields or int(fields[0]) != offset:
                raise DataError(f"{self.directory / ('data.' + POS_FILES[pos])}: no synset at byte "
                                f"offset {offset} (index and data files do not match)")
            n_words = int(fields[3], 16)
            words = [_ADJ_MARKER.sub("", fields[4 + 2 * i]) for i in range(n_words)]
            p_at = 4 + 2 * n_words
            similar: list[int] = []
            if p_at < len(fields):
                for i in range(int(fields[p_at])):
                    symbol, target = fields[p_at + 1 + 4 * i], fields[p_at + 2 + 4 * i]
                    if symbol == "&":  # adjective "similar to": good → bang-up, dandy, great...
                        similar.append(int(target))
            self._synset_words[key] = (words, similar)
        return self._synset_words[key]

    def synonyms(self, word: str, limit: int | None = None) -> list[str]:
        """Synonyms of ``word`` over all parts of speech, most likely first, without ``word``.

        The word's part of speech in context is unknown, so the parts of speech are visited in
        order of how often the word was sense-tagged as each (``tagsense_cnt``) and their senses
        round-robin (sense 1 of each, then sense 2, ...). Head adjectives also contribute their
        "similar to" satellites, which is where most adjective synonyms live. Multi-word lemmas
        come back with spaces; capitalised lemmas (proper nouns) are skipped.
        """
        self._load()
        low = word.lower()
        per_pos = []
        for pos in POS_FILES:
            offsets = self.synsets(low, pos)
            if offsets:
                tagged = max(self._index[pos][f][0] for f in self.base_forms(low, pos))
                per_pos.append((-tagged, list(POS_FILES).index(pos), pos, offsets))
        per_pos.sort()
        exclude = {low, *(f for _, _, pos, _ in per_pos for f in self.base_forms(low, pos))}
        out: list[str] = []
        seen = set(exclude)
        depth = max((len(p[3]) for p in per_pos), default=0)
        for rank in range(depth):
            for _, _, pos, offsets in per_pos:
                if rank >= len(offsets):
                    continue
                words, similar = self._read_synset(pos, offsets[rank])
                for sim in similar:
                    words = words + self._read_synset(pos, sim)[0]
                for w in words:
                    if w != w.lower():
                        continue
                    w = w.replace("_", " ")
                    if w not in seen:
                        seen.add(w)
                        out.append(w)
                        if limit is not None and len(out) >= limit:
                            return out
        return out
