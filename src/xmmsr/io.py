"""Atomic file output and FITS input with clear errors."""

from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from .errors import InputError, storage_error


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or kill inside the block leaves at most a hidden ``.tmp`` file, never a file
    under the final name.
    """
    final = Path(path)
    tmp: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files; outputs follow the umask
        yield tmp
        os.replace(tmp, final)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise storage_error(exc, final) from exc
        raise


def remove_stale_temporaries(final: Path) -> None:
    """Delete the hidden temporaries that a killed writer of ``final`` left beside it.

    Snakemake's lock guarantees one writer per output, so any ``.{name}.*.tmp`` sibling is stale.
    """
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def current_umask() -> int:
    """The process umask (read without changing it for long)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


CHECKSUM_COMMENT = "HDU checksum"


def write_fits_atomic(hdulist: fits.HDUList, path: str | Path) -> None:
    """Write ``hdulist`` to ``path`` atomically, with ``CHECKSUM``/``DATASUM`` in every HDU.

    The checksum cards carry a fixed comment: astropy's default comment is the time of writing, which
    would make the same data give different bytes.
    """
    with atomic_path(path) as tmp:
        for hdu in hdulist:
            hdu.add_checksum(when=CHECKSUM_COMMENT)
        hdulist.writeto(tmp, overwrite=True, checksum=False)


BLOCK = 2880
_BIG_ENDIAN = {"D": ">f8", "E": ">f4", "K": ">i8", "J": ">i4", "I": ">i2", "B": "u1"}
_CHECKSUM_EXCLUDED = frozenset(b":;<=>?@[\\]^_`")


def ones_complement_sum(words: np.ndarray, start: int = 0) -> int:
    """The FITS 32-bit ones' complement sum of big-endian words (``>u4``), added to ``start``."""
    total = int(np.asarray(words, dtype=">u4").sum(dtype=np.uint64)) + start
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def _checksum_string(value: int) -> str:
    """The 16-character ASCII encoding of a 32-bit checksum (FITS checksum convention, Seaman et al.)."""
    value &= 0xFFFFFFFF
    out = [0] * 16
    for i in range(4):
        byte = (value >> (24 - 8 * i)) & 0xFF
        q, r = byte // 4 + 0x30, byte % 4
        ch = [q + r, q, q, q]
        changed = True
        while changed:
            changed = False
            for j in (0, 2):
                while ch[j] in _CHECKSUM_EXCLUDED or ch[j + 1] in _CHECKSUM_EXCLUDED:
                    ch[j] += 1
                    ch[j + 1] -= 1
                    changed = True
        for j in range(4):
            out[4 * j + i] = ch[j]
    s = bytes(out)
    return (s[-1:] + s[:-1]).decode("ascii")


def _hdu_bytes(hdu: fits.hdu.base.ExtensionHDU) -> bytes:
    """One small extension HDU as written by astropy, with its checksums."""
    hdu.add_checksum(when=CHECKSUM_COMMENT)
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer, checksum=False)
    return buffer.getvalue()[BLOCK:]   # the empty primary HDU is one header block


def write_table_file(path: str | Path, primary: fits.PrimaryHDU, name: str, header: fits.Header,
                     columns: dict[str, np.ndarray], formats: dict[str, tuple[str, str | None]],
                     extensions: list[fits.BinTableHDU] | None = None) -> None:
    """Write a FITS file of an (empty) primary HDU, a binary table of ``columns`` and small ``extensions``,
    atomically, with checksums: the same bytes as astropy writes, but the table's rows are filled column by
    column into one big-endian buffer and summed once, without astropy's record-array conversions.

    ``header`` holds the table's own keywords; ``formats`` the TFORM (D, E, K, J, I, B) and unit of each column."""
    n = len(next(iter(columns.values()))) if columns else 0
    dtype = np.dtype([(c, _BIG_ENDIAN[formats[c][0]]) for c in columns])
    template = fits.BinTableHDU.from_columns(
        [fits.Column(name=c, format=formats[c][0], unit=formats[c][1] or None,
                     array=np.zeros(0, dtype=dtype[c].newbyteorder("="))) for c in columns], name=name)
    h = template.header
    for card in header.cards:      # after the columns: from_columns would drop the column keywords (TCRVLn ...)
        h[card.keyword] = (card.value, card.comment)
    h["NAXIS2"] = n
    size = n * dtype.itemsize
    buffer = np.zeros(size + (-size) % BLOCK, dtype=np.uint8)
    rows = buffer[:size].view(dtype)
    for c, values in columns.items():
        rows[c] = values
    datasum = ones_complement_sum(buffer.view(">u4"))
    h["CHECKSUM"] = ("0" * 16, CHECKSUM_COMMENT)
    h["DATASUM"] = (str(datasum), CHECKSUM_COMMENT)
    head = h.tostring().encode("ascii")
    h["CHECKSUM"] = (_checksum_string(~ones_complement_sum(np.frombuffer(head, dtype=">u4"), datasum)),
                     CHECKSUM_COMMENT)
    primary.add_checksum(when=CHECKSUM_COMMENT)
    first = io.BytesIO()
    fits.HDUList([primary]).writeto(first, checksum=False)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(first.getvalue())
        f.write(h.tostring().encode("ascii"))
        f.write(memoryview(buffer))
        for ext in extensions or []:
            f.write(_hdu_bytes(ext))


def open_fits(path: str | Path, what: str, verify_checksum: bool = True) -> fits.HDUList:
    """Open a FITS file fully into memory, turning any failure into an :class:`InputError`.

    ``what`` says what the file should be (e.g. "sky model") for the message. With ``verify_checksum``
    the ``CHECKSUM``/``DATASUM`` keywords (which every output of this pipeline carries) must match the
    bytes, so a file damaged after it was written is refused; files without them are read as they are.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "file", f"the {what} does not exist", f"give the path of an existing {what} FITS file")
    if p.stat().st_size == 0:
        raise InputError(p, "file", f"the {what} is empty (0 bytes)", f"regenerate the {what}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)  # "File may have been truncated" must stop us
            hdul = fits.open(p, memmap=False, lazy_load_hdus=False, checksum=verify_checksum)
            for hdu in hdul:
                _ = hdu.data  # force reading so that truncation is detected here
            hdul.verify("exception")
    except InputError:
        raise
    except AstropyUserWarning as exc:
        if "Checksum verification failed" in str(exc) or "Datasum verification failed" in str(exc):
            raise InputError(p, "CHECKSUM/DATASUM", f"the {what}'s bytes do not match the checksums written with "
                             f"it ({exc}): it was damaged or changed after it was written",
                             "delete it and rerun snakemake, which remakes it with the rule that wrote it") from exc
        raise InputError(p, "FITS structure", f"the {what} cannot be read as FITS ({exc})",
                         f"the file is corrupt or truncated; regenerate the {what}") from exc
    except Exception as exc:  # astropy raises OSError, ValueError, VerifyError, TypeError...
        raise InputError(
            p, "FITS structure", f"the {what} cannot be read as FITS ({exc.__class__.__name__}: {exc})",
            f"the file is corrupt or truncated; regenerate the {what}",
        ) from exc
    return hdul


class OutdirLock:
    """An exclusive lock on an output directory (``.xmmsr.lock`` inside it), held while a run writes there:
    two runs started from different working directories (each with its own Snakemake lock) cannot write
    the same outputs at once. Released when the process ends. A lock file that is a hard link (a results
    tree copied with ``cp -al``) is replaced by a file of this directory's own first, so that the copy and
    its original are locked apart."""

    NAME = ".xmmsr.lock"

    def __init__(self, outdir: str | Path) -> None:
        import fcntl

        self.path = Path(outdir) / self.NAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_nlink > 1:
                self.path.unlink()  # another directory's lock too: this one gets its own
            self._fh = open(self.path, "a+")
        except OSError as exc:
            raise storage_error(exc, self.path) from None
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            raise InputError(self.path.parent, "outdir", f"another run is writing there ({holder})",
                             "wait for it to finish, or set a different outdir") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"pid {os.getpid()}, working directory {Path.cwd()}\n")
        self._fh.flush()

    def release(self) -> None:
        import fcntl

        if not self._fh.closed:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary directory that replaces ``path`` only if the block succeeds."""
    final = Path(path)
    tmp: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700 directories; outputs follow the umask
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise storage_error(exc, final) from exc
        raise


def gti_extensions(path: str | Path) -> list[fits.BinTableHDU]:
    """Copies of the good-time tables of a FITS file (``STDGTInn``, ``GTI``, or ``HDUCLAS1 = 'GTI'``), for the
    products made from it to carry them as SAS products do; none when it has none."""
    with fits.open(path, memmap=False) as hdul:
        return [fits.BinTableHDU(data=hdu.data.copy() if hdu.data is not None else None, header=hdu.header.copy())
                for hdu in hdul[1:] if isinstance(hdu, fits.BinTableHDU) and (
                    re.fullmatch(r"(STDGTI\d\d|GTI)", hdu.name or "") or hdu.header.get("HDUCLAS1") == "GTI")]
