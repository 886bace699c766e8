"""Binomial thinning of count images: two independent Poisson images from one observation.

Keeping each count of an image of Poisson means lambda with probability ``p`` gives an image A of means
``p lambda`` and the rest, B = image - A, of means ``(1 - p) lambda``, and A and B are independent. So one
deep observation gives a short input and an independent target with no event list and no time split.
Exposures (``EXPOSURE``, ``ONTIMEnn``, ``LIVETIME``, exposure-map extensions) scale by ``p`` and
``1 - p``; the GTI tables are kept (they describe time, not counts) and ``THINFRAC`` records the factor.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from . import __version__
from .errors import InputError
from .io import atomic_path, open_fits

EXPOSURE_KEYWORD = re.compile(r"^(EXPOSURE|ONTIME|LIVETIME|ONTIME\d\d|LIVETI\d\d|EXPOSU\d\d)$")
EXPOSURE_MAP_NAMES = ("EXPOSURE", "EXPMAP", "EXPOSURE_MAP")
SPLITS = ("train", "val", "test")


def binomial_split(counts: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(A, B): A keeps each count with probability ``fraction``, B = counts - A (both int64)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie strictly between 0 and 1, got {fraction}")
    k = np.asarray(counts)
    whole = np.rint(k)
    if k.size and (not np.isfinite(k).all() or (k < 0).any() or np.abs(k - whole).max() > 1e-6):
        raise ValueError("thinning needs non-negative integer counts per pixel")
    whole = whole.astype(np.int64)
    a = rng.binomial(whole, fraction)
    return a, whole - a


def scale_exposures(header: fits.Header, factor: float) -> None:
    """Scale the exposure keywords of ``header`` in place by ``factor``."""
    for key in list(header):
        if EXPOSURE_KEYWORD.match(key):
            try:
                header[key] = float(header[key]) * factor
            except (TypeError, ValueError):
                continue


def thinned_pair(path: str | Path, fraction: float, seed: int) -> tuple[fits.HDUList, fits.HDUList]:
    """The two thinned HDU lists of a count-image FITS file (in memory; nothing written)."""
    p = Path(path)
    if not 0.0 < fraction < 1.0:
        raise InputError(None, "--fraction", f"{fraction} is not strictly between 0 and 1",
                         "give the fraction of counts that A keeps, e.g. 0.2")
    if seed < 0:
        raise InputError(None, "--seed", f"{seed} is negative", "give a seed >= 0")
    with open_fits(p, "count image", verify_checksum=False) as hdul:
        hdul_copy = [h.copy() for h in hdul]
    index = next((i for i, h in enumerate(hdul_copy)
                  if h.is_image and h.data is not None and h.data.ndim == 2 and h.name not in EXPOSURE_MAP_NAMES), None)
    if index is None:
        raise InputError(p, "data", "holds no 2-D count image", "give a 0.5-2 keV count image (xmmsr bin, evselect)")
    counts = hdul_copy[index].data
    try:
        a, b = binomial_split(counts, fraction, np.random.default_rng(seed))
    except ValueError as exc:
        raise InputError(p, f"HDU {index} pixel values", str(exc),
                         "give a count image (events per pixel), not a rate, smoothed or background-subtracted image") from None
    dtype = counts.dtype if np.issubdtype(counts.dtype, np.integer) else np.int32
    outputs = []
    for part, image, factor in (("A", a, fraction), ("B", b, 1.0 - fraction)):
        hdus = []
        for i, hdu in enumerate(hdul_copy):
            if i == index:
                data = image.astype(dtype)
            elif hdu.is_image and hdu.data is not None and hdu.name in EXPOSURE_MAP_NAMES:
                data = (np.asarray(hdu.data, dtype=np.float64) * factor).astype(np.float32)
            elif hdu.is_image and hdu.data is not None and i != 0:
                continue  # other images (e.g. ERROR) describe the unthinned counts
            else:
                data = hdu.data
            header = hdu.header.copy()
            for key in ("BZERO", "BSCALE", "BLANK", "CHECKSUM", "DATASUM"):
                header.remove(key, ignore_missing=True)
            scale_exposures(header, factor)
            if i in (0, index):
                header["THINFRAC"] = (factor, "fraction of the original counts and exposure")
                header["THINSEED"] = (seed, "seed of the binomial thinning")
                header["THINPART"] = (part, "A: kept counts, B: the rest (independent)")
                header["THINFROM"] = p.name[:68]
                header.add_history(f"xmmsr {__version__} thin: part {part} of {p.name}, fraction {fraction:g} "
                                   f"(A) / {1 - fraction:g} (B), seed {seed}; exposures scaled by {factor:g}")
            if i == 0:
                hdus.append(fits.PrimaryHDU(data if i == index else hdu.data, header=header))
            elif isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                hdus.append(hdu.__class__(data=hdu.data, header=header))
            else:
                hdus.append(fits.ImageHDU(data, header=header))
        outputs.append(fits.HDUList(hdus))
    return outputs[0], outputs[1]


def thin_file(path: str | Path, fraction: float, seed: int, output_a: str | Path, output_b: str | Path) -> None:
    """Write the two thinned images; neither output may exist, and both appear or neither does."""
    p, out_a, out_b = Path(path), Path(output_a), Path(output_b)
    for name, out in (("--output-a", out_a), ("--output-b", out_b)):
        if out.is_dir():
            raise InputError(out, name, "is a directory", "give a FITS file name")
        if out.exists() or out.resolve() == p.resolve():
            raise InputError(out, name, "exists", "give a new file name (thin never overwrites)")
    if out_a.resolve() == out_b.resolve():
        raise InputError(out_a, "--output-a/--output-b", "are the same file", "give two different names")
    a, b = thinned_pair(p, fraction, seed)
    with ExitStack() as stack:
        tmp_a = stack.enter_context(atomic_path(out_a))
        tmp_b = stack.enter_context(atomic_path(out_b))
        a.writeto(tmp_a, overwrite=True, checksum=True)
        b.writeto(tmp_b, overwrite=True, checksum=True)


@dataclass(frozen=True)
class RealImage:
    """One real observation of the ``real`` config section."""

    name: str
    path: Path
    split: str
    exposure_map: Path | None = None


def real_images_from_config(real_cfg: dict[str, Any], base_dir: str | Path | None = None) -> list[RealImage]:
    """The configured real images (``real.images``: paths or ``{path, exposure_map, split}``)."""
    out, names = [], set()
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    for i, entry in enumerate(real_cfg.get("images") or []):
        entry = {"path": entry} if isinstance(entry, str) else dict(entry)
        path = Path(entry["path"])
        path = path if path.is_absolute() else base / path
        split = entry.get("split", "train")
        if split not in SPLITS:
            raise InputError(None, f"real.images[{i}].split", f"is {split!r}", f"use one of {list(SPLITS)}")
        name = entry.get("name") or path.name.split(".")[0]
        if name in names:
            raise InputError(None, f"real.images[{i}].name", f"{name!r} appears twice", "give each image a unique name")
        names.add(name)
        expmap = entry.get("exposure_map")
        out.append(RealImage(name, path, split, (Path(expmap) if Path(expmap).is_absolute() else base / expmap)
                             if expmap else None))
    return out


@dataclass(frozen=True)
class ThinningPlan:
    """How real images are thinned into an input and a remainder."""

    input_exposure_s: float
    max_input_fraction: float

    def fraction(self, exposure_s: float) -> float:
        return min(self.input_exposure_s / exposure_s, self.max_input_fraction)
