"""keep_freed_memory: takes effect on glibc, and KRONBIT_MALLOC=system leaves malloc alone."""

from __future__ import annotations

import pytest

from kronbit.core import allocator


@pytest.mark.skipif(allocator._libc() is None, reason="not glibc")
def test_takes_effect_on_glibc(monkeypatch):
    monkeypatch.delenv("KRONBIT_MALLOC", raising=False)
    assert allocator.keep_freed_memory() is True


def test_opt_out(monkeypatch):
    monkeypatch.setenv("KRONBIT_MALLOC", "system")
    assert allocator.keep_freed_memory() is False
