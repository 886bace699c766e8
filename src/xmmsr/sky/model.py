"""The sky-model FITS format that every source kind writes and every simulation backend reads.

Layout of one sky-model file:

* Primary HDU: float32 image of photon flux per pixel in the 0.5-2 keV band
  (``BUNIT = 'ph cm-2 s-1'`` is written; on reading, any unit astropy parses as a photon flux is
  accepted and converted, e.g. ``photon/(cm2 s)`` or ``ph/(m2 s)``), celestial TAN WCS with ``CDELT`` in
  degrees, pointing in
  ``RA_PNT``/``DEC_PNT``, spectrum of the extended emission in ``SPECMOD``/``SPECPAR``
  (``powerlaw`` photon index or ``bremss`` temperature in keV) and ``NH`` (cm^-2),
  provenance (``SRCKIND``, ``SRCID``, ``SEED``, augmentation keywords).
* Optional ``POINTSRC`` binary table: ``RA``, ``DEC`` (deg), ``FLUX`` (ph cm-2 s-1, 0.5-2 keV),
  ``GAMMA`` (photon index), ``NH`` (cm^-2).

The same content maps one-to-one onto SIMPUT (image-based extended source plus point sources
with power-law spectra).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from .. import __version__
from ..errors import InputError
from ..io import open_fits, write_fits_atomic
from .spectra import BAND_KEV

FLUX_UNIT = "ph cm-2 s-1"
SPECTRAL_MODELS = ("powerlaw", "bremss")
SOURCE_KINDS = ("extended", "agn", "background")
POINT_COLUMNS = ("RA", "DEC", "FLUX", "GAMMA", "NH")


@dataclass(frozen=True)
class FieldBackground:
    """Scale factors of the background components of one observed field (drawn per sky model, kept in its
    header): particle, cosmic X-ray background, Galactic foreground, and the soft-proton residual level
    (0: none). The simulator applies them to the events, the expected image and the background plane alike."""

    particle: float = 1.0
    cxb: float = 1.0
    galactic: float = 1.0
    soft_protons: float = 0.0

    KEYWORDS = {"particle": "BKGPART", "cxb": "BKGCXB", "galactic": "BKGGAL", "soft_protons": "BKGSP"}

    @classmethod
    def of(cls, meta: dict) -> "FieldBackground":
        """From sky-model header keywords (defaults where absent)."""
        values = {name: float(meta[key]) for name, key in cls.KEYWORDS.items() if key in meta}
        return cls(**values)

    def as_meta(self) -> dict[str, float]:
        return {key: float(getattr(self, name)) for name, key in self.KEYWORDS.items()}


def ccd_live_fractions(meta: dict, n_ccds: int = 12) -> np.ndarray:
    """Fraction of the exposure each CCD (1..n) was live in a field: header keyword ``CCDLIVE`` (comma-
    separated, one per CCD), all 1 when absent."""
    if "CCDLIVE" not in meta:
        return np.ones(n_ccds)
    values = np.array([float(v) for v in str(meta["CCDLIVE"]).split(",")])
    if values.size != n_ccds or np.any((values < 0) | (values > 1)):
        raise ValueError(f"CCDLIVE {meta['CCDLIVE']!r} is not {n_ccds} fractions in [0, 1]")
    return values


def empty_point_table() -> np.ndarray:
    """A zero-length point-source table with the standard columns."""
    return np.zeros(0, dtype=[(c, "f8") for c in POINT_COLUMNS])


@dataclass
class SkyModel:
    """Photon-flux image on a celestial grid plus point sources, in the 0.5-2 keV band."""

    image: np.ndarray
    wcs: WCS
    ra_pnt: float
    dec_pnt: float
    kind: str
    source_id: int = 0
    seed: int = 0
    spectrum: tuple[str, float] = ("bremss", 3.0)
    nh: float = 3e20
    points: np.ndarray = field(default_factory=empty_point_table)
    meta: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def pixel_arcsec(self) -> float:
        """Pixel size of the image in arcsec (square pixels)."""
        return float(abs(self.wcs.wcs.cdelt[1]) * 3600.0) if not self.wcs.wcs.has_cd() else float(
            np.sqrt(abs(np.linalg.det(self.wcs.wcs.cd))) * 3600.0
        )

    @property
    def total_flux(self) -> float:
        """Total photon flux (extended plus point sources), ph cm-2 s-1."""
        return float(self.image.sum(dtype=np.float64) + self.points["FLUX"].sum())


def tan_wcs(crval: Sequence[float], crpix: Sequence[float], *, cdelt: Sequence[float] | None = None,
            cd: Any = None) -> WCS:
    """The one celestial TAN WCS builder (ICRS, degrees): reference value and pixel, and either CDELT
    (axes aligned with east-west and north-south) or a CD matrix (rotated, e.g. detector images)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = list(crpix)
    if cd is not None:
        w.wcs.cd = cd
    else:
        w.wcs.cdelt = list(cdelt)
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    return w


def _photon_flux_scale(bunit: object, path: str | Path) -> float:
    """The factor turning an image in ``bunit`` into ph cm-2 s-1: the unit is parsed (astropy.units), so any
    spelling of a photon flux is accepted (``ph cm-2 s-1``, ``photon/(cm2 s)``, ``ph/m2/s``...)."""
    import warnings

    import astropy.units as u

    text = str(bunit).strip()
    fix = "convert the image to 0.5-2 keV photon flux per pixel and set BUNIT (e.g. 'ph cm-2 s-1')"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", u.UnitsWarning)
            unit = u.Unit(text)
    except ValueError:
        raise InputError(path, "BUNIT", f"{text!r} is not a unit astropy can read", fix) from None
    target = u.Unit(FLUX_UNIT)
    if not text or not unit.is_equivalent(target):
        raise InputError(path, "BUNIT", f"is {text!r}, not a photon flux ({FLUX_UNIT})", fix)
    return float(unit.to(target))


def make_wcs(center_ra: float, center_dec: float, npix: tuple[int, int], pixel_arcsec: float) -> WCS:
    """A TAN WCS of ``npix = (ny, nx)`` pixels of ``pixel_arcsec`` centred on (ra, dec), east to the left."""
    ny, nx = npix
    return tan_wcs([center_ra, center_dec], [(nx + 1) / 2.0, (ny + 1) / 2.0],
                   cdelt=[-pixel_arcsec / 3600.0, pixel_arcsec / 3600.0])


def to_hdulist(model: SkyModel) -> fits.HDUList:
    """Serialise a sky model to FITS HDUs."""
    header = model.wcs.to_header()
    header["BUNIT"] = (FLUX_UNIT, "photon flux per pixel, 0.5-2 keV")
    header["E_MIN"] = (BAND_KEV[0], "[keV] lower band edge of the flux")
    header["E_MAX"] = (BAND_KEV[1], "[keV] upper band edge of the flux")
    header["RA_PNT"] = (float(model.ra_pnt), "[deg] pointing (optical axis) RA")
    header["DEC_PNT"] = (float(model.dec_pnt), "[deg] pointing (optical axis) Dec")
    header["SPECMOD"] = (model.spectrum[0], "spectral model of the extended emission")
    header["SPECPAR"] = (float(model.spectrum[1]), "photon index (powerlaw) or kT in keV (bremss)")
    header["NH"] = (float(model.nh), "[cm-2] absorption of the extended emission")
    header["SRCKIND"] = (model.kind, "source kind: extended, agn or background")
    header["SRCID"] = (int(model.source_id), "source identifier")
    header["SEED"] = (int(model.seed), "random seed of the source generator")
    header["CREATOR"] = (f"xmmsr {__version__}", "software that wrote this file")
    for key, value in model.meta.items():
        header[key[:8].upper()] = value
    primary = fits.PrimaryHDU(data=np.asarray(model.image, dtype=np.float32), header=header)
    points = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="RA", format="D", unit="deg", array=model.points["RA"]),
            fits.Column(name="DEC", format="D", unit="deg", array=model.points["DEC"]),
            fits.Column(name="FLUX", format="D", unit=FLUX_UNIT, array=model.points["FLUX"]),
            fits.Column(name="GAMMA", format="D", array=model.points["GAMMA"]),
            fits.Column(name="NH", format="D", unit="cm-2", array=model.points["NH"]),
        ],
        name="POINTSRC",
    )
    points.header["E_MIN"] = (BAND_KEV[0], "[keV]")
    points.header["E_MAX"] = (BAND_KEV[1], "[keV]")
    return fits.HDUList([primary, points])


def write_sky_model(model: SkyModel, path: str | Path) -> None:
    """Validate and write a sky model atomically."""
    validate_sky_model(model, path)
    write_fits_atomic(to_hdulist(model), path)


_PROVENANCE_SKIP = {
    "BUNIT", "E_MIN", "E_MAX", "RA_PNT", "DEC_PNT", "SPECMOD", "SPECPAR", "NH", "SRCKIND", "SRCID",
    "SEED", "CREATOR", "CHECKSUM", "DATASUM", "SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND",
}


def read_sky_model(path: str | Path) -> SkyModel:
    """Read and validate a sky-model FITS file; raise :class:`InputError` naming the bad field."""
    with open_fits(path, "sky model") as hdul:
        primary = hdul[0]
        header = primary.header
        data = primary.data
        if data is None or data.ndim != 2 or data.size == 0:
            raise InputError(path, "primary image", "no 2-D flux image (empty sky model)",
                             "write the 0.5-2 keV photon-flux image into the primary HDU")
        image = np.asarray(data, dtype=np.float32)
        wcs = WCS(header, naxis=2)
        if not wcs.has_celestial or not wcs.wcs.ctype[0].endswith("TAN"):
            raise InputError(path, "CTYPE1/CTYPE2", f"expected a celestial TAN WCS, found {list(wcs.wcs.ctype)}",
                             "write RA---TAN/DEC--TAN with CRVAL, CRPIX and CDELT in degrees")
        image = image * np.float32(_photon_flux_scale(header.get("BUNIT", ""), path))
        if "POINTSRC" in hdul:
            table = hdul["POINTSRC"].data
            missing = [c for c in POINT_COLUMNS if table is not None and c not in table.columns.names]
            if missing:
                raise InputError(path, f"POINTSRC columns {missing}", "missing",
                                 f"the point-source table needs the columns {list(POINT_COLUMNS)}")
            points = empty_point_table() if table is None else _table_to_points(table)
        else:
            points = empty_point_table()
        default_ra, default_dec = wcs.wcs.crval
        model = SkyModel(
            image=image,
            wcs=wcs,
            ra_pnt=float(header.get("RA_PNT", default_ra)),
            dec_pnt=float(header.get("DEC_PNT", default_dec)),
            kind=str(header.get("SRCKIND", "extended")).strip(),
            source_id=int(header.get("SRCID", 0)),
            seed=int(header.get("SEED", 0)),
            spectrum=(str(header.get("SPECMOD", "bremss")).strip(), float(header.get("SPECPAR", 3.0))),
            nh=float(header.get("NH", 3e20)),
            points=points,
            meta={k: header[k] for k in header if k not in _PROVENANCE_SKIP and not _is_wcs_key(k)},
        )
    validate_sky_model(model, path)
    return model


def _table_to_points(table: fits.FITS_rec) -> np.ndarray:
    out = np.zeros(len(table), dtype=empty_point_table().dtype)
    for c in POINT_COLUMNS:
        out[c] = np.asarray(table[c], dtype=np.float64)
    return out


def _is_wcs_key(key: str) -> bool:
    prefixes = ("CTYPE", "CRVAL", "CRPIX", "CDELT", "CUNIT", "CD1_", "CD2_", "PC1_", "PC2_", "WCSAXES",
                "LONPOLE", "LATPOLE", "RADESYS", "EQUINOX", "MJDREF", "DATEREF", "MJD-OBS", "DATE-OBS")
    return key.startswith(prefixes) or key in ("", "COMMENT", "HISTORY")


def validate_sky_model(model: SkyModel, path: str | Path | None = None) -> None:
    """Check a sky model for physically meaningful content; raise :class:`InputError` otherwise."""
    img = model.image
    if img.ndim != 2 or img.size == 0:
        raise InputError(path, "primary image", "no 2-D flux image (empty sky model)",
                         "write the photon-flux image into the primary HDU")
    if not np.all(np.isfinite(img)):
        raise InputError(path, "primary image", "contains NaN or infinite values", "replace them by 0 (no emission)")
    if np.any(img < 0):
        raise InputError(path, "primary image", f"contains negative flux (min {img.min():.3g})",
                         "photon flux must be >= 0; clip negative pixels to 0")
    if model.kind not in SOURCE_KINDS:
        raise InputError(path, "SRCKIND", f"is {model.kind!r}", f"use one of {list(SOURCE_KINDS)}")
    if model.spectrum[0] not in SPECTRAL_MODELS:
        raise InputError(path, "SPECMOD", f"is {model.spectrum[0]!r}", f"use one of {list(SPECTRAL_MODELS)}")
    if model.spectrum[0] == "bremss" and not model.spectrum[1] > 0:
        raise InputError(path, "SPECPAR", f"kT = {model.spectrum[1]} keV is not positive", "give kT > 0 keV")
    if not (0.0 <= model.nh < 1e25):
        raise InputError(path, "NH", f"is {model.nh}", "give an absorbing column in cm^-2, 0 <= NH < 1e25")
    pts = model.points
    if len(pts):
        if not np.all(np.isfinite(pts["FLUX"])) or np.any(pts["FLUX"] < 0):
            raise InputError(path, "POINTSRC.FLUX", "contains negative or non-finite flux", "use flux >= 0 in ph cm-2 s-1")
        if np.any(np.abs(pts["DEC"]) > 90) or not np.all(np.isfinite(pts["RA"])):
            raise InputError(path, "POINTSRC.RA/DEC", "contains invalid coordinates", "give RA, DEC in degrees")
    if model.kind != "background" and model.total_flux <= 0:
        raise InputError(path, "primary image / POINTSRC", "the sky model has no flux at all (empty sky model)",
                         "check the flux units and normalisation; a blank background-only field must say SRCKIND = 'background'")
