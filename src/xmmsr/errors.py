"""Exceptions with messages that name the file, the field and the fix."""

from __future__ import annotations

import errno
from pathlib import Path


class InputError(ValueError):
    """Bad user input: the message names the file, the offending field and how to fix it."""

    def __init__(self, path: str | Path | None, field: str, problem: str, fix: str) -> None:
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}{field}: {problem}. Fix: {fix}")
        self.path = None if path is None else str(path)
        self.field = field


class StorageError(OSError):
    """A file-system failure (disk full, quota, permissions, read-only) explained with the path and the fix."""

    def __str__(self) -> str:
        return str(self.strerror)


_STORAGE_PROBLEMS = {
    errno.ENOSPC: ("no space is left on the device", "free space, or set `outdir` in the config to a file system "
                   "with room; the partial output was removed, so rerunning continues where it stopped"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space within your quota, or set `outdir` to a file system "
                   "with room; the partial output was removed, so rerunning continues where it stopped"),
    errno.EACCES: ("permission denied", "make the file and its directory readable and writable by you "
                   "(chmod/chown), or set `outdir` in the config to a directory you own"),
    errno.EPERM: ("the operation is not permitted", "check the ownership and permissions of the file and its "
                  "directory, or set `outdir` in the config to a directory you own"),
    errno.EROFS: ("the file system is read-only", "set `outdir` in the config to a writable file system"),
}


def storage_error(exc: OSError, path: str | Path) -> OSError:
    """``exc`` turned into a :class:`StorageError` naming the path and the fix, when it is a storage failure.

    Other errors are returned unchanged. HDF5 reports a full disk in its message, without ``errno``.
    """
    code = exc.errno
    if code is None and "No space left on device" in str(exc):
        code = errno.ENOSPC
    if code not in _STORAGE_PROBLEMS or isinstance(exc, StorageError):
        return exc
    problem, fix = _STORAGE_PROBLEMS[code]
    where = exc.filename or path
    return StorageError(code, f"{where}: cannot write or read the file: {problem}. Fix: {fix}", str(where))


class TngApiError(RuntimeError):
    """A request to the TNG API failed after all retries (the message names the URL, never the key)."""
