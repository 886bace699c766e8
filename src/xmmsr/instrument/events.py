"""Event-list FITS files in the layout of EPIC-pn event lists (EVENTS extension)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import InputError
from ..io import open_fits, write_fits_atomic
from .geometry import DET_UNIT_ARCSEC
from .simulator import SKY_REF_PIXEL, EventList

_FORMATS = {
    "TIME": ("D", "s"), "X": ("J", "0.05 arcsec"), "Y": ("J", "0.05 arcsec"),
    "DETX": ("I", "0.05 arcsec"), "DETY": ("I", "0.05 arcsec"), "RAWX": ("I", "pixel"), "RAWY": ("I", "pixel"),
    "CCDNR": ("B", ""), "PI": ("I", "eV"), "ENERGY": ("E", "eV"), "PATTERN": ("I", ""), "FLAG": ("J", ""),
}
REQUIRED_FOR_BINNING = ("DETX", "DETY", "PI", "PATTERN", "FLAG")


def to_hdulist(events: EventList) -> fits.HDUList:
    """Serialise an event list: empty primary HDU plus EVENTS with pn-like columns and keywords."""
    cols = [fits.Column(name=n, format=f, unit=u or None, array=events.columns[n]) for n, (f, u) in _FORMATS.items()]
    table = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    h = table.header
    for key, (value, comment) in events.header.items():
        h[key] = (value, comment)
    index = {n: i + 1 for i, n in enumerate(_FORMATS)}
    ra, dec = events.header["RA_PNT"][0], events.header["DEC_PNT"][0]
    for axis, name in ((1, "X"), (2, "Y")):
        i = index[name]
        h[f"TCTYP{i}"] = ("RA---TAN" if axis == 1 else "DEC--TAN", "sky projection")
        h[f"TCRPX{i}"] = (SKY_REF_PIXEL, "reference pixel")
        h[f"TCRVL{i}"] = (ra if axis == 1 else dec, "[deg] reference value")
        h[f"TCDLT{i}"] = ((-1.0 if axis == 1 else 1.0) * DET_UNIT_ARCSEC / 3600.0, "[deg] pixel size")
        h[f"TCUNI{i}"] = ("deg", "")
        h[f"TLMIN{i}"], h[f"TLMAX{i}"] = 1, 51840
    for name in ("DETX", "DETY"):
        h[f"TLMIN{index[name]}"], h[f"TLMAX{index[name]}"] = -20000, 20000
    primary = fits.PrimaryHDU()
    for key in ("TELESCOP", "INSTRUME", "OBJECT", "RA_PNT", "DEC_PNT", "PA_PNT", "EXPOSURE", "SEED", "CREATOR"):
        primary.header[key] = events.header[key]
    return fits.HDUList([primary, table])


def write_events(events: EventList, path: str | Path) -> None:
    """Write an event list atomically (same content -> byte-identical file)."""
    write_fits_atomic(to_hdulist(events), path)


def read_events(path: str | Path) -> tuple[fits.FITS_rec, fits.Header]:
    """Read the EVENTS table and its header of a pn event list (simulated or real)."""
    with open_fits(path, "event list") as hdul:
        if "EVENTS" not in hdul:
            raise InputError(path, "EVENTS extension", "missing", "give a pn event list (e.g. a PPS PIEVLI file)")
        hdu = hdul["EVENTS"]
        missing = [c for c in REQUIRED_FOR_BINNING if c not in hdu.columns.names]
        if missing:
            raise InputError(path, f"EVENTS columns {missing}", "missing",
                             f"the event list needs the columns {list(REQUIRED_FOR_BINNING)}")
        return hdu.data, hdu.header.copy()


def column(data: fits.FITS_rec, name: str) -> np.ndarray:
    """A column as a native-endian numpy array."""
    a = np.asarray(data[name])
    return a.astype(a.dtype.newbyteorder("="), copy=False)
