"""Atomic file output (write to a temporary name in the same directory, then rename), and reading
checks that name a damaged or truncated file in one line.

Why: a run that dies (or a disk that fills) halfway through a write must never leave a
half-written file where a good one used to be. ``os.replace`` is atomic on POSIX when source and
target are on the same filesystem, which a sibling temp file guarantees.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import KronbitError, ModelError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it over ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; a file kronbit writes follows the umask
        os.replace(tmp_path, path)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        _raise_if_disk_full(e, path)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; on success it replaces ``path`` as a whole.

    A previous directory at ``path`` is moved aside first and deleted only after the new one is in
    place, so at every instant either the old or the new complete directory exists.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_disk_full(e, path)
        raise
    _follow_umask(tmp)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    """The process umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _follow_umask(root: Path) -> None:
    """Give a freshly written tree the modes the umask gives any new file: mkdtemp makes the
    directory 0700, and some writers (safetensors' ``save_file``) make their files 0600."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for top, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(top, name), 0o777 & ~mask)
        for name in files:
            f = os.path.join(top, name)
            executable = os.stat(f).st_mode & 0o111
            os.chmod(f, (0o777 if executable else 0o666) & ~mask)


def _raise_if_disk_full(e: BaseException, path: Path) -> None:
    """A full disk is the user's to fix, not a kronbit bug: one line, and the old output stays."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise KronbitError(f"disk full while writing {path}; the previous version (if any) is kept — "
                           "free some space and run again") from None


# ------------------------------------------------------------------------------------------------
# Reading: a damaged or truncated file is named in one line.


def safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor table of a safetensors file, read without loading (or unpickling) anything."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ModelError(f"{path}: truncated safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise ModelError(f"{path}: truncated safetensors file (header says {n} bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ModelError(f"{path}: damaged safetensors header") from None
    try:
        header.pop("__metadata__", None)
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (AttributeError, KeyError, TypeError, IndexError, ValueError):  # JSON, but not a tensor table
        raise ModelError(f"{path}: damaged safetensors header") from None
    if 8 + n + end > size:
        raise ModelError(f"{path}: truncated safetensors file (tensors need {8 + n + end} bytes, file has {size})")
    return header


def damaged_file(directory: str | os.PathLike) -> str | None:
    """One line naming the first damaged or truncated JSON or safetensors file in a model
    directory, or None (not a directory, or every file reads). Used to explain a load that failed
    deep inside a library with a message that names no file."""
    d = Path(directory)
    if not d.is_dir():
        return None
    for f in sorted(d.glob("*.json")):
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            return f"{f}: not valid JSON ({str(e).splitlines()[0]}); the file is damaged or truncated"
    for f in sorted(d.glob("*.safetensors")):
        try:
            safetensors_header(f)
        except ModelError as e:
            return f"{e}; the file is damaged or truncated"
    return None
