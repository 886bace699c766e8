"""0.5-2 keV count images from pn event lists (simulated or real), and detector masks."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from .. import __version__
from ..errors import InputError
from ..io import write_fits_atomic
from ..sky.model import tan_wcs
from .events import column, read_events
from .geometry import DET_UNIT_ARCSEC, ImageGrid, PnGeometry
from .model import PATTERN_GOOD_MAX
from .response import PI_RANGE_EV

_COPY_KEYS = ("TELESCOP", "INSTRUME", "OBJECT", "FILTER", "SUBMODE", "RA_PNT", "DEC_PNT", "PA_PNT", "TSTART",
              "TSTOP", "MJDREF", "SEED", "SRCKIND", "SRCID", "SRCSEED", "BACKGRND", "SIMULATR", "OBS_ID")


def select_good(pattern: np.ndarray, flag: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """The standard pn selection: PATTERN <= 4, FLAG == 0, 500 <= PI <= 2000 eV."""
    return (pattern <= PATTERN_GOOD_MAX) & (flag == 0) & (pi >= PI_RANGE_EV[0]) & (pi <= PI_RANGE_EV[1])


def bin_counts(detx: np.ndarray, dety: np.ndarray, grid: ImageGrid) -> np.ndarray:
    """Count events per pixel of ``grid`` from integer DETX/DETY (0.05" units); int32 (ny, nx).

    Pixel indices come from look-up tables over the whole 16-bit DETX/DETY range (no division per
    event); events off the grid are dropped.
    """
    lut_x, lut_y = _pixel_tables(grid)
    ux = np.asarray(detx, dtype=np.int16).view(np.uint16)
    uy = np.asarray(dety, dtype=np.int16).view(np.uint16)
    npix = grid.nx * grid.ny
    counts = np.zeros(npix, dtype=np.int64)
    chunk = min(ux.size, _CHUNK) or 1
    flat, part = np.empty(chunk, dtype=np.int32), np.empty(chunk, dtype=np.int32)
    # chunks reuse two cache-sized buffers instead of allocating arrays as long as the event list
    for start in range(0, ux.size, chunk):
        m = min(chunk, ux.size - start)
        np.take(lut_y, uy[start:start + m], out=flat[:m])
        np.take(lut_x, ux[start:start + m], out=part[:m])
        flat[:m] += part[:m]
        counts += np.bincount(flat[:m], minlength=npix + 1)[:npix]
    return counts.astype(np.int32).reshape(grid.ny, grid.nx)


_CHUNK = 1 << 18


@lru_cache(maxsize=8)
def _pixel_tables(grid: ImageGrid) -> tuple[np.ndarray, np.ndarray]:
    """DETX -> column and DETY -> row * nx tables, indexed by the 16-bit pattern of the coordinate;
    off-grid values map so that the flat index is at least nx * ny."""
    size = grid.bin_det_units
    overflow = grid.nx * grid.ny
    values = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.float64)
    # pixel edges may lie between integer DETX/DETY values (evselect: -18283.5 + 80 i)
    ix = np.floor((values - round(grid.x0_arcsec / DET_UNIT_ARCSEC, 3)) / size).astype(np.int64)
    iy = np.floor((values - round(grid.y0_arcsec / DET_UNIT_ARCSEC, 3)) / size).astype(np.int64)
    lut_x = np.where((ix >= 0) & (ix < grid.nx), ix, overflow).astype(np.int32)
    lut_y = np.where((iy >= 0) & (iy < grid.ny), iy * grid.nx, overflow).astype(np.int32)
    return lut_x, lut_y


def exposure_of(header: fits.Header, path: str | Path | None = None) -> float:
    """Exposure (s): EXPOSURE, else the longest per-CCD ONTIMEnn, else ONTIME/LIVETIME."""
    if "EXPOSURE" in header:
        value = float(header["EXPOSURE"])
    else:
        ontimes = [float(header[k]) for k in header if k.startswith("ONTIME") and k[6:].isdigit()]
        value = max(ontimes) if ontimes else float(header.get("ONTIME", header.get("LIVETIME", np.nan)))
    if not (np.isfinite(value) and value > 0):
        raise InputError(path, "EXPOSURE", f"missing or not positive ({value})",
                         "the EVENTS header needs EXPOSURE (or ONTIMEnn per CCD) in seconds")
    return value


def detector_image_wcs(grid: ImageGrid, ra_pnt: float, dec_pnt: float, roll_deg: float,
                       aim_x_arcsec: float, aim_y_arcsec: float) -> WCS:
    """Exact WCS of a detector image whose optical axis (at ``aim``) points at (ra_pnt, dec_pnt)."""
    c, s = np.cos(np.deg2rad(roll_deg)), np.sin(np.deg2rad(roll_deg))
    return tan_wcs([ra_pnt, dec_pnt], [(aim_x_arcsec - grid.x0_arcsec) / grid.pixel_arcsec + 0.5,
                                       (aim_y_arcsec - grid.y0_arcsec) / grid.pixel_arcsec + 0.5],
                   cd=grid.pixel_arcsec / 3600.0 * np.array([[-c, -s], [-s, c]]))


def physical_keywords(grid: ImageGrid) -> dict[str, tuple[object, str]]:
    """The DETX/DETY physical coordinate keywords of SAS evselect images of ``grid`` (WCS 'L', LTV/LTM)."""
    b = grid.bin_det_units
    out: dict[str, tuple[object, str]] = {}
    for axis, name, edge in ((1, "DETX", grid.x0_arcsec), (2, "DETY", grid.y0_arcsec)):
        first = edge / DET_UNIT_ARCSEC + b / 2.0      # DETX/DETY of the centre of pixel 1
        out[f"CTYPE{axis}L"] = (name, "physical coordinate")
        out[f"CRPIX{axis}L"] = (1.0, "")
        out[f"CRVAL{axis}L"] = (first, f"{name} of the centre of pixel 1")
        out[f"CDELT{axis}L"] = (float(b), f"{name} units (0.05 arcsec) per pixel")
        out[f"LTV{axis}"] = (1.0 - first / b, "image = LTM x physical + LTV")
        out[f"LTM{axis}_{axis}"] = (1.0 / b, "")
    out["WCSNAMEL"] = ("PHYSICAL", "")
    out["LTM1_2"], out["LTM2_1"] = (0.0, ""), (0.0, "")
    return out


def image_wcs(data: fits.FITS_rec, header: fits.Header, grid: ImageGrid, path: str | Path | None = None) -> WCS:
    """Celestial WCS of a detector image.

    xmmsr event lists carry the optical axis (AIMDETX/AIMDETY) and roll, which give the WCS exactly;
    for real pn event lists the affine DETX/DETY -> X/Y relation is fitted on the events and combined
    with the sky WCS of the X/Y columns.
    """
    names = data.columns.names if data is not None else []
    b = grid.bin_det_units
    x0 = grid.x0_arcsec / DET_UNIT_ARCSEC
    y0 = grid.y0_arcsec / DET_UNIT_ARCSEC
    if "AIMDETX" in header:
        return detector_image_wcs(grid, float(header["RA_PNT"]), float(header["DEC_PNT"]),
                                  float(header.get("PA_PNT", 0.0)), float(header["AIMDETX"]) * DET_UNIT_ARCSEC,
                                  float(header["AIMDETY"]) * DET_UNIT_ARCSEC)
    if not {"X", "Y"} <= set(names) or len(data) < 10:
        raise InputError(path, "X/Y columns", "cannot derive the image WCS (no AIMDETX keyword and too few sky positions)",
                         "give a pn event list with X, Y, DETX, DETY columns and at least 10 events")
    step = max(1, len(data) // 200_000)
    detx = column(data, "DETX")[::step].astype(np.float64)
    dety = column(data, "DETY")[::step].astype(np.float64)
    design = np.column_stack([detx, dety, np.ones_like(detx)])
    (ax, *_), (ay, *_) = (np.linalg.lstsq(design, column(data, n)[::step].astype(np.float64), rcond=None) for n in ("X", "Y"))
    ix, iy = names.index("X") + 1, names.index("Y") + 1
    try:
        crval = [float(header[f"TCRVL{ix}"]), float(header[f"TCRVL{iy}"])]
        crpx = np.array([float(header[f"TCRPX{ix}"]), float(header[f"TCRPX{iy}"])])
        cdelt = np.array([float(header[f"TCDLT{ix}"]), float(header[f"TCDLT{iy}"])])
    except KeyError as exc:
        raise InputError(path, f"{exc.args[0]} keyword", "missing", "the X/Y columns need TCRVL/TCRPX/TCDLT keywords") from exc
    affine = np.array([ax[:2], ay[:2]])           # d(X, Y)/d(DETX, DETY)
    offset = np.array([ax[2], ay[2]])
    # image pixel p (1-based) -> DET = (x0, y0) + (p - 0.5) * b -> sky pixel = affine @ DET + offset
    det_of_ref = np.linalg.solve(affine, crpx - offset)
    return tan_wcs(crval, (det_of_ref - [x0, y0]) / b + 0.5, cd=np.diag(cdelt) @ affine * b)


def bin_event_file(path: str | Path, geometry: PnGeometry | None = None) -> tuple[np.ndarray, fits.Header]:
    """Bin one event list into the 0.5-2 keV count image of its resolution (RESMULT, 1 for real data)."""
    geometry = geometry or PnGeometry()
    data, header = read_events(path)
    resolution = int(header.get("RESMULT", 1))
    if resolution not in (1, 2):
        raise InputError(path, "RESMULT", f"is {resolution}", "use 1 (real pn) or 2 (2x simulation)")
    grid = geometry.image_grid(resolution)
    good = select_good(column(data, "PATTERN"), column(data, "FLAG"), column(data, "PI"))
    image = bin_counts(column(data, "DETX")[good], column(data, "DETY")[good], grid)
    out = image_wcs(data, header, grid, path).to_header()
    for key, value in physical_keywords(grid).items():
        out[key] = value
    out["BUNIT"] = ("count", "events per pixel")
    out["EXPOSURE"] = (exposure_of(header, path), "[s] exposure time")
    out["RESMULT"] = (resolution, "resolution multiplier")
    out["DETBIN"] = (grid.bin_det_units, "DETX/DETY units (0.05 arcsec) per pixel")
    out["PI_MIN"], out["PI_MAX"] = PI_RANGE_EV[0], PI_RANGE_EV[1]
    out["PATTMAX"] = (PATTERN_GOOD_MAX, "events with PATTERN <= PATTMAX")
    out["FLAGSEL"] = ("FLAG==0", "event flag selection")
    out["NEVENTS"] = (int(image.sum()), "events in the image")
    for key in _COPY_KEYS:
        if key in header:
            out[key] = (header[key], header.comments[key])
    for key in header:
        if key.startswith("ONTIME") and key[6:].isdigit():
            out[key] = header[key]
    out["CREATOR"] = (f"xmmsr {__version__}", "software that wrote this file")
    return image, out


def write_image(image: np.ndarray, header: fits.Header, path: str | Path,
                extensions: list[fits.BinTableHDU] | None = None) -> None:
    """Write an image FITS atomically (with ``extensions`` after it, e.g. the input's good-time tables)."""
    write_fits_atomic(fits.HDUList([fits.PrimaryHDU(image, header=header), *(extensions or [])]), path)


def write_detector_mask(geometry: PnGeometry, resolution: int, path: str | Path) -> None:
    """Write the 0/1 detector mask of a resolution as FITS."""
    header = fits.Header()
    header["RESMULT"] = (resolution, "resolution multiplier")
    header["MASKDEF"] = ("active unflagged area > 50% of 1x pixel", "mask")
    header["CREATOR"] = (f"xmmsr {__version__}", "software that wrote this file")
    write_image(geometry.detector_mask(resolution), header, path)
