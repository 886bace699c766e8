"""Event lists: the in-memory :class:`EventList` of a simulated observation (columns and header, the
same for the built-in simulator and SIXTE), the pointing frame that places events on the sky, and
the FITS files in the layout of EPIC-pn event lists (EVENTS extension)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from .. import __version__
from ..errors import InputError
from ..io import open_fits, write_table_file
from ..sky.model import SkyModel
from .geometry import DET_UNIT_ARCSEC
from .model import PnInstrument

SKY_REF_PIXEL = 25920.5  # sky X/Y reference pixel (0.05" units), as in pn event lists
MJDREF_XMM = 50814.0     # 1998-01-01 TT, the XMM-Newton mission time origin
EVENT_COLUMNS = ("TIME", "X", "Y", "DETX", "DETY", "RAWX", "RAWY", "CCDNR", "PI", "ENERGY", "PATTERN", "FLAG")
COLUMN_DTYPES = {"TIME": np.float64, "X": np.int32, "Y": np.int32, "DETX": np.int16, "DETY": np.int16,
                  "RAWX": np.int16, "RAWY": np.int16, "CCDNR": np.uint8, "PI": np.int16, "ENERGY": np.float32,
                  "PATTERN": np.int16, "FLAG": np.int32}


@dataclass
class EventList:
    """Event columns (numpy arrays of equal length) and header keywords of one simulated observation."""

    columns: dict[str, np.ndarray]
    header: dict[str, tuple[object, str]]

    def __len__(self) -> int:
        return int(self.columns["TIME"].size)


@dataclass(frozen=True)
class Pointing:
    """Transformations between the sky model, the tangent plane about the pointing and the detector."""

    ra_pnt: float
    dec_pnt: float
    cos_roll: float
    sin_roll: float
    aim_x: float
    aim_y: float

    @classmethod
    def of(cls, sky: SkyModel, instrument: PnInstrument) -> "Pointing":
        roll = np.deg2rad(instrument.roll_deg)
        g = instrument.geometry
        return cls(sky.ra_pnt, sky.dec_pnt, float(np.cos(roll)), float(np.sin(roll)), g.aim_x_arcsec, g.aim_y_arcsec)

    def tangent(self, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gnomonic projection about the pointing: (xi east, eta north) in arcsec."""
        a, d = np.deg2rad(ra), np.deg2rad(dec)
        a0, d0 = np.deg2rad(self.ra_pnt), np.deg2rad(self.dec_pnt)
        cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
        xi = np.cos(d) * np.sin(a - a0) / cosc
        eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cosc
        return np.rad2deg(xi) * 3600.0, np.rad2deg(eta) * 3600.0

    def to_sky(self, xi: np.ndarray | float, eta: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`tangent`: tangent-plane positions (arcsec) -> (RA, Dec) in degrees."""
        x, y = np.deg2rad(np.asarray(xi, dtype=float) / 3600.0), np.deg2rad(np.asarray(eta, dtype=float) / 3600.0)
        a0, d0 = np.deg2rad(self.ra_pnt), np.deg2rad(self.dec_pnt)
        denom = np.cos(d0) - y * np.sin(d0)
        ra = a0 + np.arctan2(x, denom)
        dec = np.arctan2(np.sin(d0) + y * np.cos(d0), np.hypot(x, denom))
        return np.rad2deg(ra) % 360.0, np.rad2deg(dec)

    def to_detector(self, xi: np.ndarray, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tangent plane (arcsec) -> detector (arcsec from the array centre); DETX grows to the west."""
        u, v = -xi, eta
        return (self.cos_roll * u - self.sin_roll * v + self.aim_x,
                self.sin_roll * u + self.cos_roll * v + self.aim_y)

    def to_tangent(self, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detector (arcsec) -> tangent plane (arcsec), in the precision of the input arrays."""
        t = dx.dtype.type
        ux, uy = dx - t(self.aim_x), dy - t(self.aim_y)
        if self.sin_roll == 0.0 and self.cos_roll == 1.0:
            return -ux, uy
        c, s = t(self.cos_roll), t(self.sin_roll)
        return -(c * ux + s * uy), c * uy - s * ux


def set_positions(columns: dict[str, np.ndarray], rows: slice, dx: np.ndarray, dy: np.ndarray, xi: np.ndarray,
                  eta: np.ndarray, instrument: PnInstrument, resolution: int) -> None:
    """Fill the position columns (CCDNR, RAWX, RAWY, FLAG, X, Y, DETX, DETY) of ``rows`` from detector
    positions ``dx``, ``dy`` and tangent-plane positions ``xi``, ``eta`` (arcsec)."""
    for name, values in zip(("CCDNR", "RAWX", "RAWY", "FLAG"), instrument.geometry.locate(dx, dy, resolution)):
        columns[name][rows] = values
    unit = DET_UNIT_ARCSEC
    columns["X"][rows] = np.rint(SKY_REF_PIXEL - xi / unit)
    columns["Y"][rows] = np.rint(SKY_REF_PIXEL + eta / unit)
    columns["DETX"][rows] = np.rint(dx / dx.dtype.type(unit))
    columns["DETY"][rows] = np.rint(dy / dy.dtype.type(unit))


def event_header(sky: SkyModel, instrument: PnInstrument, frame: Pointing, exposure_s: float, resolution: int,
                  seed: int, background: bool, tstart: float) -> dict[str, tuple[object, str]]:
    g = instrument.geometry
    header: dict[str, tuple[object, str]] = {
        "HDUCLASS": ("OGIP", "format conforms to OGIP standard"),
        "HDUCLAS1": ("EVENTS", "extension contains an event list"),
        "TELESCOP": ("XMM", "mission"),
        "INSTRUME": ("EPN", "instrument"),
        "DATAMODE": ("IMAGING", "instrument mode"),
        "SUBMODE": (instrument.submode, "pn imaging mode"),
        "FILTER": ("Thin1", "filter"),
        "OBJECT": (f"{sky.kind} {sky.source_id}", "simulated source"),
        "RA_PNT": (float(frame.ra_pnt), "[deg] pointing RA (optical axis)"),
        "DEC_PNT": (float(frame.dec_pnt), "[deg] pointing Dec"),
        "PA_PNT": (float(instrument.roll_deg), "[deg] roll of DETX/DETY relative to west/north"),
        "AIMDETX": (g.aim_x_arcsec / DET_UNIT_ARCSEC, "[0.05 arcsec] DETX of the pointing direction"),
        "AIMDETY": (g.aim_y_arcsec / DET_UNIT_ARCSEC, "[0.05 arcsec] DETY of the pointing direction"),
        "AXISDETX": (g.axis_x_arcsec / DET_UNIT_ARCSEC, "[0.05 arcsec] DETX of the optical axis"),
        "AXISDETY": (g.axis_y_arcsec / DET_UNIT_ARCSEC, "[0.05 arcsec] DETY of the optical axis"),
        "OBS_ID": (f"{int(seed) % 10**10:010d}", "simulated observation (from the seed)"),
        "DATE-OBS": (mission_date(tstart), "start of the observation (TT)"),
        "DATE-END": (mission_date(tstart + exposure_s), "end of the observation (TT)"),
        "RADECSYS": ("FK5", "frame of the celestial coordinates"),
        "EQUINOX": (2000.0, "equinox of the celestial coordinates"),
        "MJDREF": (MJDREF_XMM, "[d] MJD of the mission time origin"),
        "TIMESYS": ("TT", "time system"),
        "TIMEREF": ("LOCAL", "TIME not barycentre-corrected"),
        "TASSIGN": ("SATELLITE", "where TIME is assigned"),
        "TIMEUNIT": ("s", "unit of TIME"),
        "TSTART": (float(tstart), "[s] start of the observation"),
        "TSTOP": (float(tstart + exposure_s), "[s] end of the observation"),
        "EXPOSURE": (float(exposure_s), "[s] exposure time"),
        "ONTIME": (float(exposure_s), "[s] on-source time"),
        "LIVETIME": (float(exposure_s), "[s] live time"),
        "FRMTIME": (instrument.frame_time_s * 1000.0, "[ms] frame time"),
        "RESMULT": (int(resolution), "resolution multiplier (1 real pn, 2 for 2x)"),
        "BACKGRND": (bool(background), "particle and cosmic background included"),
        "SEED": (int(seed), "random seed of this realization"),
        "SRCKIND": (sky.kind, "source kind"),
        "SRCID": (int(sky.source_id), "source identifier"),
        "SRCSEED": (int(sky.seed), "seed of the sky model"),
        "SIMULATR": ("xmmsr builtin", "simulation backend"),
        "CREATOR": (f"xmmsr {__version__}", "software that wrote this file"),
    }
    for ccd in range(1, g.ccds_x * g.ccds_y + 1):
        header[f"ONTIME{ccd:02d}"] = (float(exposure_s), f"[s] on time of CCD {ccd}")
    return header


def mission_date(seconds: float) -> str:
    """ISO date (TT) of mission time ``seconds`` after MJDREF (1998-01-01 TT)."""
    from astropy.time import Time, TimeDelta

    return (Time(MJDREF_XMM, format="mjd", scale="tt") + TimeDelta(float(seconds), format="sec")).isot[:19]


def _limits(resolution: int) -> dict[str, tuple[int, int]]:
    """TLMIN/TLMAX of the integer columns (their legal ranges; xselect and SAS refuse PI without them).
    RAWX/RAWY count from 0 the raw pixels of the resolution (64 x 200 per CCD at 1x)."""
    return {"RAWX": (0, 64 * resolution - 1), "RAWY": (0, 200 * resolution - 1), "CCDNR": (1, 12),
            "PI": (0, 20479), "PATTERN": (0, 13)}


_FORMATS = {
    "TIME": ("D", "s"), "X": ("J", "0.05 arcsec"), "Y": ("J", "0.05 arcsec"),
    "DETX": ("I", "0.05 arcsec"), "DETY": ("I", "0.05 arcsec"), "RAWX": ("I", "pixel"), "RAWY": ("I", "pixel"),
    "CCDNR": ("B", ""), "PI": ("I", "eV"), "ENERGY": ("E", "eV"), "PATTERN": ("I", ""), "FLAG": ("J", ""),
}
REQUIRED_FOR_BINNING = ("DETX", "DETY", "PI", "PATTERN", "FLAG")


def _table_header(events: EventList) -> fits.Header:
    """The EVENTS keywords: the simulation's, the sky WCS of X/Y and the legal ranges of the columns."""
    h = fits.Header()
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
    for name, (lo, hi) in _limits(int(events.header["RESMULT"][0])).items():
        h[f"TLMIN{index[name]}"], h[f"TLMAX{index[name]}"] = lo, hi
    return h


def _primary(events: EventList) -> fits.PrimaryHDU:
    primary = fits.PrimaryHDU()
    for key in ("TELESCOP", "INSTRUME", "OBJECT", "OBS_ID", "DATE-OBS", "DATE-END", "RA_PNT", "DEC_PNT", "PA_PNT",
                "EXPOSURE", "SEED", "CREATOR"):
        if key in events.header:
            primary.header[key] = events.header[key]
    return primary


def to_hdulist(events: EventList) -> fits.HDUList:
    """Serialise an event list: empty primary HDU plus EVENTS with pn-like columns and keywords, and a GTI
    table per CCD (what :func:`write_events` writes, as astropy objects)."""
    cols = [fits.Column(name=n, format=f, unit=u or None, array=events.columns[n]) for n, (f, u) in _FORMATS.items()]
    table = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    for card in _table_header(events).cards:
        table.header[card.keyword] = (card.value, card.comment)
    return fits.HDUList([_primary(events), table, *gti_hdus(events.header)])


def gti_hdus(header: dict[str, tuple[object, str]]) -> list[fits.BinTableHDU]:
    """One good-time table per CCD as SAS writes them (``STDGTI01`` ... ``STDGTI12``, ``CCDID``): the CCD's
    on time (``ONTIMEnn``) from TSTART."""
    tstart = float(header["TSTART"][0])
    hdus = []
    for ccd in range(1, 13):
        key = f"ONTIME{ccd:02d}"
        if key not in header:
            continue
        ontime = float(header[key][0])
        hdu = fits.BinTableHDU.from_columns([
            fits.Column("START", "D", "s", array=np.array([tstart])[: 1 if ontime > 0 else 0]),
            fits.Column("STOP", "D", "s", array=np.array([tstart + ontime])[: 1 if ontime > 0 else 0])],
            name=f"STDGTI{ccd:02d}")
        hdu.header["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
        hdu.header["HDUCLAS1"] = ("GTI", "good time intervals")
        hdu.header["HDUCLAS2"] = ("STANDARD", "")
        hdu.header["CCDID"] = (ccd, "CCD of these intervals")
        hdu.header["ONTIME"] = (ontime, "[s] sum of the intervals")
        hdu.header["TIMESYS"], hdu.header["MJDREF"] = "TT", MJDREF_XMM
        hdus.append(hdu)
    return hdus


def write_events(events: EventList, path: str | Path) -> None:
    """Write an event list atomically (same content -> byte-identical file; the bytes of :func:`to_hdulist`,
    the rows filled column by column)."""
    write_table_file(path, _primary(events), "EVENTS", _table_header(events), events.columns, _FORMATS,
                     gti_hdus(events.header))


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
