"""The image-cube FITS format of the pipeline: one plane per source of a shard, the SOURCES table
with each plane's source, seeds, exposure and celestial WCS (count cubes of `bin`, expected-rate
cubes of `expected`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from . import __version__
from .errors import InputError
from .io import open_fits, write_fits_atomic
from .sky.model import tan_wcs

SOURCE_COLUMNS = {"SRCID": "J", "SRCKIND": "12A", "SEED": "K", "SRCSEED": "K", "NEVENTS": "J", "EXPOSURE": "D",
                  "RA_PNT": "D", "DEC_PNT": "D", "PA_PNT": "D", "CRPIX1": "D", "CRPIX2": "D", "CRVAL1": "D",
                  "CRVAL2": "D", "CD1_1": "D", "CD1_2": "D", "CD2_1": "D", "CD2_2": "D"}


def sources_table(rows: list[dict[str, Any]]) -> fits.BinTableHDU:
    """The SOURCES table: one row per plane (:data:`SOURCE_COLUMNS`)."""
    cols = [fits.Column(name=k, format=f, array=np.array([r[k] for r in rows])) for k, f in SOURCE_COLUMNS.items()]
    return fits.BinTableHDU.from_columns(cols, name="SOURCES")


def wcs_row(w: WCS) -> dict[str, float]:
    """The WCS columns of a SOURCES row (CRPIX, CRVAL and the CD matrix) of a celestial WCS."""
    cd = w.pixel_scale_matrix  # CD, or PC x CDELT (astropy may hold a CD header as PC with CDELT = 1)
    return {"CRPIX1": w.wcs.crpix[0], "CRPIX2": w.wcs.crpix[1], "CRVAL1": w.wcs.crval[0], "CRVAL2": w.wcs.crval[1],
            "CD1_1": cd[0, 0], "CD1_2": cd[0, 1], "CD2_1": cd[1, 0], "CD2_2": cd[1, 1]}


def cube_wcs(row: fits.FITS_record) -> WCS:
    """The celestial WCS of one plane of an image cube, from its SOURCES row."""
    return tan_wcs([row["CRVAL1"], row["CRVAL2"]], [row["CRPIX1"], row["CRPIX2"]],
                   cd=[[row["CD1_1"], row["CD1_2"]], [row["CD2_1"], row["CD2_2"]]])


def cube_header(kind: str, resolution: int, unit: str, exposure_s: float | None) -> fits.Header:
    """The primary header of a cube: unit, resolution, source kind, exposure and the event selection."""
    h = fits.Header()
    h["BUNIT"] = (unit, "per pixel")
    h["RESMULT"] = (resolution, "resolution multiplier")
    h["SRCKIND"] = (kind, "source kind of the shard")
    if exposure_s is not None:
        h["EXPOSURE"] = (exposure_s, "[s] exposure time")
    h["PI_MIN"], h["PI_MAX"] = 500, 2000
    h["PATTMAX"] = (4, "events with PATTERN <= PATTMAX")
    h["FLAGSEL"] = ("FLAG==0", "event flag selection")
    h["CREATOR"] = (f"xmmsr {__version__}", "software that wrote this file")
    h["COMMENT"] = "Plane i of the cube is source row i of the SOURCES table (its WCS is in that row)."
    return h


def write_cube(planes: np.ndarray, header: fits.Header, rows: list[dict[str, Any]], output: str | Path,
               extra: list[fits.ImageHDU] | None = None) -> None:
    """Write a cube (planes, then ``extra`` image extensions, then SOURCES), atomically, with checksums."""
    write_fits_atomic(fits.HDUList([fits.PrimaryHDU(planes, header=header), *(extra or []), sources_table(rows)]),
                      output)


def read_cube(path: str | Path) -> tuple[np.ndarray, fits.FITS_rec, fits.Header]:
    """Read an image or expected cube: (cube, SOURCES table, primary header)."""
    with open_fits(path, "image cube") as hdul:
        return np.asarray(hdul[0].data), hdul["SOURCES"].data, hdul[0].header.copy()


def extract_plane(path: str | Path, source_id: int) -> tuple[np.ndarray, fits.Header]:
    """One plane of a cube as a stand-alone image: the plane of SOURCES row ``SRCID == source_id``, with the
    cube's keywords, the row's exposure, source and celestial WCS in its header (what ds9 needs)."""
    cube, rows, header = read_cube(path)
    match = np.flatnonzero(np.asarray(rows["SRCID"]) == int(source_id))
    if match.size == 0:
        raise InputError(path, "SOURCES.SRCID", f"has no source {source_id}",
                         f"choose one of {sorted(int(v) for v in rows['SRCID'])}")
    i = int(match[0])
    row = rows[i]
    out = fits.Header()
    for key in ("BUNIT", "RESMULT", "PI_MIN", "PI_MAX", "PATTMAX", "FLAGSEL"):
        if key in header:
            out[key] = (header[key], header.comments[key])
    out.update(cube_wcs(row).to_header())
    out["EXPOSURE"] = (float(row["EXPOSURE"]), "[s] exposure time")
    out["SRCID"] = (int(row["SRCID"]), "source identifier")
    out["SRCKIND"] = (str(row["SRCKIND"]).strip(), "source kind")
    out["SEED"] = (int(row["SEED"]), "random seed of this realization")
    out["RA_PNT"], out["DEC_PNT"], out["PA_PNT"] = float(row["RA_PNT"]), float(row["DEC_PNT"]), float(row["PA_PNT"])
    out["CUBEFILE"] = (Path(path).name, "cube this plane was taken from")
    out["CUBEPLAN"] = (i, "plane index (0-based)")
    out["CREATOR"] = (f"xmmsr {__version__}", "software that wrote this file")
    return np.asarray(cube[i]), out
