"""A run directory: what a run writes, and the rule that an existing run is never overwritten
by accident.

Layout::

    OUTPUT/
      config.yaml          the resolved config (every default filled in) + kronbit version
      train.log            human-readable log
      log.jsonl            one JSON object per Trainer log event (loss, lr, eval metrics)
      metrics/eval-*.json  one file per evaluation
      metrics.json         final dev metrics of the selected (best) model
      model/               the final model: HF directory with safetensors + kronbit.json
      checkpoints/         Trainer checkpoints while a run is in progress (for --resume)
"""

from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .. import __version__
from . import distributed
from .errors import KronbitError
from .io import write_yaml

log = logging.getLogger("kronbit")


def prepare(output_dir: str | Path, config: dict, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Check and create a run directory (on the main process only under a multi-process launch)."""
    return Path(distributed.on_main(_prepare, output_dir, config, overwrite=overwrite, resume=resume))


def _prepare(output_dir: str | Path, config: dict, *, overwrite: bool = False, resume: bool = False) -> Path:
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise KronbitError(f"output path exists and is a file: {out}")
    existing = out.is_dir() and any(out.iterdir())
    if existing and resume:
        pass
    elif existing and not overwrite:
        raise KronbitError(f"output directory is not empty: {out} "
                           "(pass --overwrite to replace it, or --resume to continue it)")
    elif existing and overwrite:
        shutil.rmtree(out)
    elif resume:
        raise KronbitError(f"nothing to resume: {out} does not exist or is empty")
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(out / "config.yaml", {"kronbit_version": __version__, **config})
    attach_log_file(out / "train.log")
    return out


# What prepare() writes; a run directory holding nothing else has no work in it yet.
_PREPARED = ("config.yaml", "train.log")


@contextmanager
def discarded_if_unused(out: Path, resume: bool = False) -> Iterator[Path]:
    """Run the body for the run directory ``out`` that ``prepare`` just made; if it fails before
    any work reached the directory (only config.yaml, train.log and empty folders — training
    begins by creating log.jsonl), remove the directory again, so a bad model or tokenizer found
    after the input checks leaves nothing behind. A resumed run's directory is always kept."""
    try:
        yield out
    except BaseException:
        if not resume:
            distributed.on_main(_discard_if_unused, out)
        raise


def _discard_if_unused(out: Path) -> None:
    if any(f.is_file() and f.relative_to(out).as_posix() not in _PREPARED for f in out.rglob("*")):
        return
    detach_log_file()
    shutil.rmtree(out, ignore_errors=True)


def detach_log_file() -> None:
    logger = logging.getLogger("kronbit")
    for h in [h for h in logger.handlers if getattr(h, "_kronbit_file", False)]:
        logger.removeHandler(h)
        h.close()


def attach_log_file(path: Path) -> None:
    """Send kronbit's INFO records to ``path``; the console keeps warnings only (progress bars
    already show where a run is)."""
    logger = logging.getLogger("kronbit")
    detach_log_file()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler._kronbit_file = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # root's last-resort handler would echo INFO-less; keep console quiet
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console._kronbit_file = True  # type: ignore[attr-defined]
    logger.addHandler(console)


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete Trainer checkpoint (``checkpoint-N`` with its ``trainer_state.json``,
    which the Trainer writes last) under ``checkpoints``, or None. A checkpoint cut short by a
    kill has no trainer state and is skipped."""
    if not checkpoints.is_dir():
        return None
    done = []
    for d in checkpoints.glob("checkpoint-*"):
        step = d.name.rsplit("-", 1)[-1]
        if step.isdigit() and (d / "trainer_state.json").is_file() and any(d.glob("*.safetensors")):
            done.append((int(step), d))
    return max(done)[1] if done else None
