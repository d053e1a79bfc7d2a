"""Multi-process runs through the existing engine (torchrun / Accelerate launch, DDP via the
Hugging Face Trainer). kronbit adds no training engine of its own; it only makes sure that the
work around the Trainer — creating run and stage directories, writing metrics and tables, saving
models — happens once, on the main process, while the others wait at a barrier.

The process group is created at the start of a command (``init``), before any directory is
touched, with the backend the Trainer would pick (NCCL on GPUs, gloo on CPU); Accelerate then uses
that group instead of creating its own.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .errors import KronbitError


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def init() -> None:
    """Join the launcher's process group (a no-op in a single process)."""
    if world_size() <= 1:
        return
    if dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def shutdown(clean: bool = True) -> None:
    """Leave the process group before the interpreter exits. Without this, gloo's worker threads
    are still joinable when C++ static destructors run, and a process can abort at exit
    ("terminate called without an active exception") after all its work succeeded. On a clean
    exit every process first meets at a barrier, so none tears down a link another still uses;
    after an error it only leaves (a barrier could wait for a process that already gave up)."""
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def on_main(fn, *args, **kwargs):
    """Run ``fn`` on the main process only (directory checks and writes); the others wait and
    get its result. A user error there (``KronbitError``) is raised on every process, so no
    process is left waiting for one that gave up."""
    if world_size() <= 1 or not (dist.is_available() and dist.is_initialized()):
        return fn(*args, **kwargs)
    box: list = [None]
    if is_main_process():
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except KronbitError as e:
            box[0] = ("error", str(e))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise KronbitError(value)
    return value
