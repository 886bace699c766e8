"""Exposure per pixel of a pn count image: from an exposure map, else from the per-CCD on-times and the
CCD layout.

SAS images carry ``ONTIMEnn`` (the good time of CCD ``nn``) beside ``EXPOSURE``; a CCD switched off for
part of the observation has less. Without a map every pixel gets the on-time of the CCD it lies on, found
from the image's DETX/DETY physical keywords (``CTYPE1L = 'DETX'``, as SAS evselect and ``xmmsr bin``
write them) and the CCD layout of :class:`~xmmsr.instrument.geometry.PnGeometry`, times the fraction of
the pixel that active, unflagged, live CCD area covers (:meth:`PnGeometry.acceptance`): 0 in the chip
gaps, on bad columns and dead pixels and outside the CCD array, as in SAS ``eexpmap`` without the
vignetting. An image without DETX/DETY keywords (e.g. binned in sky X/Y) gets the on-times alone.

Real pn event lists (SAS, ``FLAG == 0``, which drops events at a CCD's border and next to bad pixels)
have less active area than the layout: strips along the CCD edges and beside the dead pixels hold no
events. ``REAL_EDGE_MARGINS`` were measured on real DETX/DETY images (``bench/ccd_edges.py``: the counts
of the pixels along the layout's edges against the sky of the pixels further in, in the 0.5-2 keV
images of G7.7-3.7, A2107 and ELAIS-S1, Abell 496 held out; the pixels beside a CCD edge held about
half the counts the layout predicted, those beside a dead pixel 60 %): 2.5" at both x edges of every
CCD, 3" above the gap between the CCD rows (none below it), 1.5" beside every dead pixel. Images
binned from simulated events (``SIMULATR`` in the header) follow the simulated layout, without them.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits

from ..errors import InputError
from ..io import open_fits
from .geometry import DET_UNIT_ARCSEC, EdgeMargins, ImageGrid, PnGeometry

ONTIME_KEY = re.compile(r"^ONTIME(\d\d)$")
CCD_SPREAD_TOLERANCE = 0.01  # on-times within 1 % of each other count as one exposure
LAYOUT_SOURCE = " x CCD layout"  # appended to the source when the CCD acceptance is applied
MIN_ACCEPTANCE = 0.5  # a pixel less than half on active CCD area gets no exposure (the simulated detector mask's rule)
REAL_EDGE_MARGINS = EdgeMargins(x_arcsec=2.5, below_gap_arcsec=0.0, above_gap_arcsec=3.0, dead_arcsec=1.5)  # real events
SIMULATOR_KEY = "SIMULATR"  # images binned from simulated events carry it (the built-in simulator, SIXTE)


@dataclass(frozen=True)
class ImageExposure:
    """Exposure (s) of every pixel of a count image and where it came from."""

    seconds: np.ndarray   # (ny, nx) float64; 0 where the image has no exposure
    source: str           # "exposure map", or "per-CCD ONTIMEnn" / "EXPOSURE", + LAYOUT_SOURCE with the layout

    @property
    def reference_s(self) -> float:
        """The image's nominal exposure: the largest per-pixel exposure."""
        return float(self.seconds.max())


def ccd_ontimes(header: fits.Header) -> dict[int, float]:
    """On-time (s) per CCD number from the ``ONTIMEnn`` keywords (empty when there are none)."""
    out = {}
    for key in header:
        match = ONTIME_KEY.match(key)
        if match:
            out[int(match.group(1))] = float(header[key])
    return out


def _detector_axes(header: fits.Header, shape: tuple[int, int],
                   path: str | Path | None = None) -> tuple[list[np.ndarray], list[float]] | None:
    """The DETX and DETY pixel centres (arcsec) of an image's columns and rows and their steps (DET units),
    from its physical keywords (``CRVALnL``, ``CRPIXnL``, ``CDELTnL``); None unless ``CTYPE1L``/``CTYPE2L``
    are DETX/DETY."""
    names = [str(header.get(f"CTYPE{axis}L", "")).strip().upper() for axis in (1, 2)]
    if names != ["DETX", "DETY"]:
        return None
    ny, nx = shape
    centres, steps = [], []
    for axis, n in ((1, nx), (2, ny)):
        if f"CRVAL{axis}L" not in header:
            raise InputError(path, f"CRVAL{axis}L", f"is missing while CTYPE{axis}L is {names[axis - 1]}",
                             "write the image's physical (DETX/DETY) keywords, as SAS evselect and xmmsr bin do")
        crval, crpix = float(header[f"CRVAL{axis}L"]), float(header.get(f"CRPIX{axis}L", 1.0))
        cdelt = float(header.get(f"CDELT{axis}L", 1.0))
        centres.append((crval + (np.arange(n) + 1.0 - crpix) * cdelt) * DET_UNIT_ARCSEC)
        steps.append(cdelt)
    return centres, steps


def ccd_number_image(header: fits.Header, shape: tuple[int, int], geometry: PnGeometry,
                     path: str | Path | None = None) -> np.ndarray:
    """CCD number (1..12) of every pixel of a DETX/DETY image (gaps and the outside: the nearest CCD)."""
    found = _detector_axes(header, shape, path)
    if found is None:
        axis, name = (1, "DETX") if str(header.get("CTYPE1L", "")).strip().upper() != "DETX" else (2, "DETY")
        raise InputError(path, f"CTYPE{axis}L", f"is {header.get(f'CTYPE{axis}L')!r}, not {name!r}: the image has "
                         "no DETX/DETY physical coordinates to find its CCDs",
                         "give an exposure map (--exposure-map, SAS eexpmap) or bin the events in DETX/DETY "
                         "(evselect xcolumn=DETX ycolumn=DETY, or xmmsr bin)")
    (x, y), _ = found
    g = geometry
    ix = np.clip(np.floor((x - g.array_x0) / (g.ccd_width + g.gap_x_arcsec)), 0, g.ccds_x - 1).astype(int)
    iy = np.clip(np.floor((y - g.array_y0) / (g.ccd_height + g.gap_y_arcsec)), 0, g.ccds_y - 1).astype(int)
    return iy[:, None] * g.ccds_x + ix[None, :] + 1


def read_exposure_map(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A 2-D exposure map (s) of the image's shape; BUNIT, if given, must be a time."""
    p = Path(path)
    with open_fits(p, "exposure map", verify_checksum=False) as hdul:
        hdu = next((h for h in hdul if h.is_image and h.data is not None and h.data.ndim == 2), None)
        if hdu is None:
            raise InputError(p, "data", "holds no 2-D image", "give a SAS eexpmap exposure map of the image")
        data = np.asarray(hdu.data, dtype=np.float64)
        bunit = str(hdu.header.get("BUNIT", "s")).strip() or "s"
    try:
        factor = u.Unit(bunit).to(u.s)
    except (ValueError, u.UnitConversionError):
        raise InputError(p, "BUNIT", f"is {bunit!r}, not a unit of time",
                         "give an exposure map in seconds (SAS eexpmap writes BUNIT = 's')") from None
    if data.shape != tuple(shape):
        raise InputError(p, "NAXIS1/NAXIS2", f"shape {data.shape} differs from the image's {tuple(shape)}",
                         "make the exposure map on the image's grid (eexpmap imageset=IMAGE)")
    if not np.isfinite(data).all() or (data < 0).any():
        raise InputError(p, "pixel values", "has negative or non-finite exposures", "give a valid exposure map")
    if not data.max() > 0:
        raise InputError(p, "pixel values", "is zero everywhere", "give the exposure map of this observation")
    return data * factor


def detector_grid(header: fits.Header, shape: tuple[int, int],
                  path: str | Path | None = None) -> tuple[ImageGrid, bool, bool] | None:
    """The DETX/DETY grid of an image from its physical keywords (``CTYPEnL``, ``CRVALnL``, ``CRPIXnL``,
    ``CDELTnL``), as an increasing :class:`ImageGrid` and whether x and y run the other way (negative
    ``CDELTnL``); None without DETX/DETY keywords or with pixels that are not square."""
    found = _detector_axes(header, shape, path)
    if found is None:
        return None
    (x, y), steps = found
    if not (steps[0] != 0 and math.isclose(abs(steps[0]), abs(steps[1]), rel_tol=1e-6)):
        return None
    pixel = abs(steps[0]) * DET_UNIT_ARCSEC
    grid = ImageGrid(x.size, y.size, pixel, float(x.min()) - pixel / 2, float(y.min()) - pixel / 2)
    return grid, steps[0] < 0, steps[1] < 0


def layout_acceptance(header: fits.Header, shape: tuple[int, int], geometry: PnGeometry,
                      path: str | Path | None = None) -> np.ndarray | None:
    """Fraction of every pixel of a DETX/DETY image on active, unflagged, live CCD area (0 in the chip
    gaps, on bad columns and dead pixels, outside the array, and below ``MIN_ACCEPTANCE``, where a few
    counts would be scaled up many times); None without DETX/DETY keywords. Dead pixels count by the
    table's 1x pixel at each pixel's centre (exact on the 1x grid and finer ones). The CCD edges of real
    event lists lose ``REAL_EDGE_MARGINS`` too; those of simulated ones (``SIMULATR``) do not."""
    found = detector_grid(header, shape, path)
    if found is None:
        return None
    grid, flip_x, flip_y = found
    margins = None if SIMULATOR_KEY in header else REAL_EDGE_MARGINS
    acceptance = np.array(geometry.acceptance(grid, margins=margins), dtype=np.float64)
    acceptance[acceptance < MIN_ACCEPTANCE] = 0.0
    return acceptance[::-1 if flip_y else 1, ::-1 if flip_x else 1]


@lru_cache(maxsize=1)
def default_geometry() -> PnGeometry:
    """The CCD layout of the default configuration (its dead-pixel table included)."""
    from ..config import default_config
    from .model import geometry_from_config

    return geometry_from_config(default_config()["instrument"]["geometry"])


def image_exposure(header: fits.Header, shape: tuple[int, int], exposure_s: float,
                   exposure_map: str | Path | None = None, geometry: PnGeometry | None = None,
                   path: str | Path | None = None) -> ImageExposure:
    """Per-pixel exposure: the map if given; else per-CCD ``ONTIMEnn`` when they differ by more than 1 %
    (on the DETX/DETY grid), else ``exposure_s`` everywhere, in both cases times the CCD acceptance of each
    pixel (:func:`layout_acceptance`) when the image has DETX/DETY keywords. ``geometry``: the CCD layout
    (default: the default configuration's)."""
    if exposure_map is not None:
        return ImageExposure(read_exposure_map(exposure_map, shape), "exposure map")
    geometry = geometry or default_geometry()
    ontimes = ccd_ontimes(header)
    values = [t for t in ontimes.values() if t > 0]
    if values and (max(values) - min(values)) > CCD_SPREAD_TOLERANCE * max(values):
        ccd = ccd_number_image(header, shape, geometry, path)
        table = np.zeros(ccd.max() + 1)
        for number, seconds in ontimes.items():
            if number < table.size:
                table[number] = seconds
        missing = sorted(set(np.unique(ccd)) - set(ontimes))
        if missing:
            warnings.warn(f"{path}: no ONTIMEnn for CCDs {missing}; they get EXPOSURE", stacklevel=2)
            table[missing] = exposure_s
        seconds, source = table[ccd], "per-CCD ONTIMEnn"
    else:
        if not (math.isfinite(exposure_s) and exposure_s > 0):
            raise InputError(path, "EXPOSURE", f"is {exposure_s!r}", "set EXPOSURE (s) in the header")
        seconds, source = np.full(shape, float(exposure_s)), "EXPOSURE"
    acceptance = layout_acceptance(header, shape, geometry, path)
    if acceptance is None:
        return ImageExposure(seconds, source)
    if not acceptance.any():
        raise InputError(path, "CRVAL1L/CRVAL2L", "place the image entirely off the pn CCDs",
                         "give the DETX/DETY image of a pn observation, or its exposure map (--exposure-map)")
    return ImageExposure(seconds * acceptance, source + LAYOUT_SOURCE)
