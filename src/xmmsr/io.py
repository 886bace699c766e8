"""Atomic file output and FITS input with clear errors."""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from .errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or kill inside the block leaves at most a hidden ``.tmp`` file, never a file
    under the final name.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files; outputs follow the umask
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process umask (read without changing it for long)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_fits_atomic(hdulist: fits.HDUList, path: str | Path) -> None:
    """Write ``hdulist`` to ``path`` atomically, with checksums."""
    with atomic_path(path) as tmp:
        hdulist.writeto(tmp, overwrite=True, checksum=True)


def open_fits(path: str | Path, what: str) -> fits.HDUList:
    """Open a FITS file fully into memory, turning any failure into an :class:`InputError`.

    ``what`` says what the file should be (e.g. "sky model") for the message.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "file", f"the {what} does not exist", f"give the path of an existing {what} FITS file")
    if p.stat().st_size == 0:
        raise InputError(p, "file", f"the {what} is empty (0 bytes)", f"regenerate the {what}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)  # "File may have been truncated" must stop us
            hdul = fits.open(p, memmap=False, lazy_load_hdus=False)
            for hdu in hdul:
                _ = hdu.data  # force reading so that truncation is detected here
            hdul.verify("exception")
    except InputError:
        raise
    except Exception as exc:  # astropy raises OSError, ValueError, VerifyError, TypeError...
        raise InputError(
            p, "FITS structure", f"the {what} cannot be read as FITS ({exc.__class__.__name__}: {exc})",
            f"the file is corrupt or truncated; regenerate the {what}",
        ) from exc
    return hdul
