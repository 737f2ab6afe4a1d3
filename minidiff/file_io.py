"""Files that are written atomically and read safely.

Writing: a temporary file in the same folder, flush + fsync, ``os.replace``, fsync the folder, so a
crash or a full disk mid-write leaves the previous file readable (``atomic_write``).
Reading: ``safe_torch_load`` checks every zip entry's CRC-32, then uses ONLY ``torch.load(weights_only=True)``:
a file that needs arbitrary unpickling (which could run code) is refused.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pickle
import shutil
import struct
import tempfile
import zipfile
import zlib
from typing import Any, Callable, Dict, Iterator, Union

import torch

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, unsafe or not a minidiff checkpoint."""


# ---------------------------------------------------------------------------------- writing
def atomic_write(path: PathLike, write: Callable[[Any], None], binary: bool = True) -> None:
    """Call write(file) on a temporary file beside `path`, flush + fsync, rename over `path`, fsync the folder.

    Readers see either the old file or the complete new one, never a half-written one. A failed write
    raises OSError naming `path` ("no space left on <path>" for a full disk), even where the writer
    (torch.save's zip writer) turns the disk's error into a RuntimeError of its own.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    file = None
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as raw:
            file = _RecordingFile(raw)
            write(file)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o666 & ~_umask())         # mkstemp makes 0600; a shared file must stay readable
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = error if isinstance(error, OSError) else getattr(file, "error", None)
        if cause is not None:
            raise write_error(path, cause) from error
        raise
    _fsync_folder(folder)


def write_error(path: PathLike, error: OSError, what: str = "the previous file, if any, is untouched") -> OSError:
    """An OSError naming `path`: "no space left on <path>" for a full disk, else "could not write <path>"."""
    path = os.fspath(path)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return OSError(error.errno, f"no space left on {path} (the disk or quota is full); {what}")
    return OSError(error.errno, f"could not write {path} ({error.strerror or error}); {what}")


class _RecordingFile:
    """A file object that remembers the first OSError its write() raised (torch.save hides it)."""

    def __init__(self, file):
        self._file, self.error = file, None

    def write(self, data):
        try:
            return self._file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def __getattr__(self, name):
        return getattr(self._file, name)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """torch.save(obj) to `path` atomically (see atomic_write)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: PathLike) -> None:
    """Write `text` to `path` atomically (see atomic_write)."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_save_safetensors(tensors: Dict[str, torch.Tensor], path: PathLike,
                            metadata: Union[Dict[str, str], None] = None) -> None:
    """Write a flat {name: tensor} dict (and string `metadata` in the header) as a .safetensors file
    atomically (see atomic_write)."""
    from safetensors.torch import save as safetensors_bytes
    contiguous = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    atomic_write(path, lambda f: f.write(safetensors_bytes(contiguous, metadata=metadata)))


@contextlib.contextmanager
def atomic_folder(folder: PathLike) -> Iterator[str]:
    """Fill a temporary sibling of `folder`, then swap it in: a failed save never touches the old folder.

        with atomic_folder("my_model") as tmp:
            write files into tmp

    On success the old folder (if any) is renamed aside, the new one renamed into place, the old one
    deleted. Files of the old folder that the new save does not write (a README, sample images) are
    copied over first. On any error the temporary folder is removed and `folder` is as it was.
    A crash between the two renames leaves the old save in a ``.<name>.old-*`` sibling.
    """
    folder = os.path.abspath(os.fspath(folder))
    parent, name = os.path.split(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"cannot save into {folder}: it is a file, not a folder")
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.new-", dir=parent)
    try:
        yield tmp
        if os.path.isdir(folder):
            for entry in os.listdir(folder):             # keep what the new save does not replace
                source, target = os.path.join(folder, entry), os.path.join(tmp, entry)
                if os.path.isfile(source) and not os.path.lexists(target):
                    shutil.copy2(source, target)
        os.chmod(tmp, 0o777 & ~_umask())                  # mkdtemp makes 0700
        _fsync_folder(tmp)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError):
            raise write_error(folder, error, "the previous save, if any, is untouched") from error
        raise
    old = None
    if os.path.isdir(folder):
        old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
        os.replace(folder, old)                          # an empty folder is replaced by a rename (POSIX)
    os.replace(tmp, folder)
    _fsync_folder(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class RunFolderBusy(ValueError):
    """Another process holds the lock on a run folder (one folder, one trainer)."""


LOCK_NAME = ".minidiff.lock"
_held_locks: Dict[str, list] = {}                        # folder -> [file descriptor, depth], this process's


@contextlib.contextmanager
def run_folder_lock(folder: PathLike) -> Iterator[str]:
    """Hold an exclusive lock on the run folder `folder` while the block runs: one folder, one trainer.

    The lock is ``fcntl.flock`` on ``folder/.minidiff.lock`` (which records the holder's pid); the
    kernel releases it when the process ends, however it ends, so a crash never leaves a stale lock.
    Re-entrant within one process. RunFolderBusy (a ValueError) when another process holds it; a no-op
    where fcntl does not exist (Windows).
    """
    try:
        import fcntl
    except ImportError:                                   # pragma: no cover (Windows)
        yield os.fspath(folder)
        return
    folder = os.path.abspath(os.fspath(folder))
    if folder in _held_locks:
        _held_locks[folder][1] += 1
    else:
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise NotADirectoryError(f"the run folder {folder} is a file, not a folder")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderBusy(f"another trainer{f' (pid {holder})' if holder.isdigit() else ''} is using "
                                    f"{folder}; wait for it to finish or choose another output folder") from None
            raise
        try:                                              # the holder's pid, for the message above
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:                                   # a full disk: the lock holds without it
            pass
        _held_locks[folder] = [fd, 1]
    try:
        yield folder
    finally:
        _held_locks[folder][1] -= 1
        if _held_locks[folder][1] == 0:
            os.close(_held_locks.pop(folder)[0])      # closing the descriptor releases the flock


def _umask() -> int:
    """The process's umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
# What zipfile and torch.load raise on damaged bytes. A flipped bit in a header can name an unknown
# compression method (NotImplementedError), an encrypted entry (RuntimeError), a bad deflate stream
# (zlib.error), a short record (struct.error) or a huge size (OverflowError), besides the usual ones.
_DAMAGED_ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError,
                       zlib.error, struct.error, OverflowError, KeyError, IndexError)
_MSDOS_FOLDER = 0x10                                      # the folder bit of a zip entry's external attributes


def safe_torch_load(path: PathLike, map_location: Union[str, torch.device] = "cpu", what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` after checking every zip entry's CRC-32. Errors name the path.

    FileNotFoundError for a missing file; CheckpointError (a ValueError) for a truncated or corrupt file,
    or one that would need arbitrary unpickling (which could run code) to read.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        is_zip = zipfile.is_zipfile(path)
        if is_zip:                                        # every entry's CRC-32: catches flipped bytes too
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
                # torch.load reads a tensor stored in a folder-marked entry as uninitialised memory
                folders = [entry.filename for entry in archive.infolist()
                           if entry.is_dir() or entry.external_attr & _MSDOS_FOLDER]
    except _DAMAGED_ZIP_ERRORS as error:
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read: {error}") from None
    if not is_zip:
        raise CheckpointError(f"{path} is truncated or corrupt: not a torch zip file")
    if damaged is not None:
        raise CheckpointError(f"{path} is corrupt: entry {damaged!r} fails its CRC-32 check")
    if folders:
        raise CheckpointError(f"{path} is corrupt: entry {folders[0]!r} is marked as a folder, "
                              f"and a torch file holds only files")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"refusing to load {path}: it holds pickled Python objects that only "
                              f"weights_only=False could rebuild, and that could run arbitrary code "
                              f"({first_line})") from None
    except _DAMAGED_ZIP_ERRORS as error:
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read: {error}") from None


def safe_load_safetensors(path: PathLike, what: str = "weights file") -> Dict[str, torch.Tensor]:
    """A .safetensors file as {name: tensor} on the CPU. The format holds only a JSON header and raw
    tensor bytes, so reading it cannot run code. Errors name the path: FileNotFoundError, CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return safetensors_load(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read: {error}") from None


def sha256_of(path: PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex (a pretrained index records it to catch damaged weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
