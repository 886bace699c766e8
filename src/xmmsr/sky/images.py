"""Real-sky truths: extended sources from FITS images with a celestial WCS at pixels finer than pn's 4".

A folder of images (e.g. Chandra images of supernova remnants, galaxies or clusters) or of event lists
(binned here in the 0.5-2 keV band): each extended source picks one file, removes its median level,
turns it by a random multiple of 90 degrees (and a random flip), and resamples it, flux-conserving,
onto the sky-model grid centred on its brightness centroid. The generator then applies the same zoom,
sigma_b brightness and boresight offset as to synthetic and IllustrisTNG sources.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from scipy import ndimage

from ..errors import InputError
from ..io import open_fits
from .spectra import BAND_KEV

IMAGE_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fit.gz", ".fts", ".img", ".img.gz", ".evt", ".evt.gz")
PN_PIXEL_ARCSEC = 4.0


def image_files(folder: str | Path) -> list[Path]:
    """The truth files of ``folder`` (sorted by name); an :class:`InputError` when there are none."""
    p = Path(folder)
    files = sorted(f for f in p.iterdir() if f.name.lower().endswith(IMAGE_SUFFIXES)) if p.is_dir() else []
    if not files:
        raise InputError(p, "sources.images.dir", "is not a folder of FITS images or event lists",
                         "point sources.images.dir at a folder of FITS images with a celestial WCS")
    return files


def _celestial_image(hdul: fits.HDUList) -> tuple[np.ndarray, WCS] | None:
    for hdu in hdul:
        if hdu.is_image and hdu.data is not None and hdu.data.ndim == 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FITSFixedWarning)
                w = WCS(hdu.header)
            if w.has_celestial and w.naxis == 2:
                return np.asarray(hdu.data, dtype=np.float64), w
    return None


def _binned_events(hdul: fits.HDUList, path: Path, bin_arcsec: float) -> tuple[np.ndarray, float] | None:
    """Events (``x``/``y`` columns with a TAN sky WCS, ``energy``) binned in the 0.5-2 keV band."""
    if "EVENTS" not in hdul:
        return None
    table, header = hdul["EVENTS"].data, hdul["EVENTS"].header
    names = [n.lower() for n in table.columns.names]
    if not {"x", "y", "energy"} <= set(names):
        raise InputError(path, "EVENTS columns", "need x, y and energy", "give an event list with sky x/y and energy")
    ix = names.index("x") + 1
    try:
        scale = abs(float(header[f"TCDLT{ix}"])) * 3600.0      # arcsec per sky pixel
    except KeyError as exc:
        raise InputError(path, f"TCDLT{ix}", "missing: the x column has no sky pixel size",
                         "give an event list with TCTYP/TCRVL/TCRPX/TCDLT keywords on x and y") from exc
    unit = u.Unit(table.columns[names.index("energy")].unit or "eV")
    energy = (np.asarray(table.field(names.index("energy")), dtype=np.float64) * unit).to_value(u.keV)
    band = (energy >= BAND_KEV[0]) & (energy <= BAND_KEV[1])
    x = np.asarray(table.field(ix - 1), dtype=np.float64)[band]
    y = np.asarray(table.field(names.index("y")), dtype=np.float64)[band]
    if x.size < 100:
        raise InputError(path, "EVENTS", f"only {x.size} events in 0.5-2 keV", "give a deeper event list")
    step = bin_arcsec / scale
    edges_x = np.arange(np.percentile(x, 0.5), np.percentile(x, 99.5) + step, step)
    edges_y = np.arange(np.percentile(y, 0.5), np.percentile(y, 99.5) + step, step)
    image, _, _ = np.histogram2d(y, x, bins=(edges_y, edges_x))
    return image, bin_arcsec


@lru_cache(maxsize=16)
def read_truth(path: str, event_bin_arcsec: float = 0.5) -> tuple[np.ndarray, float]:
    """(surface brightness with its median level removed, >= 0; pixel size in arcsec) of one truth file."""
    p = Path(path)
    with open_fits(p, "real-sky truth image", verify_checksum=False) as hdul:
        found = _celestial_image(hdul)
        if found is not None:
            data, w = found
            scales = w.proj_plane_pixel_scales()
            pixel = [float(s.to_value(u.arcsec)) if hasattr(s, "to_value") else float(s) * 3600.0 for s in scales]
            if abs(pixel[0] - pixel[1]) > 0.01 * pixel[0]:
                raise InputError(p, "CDELT1/CDELT2", f"pixels are not square ({pixel[0]:.3g}\" x {pixel[1]:.3g}\")",
                                 "resample the image to square pixels")
            image, pixel_arcsec = data, pixel[0]
        else:
            binned = _binned_events(hdul, p, event_bin_arcsec)
            if binned is None:
                raise InputError(p, "image / EVENTS", "has neither a 2-D image with a celestial WCS nor an EVENTS table",
                                 "give FITS images with RA---TAN/DEC--TAN axes or event lists with sky x/y")
            image, pixel_arcsec = binned
    if not pixel_arcsec < PN_PIXEL_ARCSEC:
        raise InputError(p, "pixel size", f"{pixel_arcsec:.3g}\" is not finer than the 4\" pn pixels",
                         "give images with pixels finer than 4\" (e.g. Chandra's 0.5\")")
    image = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
    image = np.clip(image - np.median(image), 0.0, None)
    if not image.sum() > 0:
        raise InputError(p, "data", "holds no emission above its median level", "give an image of an extended source")
    image.setflags(write=False)
    return image, float(pixel_arcsec)


def image_extended(rng: np.random.Generator, npix: int, pixel_arcsec: float, section: dict[str, Any],
                   base_dir: str | Path | None = None) -> tuple[np.ndarray, float, dict[str, Any]]:
    """One extended source from the truth folder ``section["dir"]`` on an ``npix`` grid of ``pixel_arcsec``
    pixels: (photon-flux shape, unnormalised; temperature kT for its spectrum; provenance)."""
    folder = section.get("dir")
    if not folder:
        raise InputError(None, "sources.images.dir", "is not set", "point it at a folder of FITS images")
    folder = Path(folder) if base_dir is None or Path(folder).is_absolute() else Path(base_dir) / folder
    files = image_files(folder)
    path = files[int(rng.integers(len(files)))]
    image, pixel_in = read_truth(str(path), float(section.get("event_bin_arcsec", 0.5)))
    turns, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
    kt_lo, kt_hi = section.get("kT_keV", (1.0, 6.0))
    kt = float(rng.uniform(kt_lo, kt_hi))
    shaped = np.rot90(image, turns)
    if flip:
        shaped = shaped[:, ::-1]
    ratio = pixel_arcsec / pixel_in                   # input pixels per output pixel
    if ratio > 1:
        shaped = ndimage.gaussian_filter(shaped, ratio / 2.0)   # no aliasing when sampling coarser
    total = float(shaped.sum())
    yy, xx = np.mgrid[: shaped.shape[0], : shaped.shape[1]]
    cy, cx = float((shaped * yy).sum() / total), float((shaped * xx).sum() / total)
    centre = (npix - 1) / 2.0
    out_y, out_x = np.mgrid[:npix, :npix].astype(np.float64)
    coords = np.array([cy + (out_y - centre) * ratio, cx + (out_x - centre) * ratio])
    out = ndimage.map_coordinates(shaped, coords, order=1, mode="constant", cval=0.0) * ratio**2
    out = np.clip(out, 0.0, None).astype(np.float32)
    if not out.sum() > 0:
        raise InputError(path, "data", "no emission falls on the sky-model grid", "check the image and its WCS")
    meta = {"MODEL": "image", "IMGFILE": path.name[:60], "IMGPIX": round(pixel_in, 6), "IMGROT": 90 * turns,
            "IMGFLIP": int(flip)}
    return out, kt, meta
