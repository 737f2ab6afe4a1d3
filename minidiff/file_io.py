"""Files that are written atomically and read safely.

Writing: a temporary file in the same folder, flush + fsync, ``os.replace``, fsync the folder, so a
crash or a full disk mid-write leaves the previous file readable (``atomic_write``).
Reading: ``safe_torch_load`` checks every zip entry's CRC-32, then uses ONLY ``torch.load(weights_only=True)``:
a file that needs arbitrary unpickling (which could run code) is refused.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from typing import Any, Callable, Union

import torch

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, unsafe or not a minidiff checkpoint."""


# ---------------------------------------------------------------------------------- writing
def atomic_write(path: PathLike, write: Callable[[Any], None], binary: bool = True) -> None:
    """Call write(file) on a temporary file beside `path`, flush + fsync, rename over `path`, fsync the folder.

    Readers see either the old file or the complete new one, never a half-written one.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise OSError(error.errno, f"could not write {path} ({error.strerror or error}); "
                                       f"the previous file, if any, is untouched") from error
        raise
    _fsync_folder(folder)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """torch.save(obj) to `path` atomically (see atomic_write)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: PathLike) -> None:
    """Write `text` to `path` atomically (see atomic_write)."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------- reading
def safe_torch_load(path: PathLike, map_location: Union[str, torch.device] = "cpu", what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` after checking every zip entry's CRC-32. Errors name the path.

    FileNotFoundError for a missing file; CheckpointError (a ValueError) for a truncated or corrupt file,
    or one that would need arbitrary unpickling (which could run code) to read.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is truncated or corrupt: not a torch zip file")
    try:                                                  # every entry's CRC-32: catches flipped bytes too
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read: {error}") from None
    if damaged is not None:
        raise CheckpointError(f"{path} is corrupt: entry {damaged!r} fails its CRC-32 check")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"refusing to load {path}: it holds pickled Python objects that only "
                              f"weights_only=False could rebuild, and that could run arbitrary code "
                              f"({first_line})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read: {error}") from None
