"""Multi-process runs through the existing engine (torchrun / Accelerate launch, DDP via the
Hugging Face Trainer). kronbit adds no training engine of its own; it only makes sure that the
work around the Trainer — creating the run directory, writing metrics, saving the final model —
happens once, on the main process, while the other processes wait.

The process group does not exist yet when the run directory is prepared (the Trainer creates it
later), so the first rendezvous is a marker file: the main process writes the run directory and a
marker holding the launcher's run id; the others wait for that marker.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .errors import KronbitError

MARKER = ".kronbit-launch"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def launch_id() -> str:
    """The same string on every process of one launch (torchrun sets TORCHELASTIC_RUN_ID)."""
    return os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "") + "-" + str(world_size())


def mark_prepared(out: Path) -> None:
    if world_size() > 1:
        (out / MARKER).write_text(launch_id())


def wait_until_prepared(out: Path, timeout: float = 600.0) -> None:
    """Non-main processes: wait for the main process to have prepared ``out`` for this launch."""
    deadline = time.time() + timeout
    marker = out / MARKER
    while True:
        try:
            if marker.read_text() == launch_id():
                return
        except OSError:
            pass
        if time.time() > deadline:
            raise KronbitError(f"process {rank()}: the main process did not prepare {out} within {timeout:.0f}s")
        time.sleep(0.1)


def barrier() -> None:
    """Wait for every process (a no-op in a single process or before the process group exists)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
