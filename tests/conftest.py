"""Shared test fixtures: where the local data lives, and tiny random-init models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import data_root, make_tiny_bert


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    path = data_root() / "glue"
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"GLUE data not found at {path}; set KRONBIT_DATA_ROOT")
        pytest.skip(f"GLUE data not found at {path}; set KRONBIT_DATA_ROOT")
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from kronbit.core.errors import ModelError
    from kronbit.models.packaged import packaged_model_dir

    try:
        return packaged_model_dir("minilm")
    except ModelError as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))


@pytest.fixture
def tiny_bert(tmp_path) -> Path:
    return make_tiny_bert(tmp_path / "tiny-bert")
