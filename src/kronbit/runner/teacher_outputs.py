"""Which teacher-output cache a GLUE stage distils from: one built for its training set, or the
one an earlier stage built on the same examples (``distill.teacher_cache`` holds the cache)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..core.hardware import resolve_bf16
from ..distill.teacher_cache import TeacherCache, dataset_fingerprint

log = logging.getLogger("kronbit")


def teacher_cache_for(caches: dict | None, teacher_dir: Path, teacher, train_ds, collator, kd, settings):
    """The teacher's outputs for ``train_ds``: reused from an earlier stage on the same examples
    when it holds what this stage's KD needs, else built (or None: cache off, too large, no KD)."""
    if caches is None or settings.teacher_cache_gb == 0 or not (kd.logits or kd.needs_hidden or kd.needs_attention):
        return None
    key = (str(teacher_dir), dataset_fingerprint(train_ds.features))
    cache = caches.get(key)
    if cache is not None and cache.covers(hidden=kd.needs_hidden, attention=kd.needs_attention):
        log.info("teacher outputs: reusing the cache of an earlier stage (%.2f GB)", cache.nbytes / 1e9)
        return cache
    caches.clear()  # one training set's cache at a time: the memory goes to the new one
    t0 = time.time()
    cache = TeacherCache.build(teacher, train_ds.features, collator, hidden=kd.needs_hidden,
                               attention=kd.needs_attention, batch_size=settings.eval_batch_size,
                               bf16=resolve_bf16(settings.bf16), max_bytes=settings.teacher_cache_gb * 2**30)
    if cache is None:
        log.info("teacher outputs would exceed teacher_cache_gb=%g; the teacher runs on every step",
                 settings.teacher_cache_gb)
        return None
    log.info("teacher outputs cached for %d examples in %.1f s (%.2f GB)", len(cache), time.time() - t0,
             cache.nbytes / 1e9)
    caches[key] = cache
    return cache
