"""SIMPUT export (and re-import) of sky models, for SIXTE and other SIMPUT-aware simulators.

Layout of a SIMPUT file written by :func:`write_simput` (SIMPUT format version 1.1.0, as written
and read by the reference library ``libsimput``, github.com/thdauser/simput,
``libsimput/fileaccess.c``):

* Primary HDU: no data; provenance of the sky model (``SRCKIND``, ``SRCID``, ``SEED``,
  ``RA_PNT``, ``DEC_PNT``, ``CREATOR``) and the extended-emission spectrum (``SPECMOD``,
  ``SPECPAR``, ``NH``, also kept when the image holds no flux).
* ``SRC_CAT`` binary table (``HDUCLASS = 'HEASARC/SIMPUT'``, ``HDUCLAS1 = 'SRC_CAT'``,
  ``HDUVERS = '1.1.0'``): one row per source with ``SRC_ID`` (J), ``SRC_NAME``, ``RA``/``DEC``
  (D, deg), ``IMGROTA`` (deg), ``IMGSCAL``, ``E_MIN``/``E_MAX`` (keV), ``FLUX`` (erg/s/cm**2),
  ``SPECTRUM``, ``IMAGE``, ``TIMING``. Rows:

  - the extended emission (only if the sky image holds flux): ``IMAGE = '[IMAGE,1]'``,
    ``RA``/``DEC`` = the image's ``CRVAL`` (libsimput moves the image WCS reference point onto
    the catalogue position), ``IMGROTA = 0``, ``IMGSCAL = 1``;
  - one point source per row of the sky model's point-source table, ``IMAGE = 'NULL'``.

  An AGN-only field therefore has only point-source rows; a background field (no sources) has a
  ``SRC_CAT`` with zero rows. ``TIMING`` is always ``'NULL'`` (constant sources).
* ``SPECTRUM`` binary table (``HDUCLAS1 = 'SPECTRUM'``, EXTVER 1): one row per source, columns
  ``ENERGY`` (keV) and ``FLUXDENSITY`` (photon/s/cm**2/keV) as fixed-length arrays on the same
  grid (default 0.1-15 keV), ``NAME``; plus the columns ``SPECMOD``, ``SPECPAR``, ``NH`` that
  record the analytic model (other SIMPUT readers ignore them; :func:`read_simput` uses them).
  The catalogue references a row as ``[SPECTRUM,1][NAME=='<name>']`` (a reference starting with
  ``[`` means "this file", CFITSIO extended-filename syntax with a row filter).
* ``IMAGE`` image extension (``HDUCLAS1 = 'IMAGE'``, EXTVER 1): the sky-model photon-flux image
  with its celestial TAN WCS (SIMPUT uses only the relative pixel values). It is always written,
  so that the image grid survives the round trip, but it is referenced only when it holds flux.

Fluxes: sky models hold *photon* fluxes (ph cm-2 s-1) in 0.5-2 keV; SIMPUT ``FLUX`` is the
*energy* flux in [E_MIN, E_MAX] = [0.5, 2] keV. The conversion is ``FLUX = photon flux *
<E>`` with ``<E> = int E N(E) dE / int N(E) dE`` over 0.5-2 keV, the mean photon energy of the
source's absorbed spectrum N(E) (:func:`xmmsr.sky.spectra.photon_spectrum`), in erg.
``FLUXDENSITY`` is normalised so that its 0.5-2 keV integral is the source's photon flux.
The absorption uses the same power-law cross-section as the simulator, which is fitted in
0.5-2 keV; outside the band the spectrum is an extrapolation of that approximation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from .. import __version__
from ..errors import InputError
from ..io import open_fits, write_fits_atomic
from .model import FLUX_UNIT, SkyModel, empty_point_table, validate_sky_model
from .spectra import BAND_KEV, photon_spectrum

KEV_TO_ERG = 1.602176634e-9
SIMPUT_VERSION = "1.1.0"
HDUCLASS = "HEASARC/SIMPUT"
ENERGY_FLUX_UNIT = "erg/s/cm**2"
FLUXDENSITY_UNIT = "photon/s/cm**2/keV"
SPECTRUM_EXT = ("SPECTRUM", 1)
IMAGE_EXT = ("IMAGE", 1)
IMAGE_REF = "[IMAGE,1]"
NULL_REF = "NULL"
EXTENDED_SPECTRUM_NAME = "extended"
DEFAULT_ENERGY_GRID_KEV = np.geomspace(0.1, 15.0, 1000)
SRC_CAT_COLUMNS = ("SRC_ID", "SRC_NAME", "RA", "DEC", "IMGROTA", "IMGSCAL", "E_MIN", "E_MAX", "FLUX",
                   "SPECTRUM", "IMAGE", "TIMING")
SPECTRUM_COLUMNS = ("ENERGY", "FLUXDENSITY", "NAME", "SPECMOD", "SPECPAR", "NH")
_BAND_GRID_POINTS = 20001


def spectrum_ref(name: str) -> str:
    """The SRC_CAT reference to the spectrum row called ``name`` in this file's SPECTRUM extension."""
    return f"[{SPECTRUM_EXT[0]},{SPECTRUM_EXT[1]}][NAME=='{name}']"


def band_integrals(model: str, parameter: float, nh: float, band_kev: tuple[float, float] = BAND_KEV
                   ) -> tuple[float, float]:
    """(int N dE, int E N dE) of the unnormalised absorbed spectrum over ``band_kev`` (trapezoid, fine grid)."""
    e = np.linspace(band_kev[0], band_kev[1], _BAND_GRID_POINTS)
    n = photon_spectrum(model, parameter, nh, e)
    return float(np.trapezoid(n, e)), float(np.trapezoid(e * n, e))


def mean_photon_energy_erg(model: str, parameter: float, nh: float, band_kev: tuple[float, float] = BAND_KEV
                           ) -> float:
    """Mean photon energy (erg) of the absorbed spectrum in ``band_kev``: energy flux / photon flux."""
    photons, energy = band_integrals(model, parameter, nh, band_kev)
    return energy / photons * KEV_TO_ERG


def _spectrum_row(name: str, model: str, parameter: float, nh: float, photon_flux: float,
                  grid: np.ndarray) -> dict:
    photons, _ = band_integrals(model, parameter, nh)
    density = photon_spectrum(model, parameter, nh, grid) * (photon_flux / photons if photons > 0 else 0.0)
    return {"NAME": name, "SPECMOD": model, "SPECPAR": float(parameter), "NH": float(nh),
            "ENERGY": grid, "FLUXDENSITY": density}


def to_simput_hdulist(sky: SkyModel, energy_grid_kev: np.ndarray | None = None) -> fits.HDUList:
    """Serialise a sky model to SIMPUT HDUs (see the module docstring for the layout)."""
    grid = np.asarray(DEFAULT_ENERGY_GRID_KEV if energy_grid_kev is None else energy_grid_kev, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2 or not np.all(np.diff(grid) > 0) or grid[0] <= 0:
        raise ValueError("energy_grid_kev must be a strictly increasing 1-D grid of positive energies (keV)")
    if grid[0] > BAND_KEV[0] or grid[-1] < BAND_KEV[1]:
        raise ValueError(f"energy_grid_kev must cover the flux band {BAND_KEV[0]}-{BAND_KEV[1]} keV")

    rows: list[dict] = []     # SRC_CAT rows
    spectra: list[dict] = []  # SPECTRUM rows
    src_id = 1
    image_flux = float(np.asarray(sky.image, dtype=np.float64).sum())
    model, parameter = sky.spectrum[0], float(sky.spectrum[1])
    if image_flux > 0:
        ra0, dec0 = (float(v) for v in sky.wcs.wcs.crval)
        spectra.append(_spectrum_row(EXTENDED_SPECTRUM_NAME, model, parameter, sky.nh, image_flux, grid))
        rows.append({"SRC_ID": src_id, "SRC_NAME": f"{sky.kind}_{sky.source_id}_extended", "RA": ra0, "DEC": dec0,
                     "FLUX": image_flux * mean_photon_energy_erg(model, parameter, sky.nh),
                     "SPECTRUM": spectrum_ref(EXTENDED_SPECTRUM_NAME), "IMAGE": IMAGE_REF})
        src_id += 1
    for i, p in enumerate(sky.points):
        name = f"point{i + 1}"
        flux, gamma, nh = float(p["FLUX"]), float(p["GAMMA"]), float(p["NH"])
        spectra.append(_spectrum_row(name, "powerlaw", gamma, nh, flux, grid))
        rows.append({"SRC_ID": src_id, "SRC_NAME": f"{sky.kind}_{sky.source_id}_{name}", "RA": float(p["RA"]),
                     "DEC": float(p["DEC"]), "FLUX": flux * mean_photon_energy_erg("powerlaw", gamma, nh),
                     "SPECTRUM": spectrum_ref(name), "IMAGE": NULL_REF})
        src_id += 1

    primary = fits.PrimaryHDU()
    h = primary.header
    h["SRCKIND"] = (sky.kind, "extended, agn or background")
    h["SRCID"] = (int(sky.source_id), "source identifier")
    h["SEED"] = (int(sky.seed), "random seed of the source generator")
    h["RA_PNT"] = (float(sky.ra_pnt), "[deg] pointing (optical axis) RA")
    h["DEC_PNT"] = (float(sky.dec_pnt), "[deg] pointing (optical axis) Dec")
    h["CREATOR"] = (f"xmmsr {__version__}", "software that wrote this file")
    h["SPECMOD"] = (model, "spectral model of the extended emission")
    h["SPECPAR"] = (parameter, "photon index or kT (keV)")
    h["NH"] = (float(sky.nh), "[cm-2] absorbing column")
    h["COMMENT"] = "SIMPUT 1.1.0 source catalogue written from an xmmsr sky model."
    h["COMMENT"] = "FLUX (SRC_CAT) is the 0.5-2 keV energy flux: photon flux times mean photon energy."

    def col(name: str, fmt: str, unit: str | None, values: list) -> fits.Column:
        return fits.Column(name=name, format=fmt, unit=unit, array=np.array(values))

    strlen = max([len(r["SPECTRUM"]) for r in rows] + [len(IMAGE_REF), len(NULL_REF)])
    namelen = max([len(r["SRC_NAME"]) for r in rows] + [1])
    n = len(rows)
    catalog = fits.BinTableHDU.from_columns([
        col("SRC_ID", "J", None, [r["SRC_ID"] for r in rows]),
        col("SRC_NAME", f"{namelen}A", None, [r["SRC_NAME"] for r in rows]),
        col("RA", "D", "deg", [r["RA"] for r in rows]),
        col("DEC", "D", "deg", [r["DEC"] for r in rows]),
        col("IMGROTA", "E", "deg", [0.0] * n),
        col("IMGSCAL", "E", None, [1.0] * n),
        col("E_MIN", "E", "keV", [BAND_KEV[0]] * n),
        col("E_MAX", "E", "keV", [BAND_KEV[1]] * n),
        col("FLUX", "D", ENERGY_FLUX_UNIT, [r["FLUX"] for r in rows]),
        col("SPECTRUM", f"{strlen}A", None, [r["SPECTRUM"] for r in rows]),
        col("IMAGE", f"{strlen}A", None, [r["IMAGE"] for r in rows]),
        col("TIMING", f"{strlen}A", None, [NULL_REF] * n),
    ], name="SRC_CAT")
    _simput_keywords(catalog.header, "SRC_CAT")
    catalog.header["RADESYS"] = ("ICRS", "frame of RA and DEC")
    catalog.header["EQUINOX"] = (2000.0, "equinox of RA and DEC")

    ne = grid.size
    speclen = max([len(s["NAME"]) for s in spectra] + [1])
    spec_hdu = fits.BinTableHDU.from_columns([
        fits.Column(name="ENERGY", format=f"{ne}E", unit="keV",
                    array=np.array([s["ENERGY"] for s in spectra], dtype=np.float32).reshape(-1, ne)),
        fits.Column(name="FLUXDENSITY", format=f"{ne}E", unit=FLUXDENSITY_UNIT,
                    array=np.array([s["FLUXDENSITY"] for s in spectra], dtype=np.float32).reshape(-1, ne)),
        col("NAME", f"{speclen}A", None, [s["NAME"] for s in spectra]),
        col("SPECMOD", "8A", None, [s["SPECMOD"] for s in spectra]),
        col("SPECPAR", "D", None, [s["SPECPAR"] for s in spectra]),
        col("NH", "D", "cm-2", [s["NH"] for s in spectra]),
    ], name=SPECTRUM_EXT[0])
    _simput_keywords(spec_hdu.header, "SPECTRUM")
    spec_hdu.header["EXTVER"] = SPECTRUM_EXT[1]
    spec_hdu.header["COMMENT"] = "SPECMOD/SPECPAR/NH: absorbed powerlaw (photon index) or bremss (kT keV) model."

    img_header = sky.wcs.to_header()
    img_hdu = fits.ImageHDU(data=np.asarray(sky.image, dtype=np.float32), header=img_header, name=IMAGE_EXT[0])
    _simput_keywords(img_hdu.header, "IMAGE")
    img_hdu.header["EXTVER"] = IMAGE_EXT[1]
    img_hdu.header["BUNIT"] = (FLUX_UNIT, "0.5-2 keV photon flux per pixel")
    img_hdu.header["FLUXSCAL"] = (1.0, "SIMPUT flux scaling of the image")
    return fits.HDUList([primary, catalog, spec_hdu, img_hdu])


@dataclass(frozen=True)
class DiffuseComponent:
    """One extended emission component of a SIMPUT catalogue: an image (relative brightness on a celestial
    grid), its 0.5-2 keV photon flux and a tabulated photon spectrum (any normalisation) on the file's grid."""

    name: str
    image: np.ndarray
    wcs: WCS
    photon_flux: float            # ph cm-2 s-1 in 0.5-2 keV
    spectrum: np.ndarray          # photon spectrum on the energy grid, any normalisation


def diffuse_simput_hdulist(components: list[DiffuseComponent], energy_grid_kev: np.ndarray) -> fits.HDUList:
    """A SIMPUT catalogue of extended components only (one SRC_CAT row, spectrum and IMAGE extension each,
    ``IMAGE = '[IMAGE,k]'``), e.g. the diffuse sky background of a field for SIXTE's second catalogue."""
    grid = np.asarray(energy_grid_kev, dtype=np.float64)
    fine = np.linspace(BAND_KEV[0], BAND_KEV[1], _BAND_GRID_POINTS)
    rows, spectra, images = [], [], []
    for k, c in enumerate(components, start=1):
        density = np.interp(fine, grid, c.spectrum, left=0.0, right=0.0)
        photons, energy = np.trapezoid(density, fine), np.trapezoid(density * fine, fine)
        if photons <= 0 or c.photon_flux <= 0 or float(np.sum(c.image)) <= 0:
            continue
        spectra.append({"NAME": c.name, "ENERGY": grid, "FLUXDENSITY": c.spectrum * (c.photon_flux / photons)})
        ra, dec = (float(v) for v in c.wcs.wcs.crval)
        rows.append({"SRC_ID": k, "SRC_NAME": c.name, "RA": ra, "DEC": dec,
                     "FLUX": c.photon_flux * energy / photons * KEV_TO_ERG,
                     "SPECTRUM": spectrum_ref(c.name), "IMAGE": f"[{IMAGE_EXT[0]},{len(images) + 1}]"})
        hdu = fits.ImageHDU(data=np.asarray(c.image, dtype=np.float32), header=c.wcs.to_header(), name=IMAGE_EXT[0])
        _simput_keywords(hdu.header, "IMAGE")
        hdu.header["EXTVER"] = len(images) + 1
        images.append(hdu)
    n = len(rows)
    strlen = max([len(r["SPECTRUM"]) for r in rows] + [len(NULL_REF), 12])
    namelen = max([len(r["SRC_NAME"]) for r in rows] + [1])
    catalog = fits.BinTableHDU.from_columns([
        fits.Column("SRC_ID", "J", array=np.array([r["SRC_ID"] for r in rows], dtype=np.int32)),
        fits.Column("SRC_NAME", f"{namelen}A", array=np.array([r["SRC_NAME"] for r in rows], dtype=str)),
        fits.Column("RA", "D", "deg", array=np.array([r["RA"] for r in rows], dtype=float)),
        fits.Column("DEC", "D", "deg", array=np.array([r["DEC"] for r in rows], dtype=float)),
        fits.Column("IMGROTA", "E", "deg", array=np.zeros(n)), fits.Column("IMGSCAL", "E", array=np.ones(n)),
        fits.Column("E_MIN", "E", "keV", array=np.full(n, BAND_KEV[0])),
        fits.Column("E_MAX", "E", "keV", array=np.full(n, BAND_KEV[1])),
        fits.Column("FLUX", "D", ENERGY_FLUX_UNIT, array=np.array([r["FLUX"] for r in rows], dtype=float)),
        fits.Column("SPECTRUM", f"{strlen}A", array=np.array([r["SPECTRUM"] for r in rows], dtype=str)),
        fits.Column("IMAGE", f"{strlen}A", array=np.array([r["IMAGE"] for r in rows], dtype=str)),
        fits.Column("TIMING", f"{strlen}A", array=np.array([NULL_REF] * n, dtype=str)),
    ], name="SRC_CAT")
    _simput_keywords(catalog.header, "SRC_CAT")
    catalog.header["RADESYS"] = ("ICRS", "frame of RA and DEC")
    catalog.header["EQUINOX"] = (2000.0, "equinox of RA and DEC")
    ne = grid.size
    spec_hdu = fits.BinTableHDU.from_columns([
        fits.Column("ENERGY", f"{ne}E", "keV", array=np.array([s["ENERGY"] for s in spectra], np.float32).reshape(-1, ne)),
        fits.Column("FLUXDENSITY", f"{ne}E", FLUXDENSITY_UNIT,
                    array=np.array([s["FLUXDENSITY"] for s in spectra], np.float32).reshape(-1, ne)),
        fits.Column("NAME", f"{namelen}A", array=np.array([s["NAME"] for s in spectra], dtype=str))],
        name=SPECTRUM_EXT[0])
    _simput_keywords(spec_hdu.header, "SPECTRUM")
    spec_hdu.header["EXTVER"] = SPECTRUM_EXT[1]
    primary = fits.PrimaryHDU()
    primary.header["CREATOR"] = (f"xmmsr {__version__}", "software that wrote this file")
    return fits.HDUList([primary, catalog, spec_hdu, *images])


def simput_source_count(hdul: fits.HDUList) -> int:
    """Rows of the SRC_CAT extension (SIXTE refuses a catalogue without any)."""
    return len(hdul["SRC_CAT"].data) if hdul["SRC_CAT"].data is not None else 0


def _simput_keywords(header: fits.Header, hduclas1: str) -> None:
    header["HDUCLASS"] = (HDUCLASS, "format standard")
    header["HDUCLAS1"] = (hduclas1, "SIMPUT extension type")
    header["HDUVERS"] = (SIMPUT_VERSION, "SIMPUT format version")


def write_simput(sky: SkyModel, path: str | Path, energy_grid_kev: np.ndarray | None = None) -> Path:
    """Write ``sky`` as a SIMPUT file at ``path`` (atomically) and return the path.

    ``energy_grid_kev``: energies (keV) of the tabulated spectra (default 1000 log-spaced points,
    0.1-15 keV); it must cover 0.5-2 keV.
    """
    validate_sky_model(sky)
    out = Path(path)
    write_fits_atomic(to_simput_hdulist(sky, energy_grid_kev), out)
    return out


def _require(hdul: fits.HDUList, path: Path, extname: str, what: str) -> fits.hdu.base.ExtensionHDU:
    if extname not in hdul:
        raise InputError(path, f"{extname} extension", "missing",
                         f"give a SIMPUT file written by 'xmmsr simput' (it needs the {what})")
    return hdul[extname]


def _require_columns(table: fits.BinTableHDU, path: Path, columns: tuple[str, ...]) -> None:
    names = [c.upper() for c in table.columns.names]
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(path, f"{table.name} columns {missing}", "missing",
                         f"the {table.name} extension needs the columns {list(columns)}")


def _check_unit(table: fits.BinTableHDU, path: Path, column: str, expected: str) -> None:
    unit = (table.columns[column].unit or "").strip()
    if unit != expected:
        raise InputError(path, f"{table.name}.{column} unit", f"is {unit!r}, expected {expected!r}",
                         f"write {column} in {expected}")


def read_simput(path: str | Path) -> SkyModel:
    """Read a SIMPUT file written by :func:`write_simput` back into a :class:`SkyModel`.

    The photon fluxes in 0.5-2 keV are recovered from the SRC_CAT energy fluxes with the
    analytic spectrum recorded in the SPECTRUM rows; the image comes from the IMAGE extension,
    rescaled so that its total equals the extended source's photon flux.
    """
    p = Path(path)
    with open_fits(p, "SIMPUT file") as hdul:
        catalog = _require(hdul, p, "SRC_CAT", "source catalogue")
        spec_hdu = _require(hdul, p, SPECTRUM_EXT[0], "spectra")
        img_hdu = _require(hdul, p, IMAGE_EXT[0], "image grid of the sky model")
        _require_columns(catalog, p, SRC_CAT_COLUMNS)
        _require_columns(spec_hdu, p, SPECTRUM_COLUMNS)
        for column, unit in (("RA", "deg"), ("DEC", "deg"), ("E_MIN", "keV"), ("E_MAX", "keV"),
                             ("FLUX", ENERGY_FLUX_UNIT)):
            _check_unit(catalog, p, column, unit)
        if img_hdu.data is None or img_hdu.data.ndim != 2:
            raise InputError(p, "IMAGE extension", "holds no 2-D image", "write the sky image into the IMAGE extension")
        primary = hdul[0].header
        image = np.asarray(img_hdu.data, dtype=np.float64)
        wcs = WCS(img_hdu.header, naxis=2)
        spectra = {str(name).strip(): (str(mod).strip(), float(par), float(nh)) for name, mod, par, nh in zip(
            spec_hdu.data["NAME"], spec_hdu.data["SPECMOD"], spec_hdu.data["SPECPAR"], spec_hdu.data["NH"])}
        cat = catalog.data
        ext_spectrum = None
        points = []
        ext_photon_flux = 0.0
        for row in cat:
            ref = str(row["SPECTRUM"]).strip()
            name = _spectrum_name(ref)
            if name is None or name not in spectra:
                raise InputError(p, f"SRC_CAT.SPECTRUM of source {int(row['SRC_ID'])}",
                                 f"reference {ref!r} does not name a row of the SPECTRUM extension",
                                 f"use {spectrum_ref('<name>')!r} with a NAME present in SPECTRUM")
            model, parameter, nh = spectra[name]
            band = (float(row["E_MIN"]), float(row["E_MAX"]))
            photons_ref, _ = band_integrals(model, parameter, nh)
            _, energy_band = band_integrals(model, parameter, nh, band)
            photon_flux = float(row["FLUX"]) / (energy_band * KEV_TO_ERG) * photons_ref if energy_band > 0 else 0.0
            image_ref = str(row["IMAGE"]).strip()
            if image_ref.upper() not in (NULL_REF, ""):
                if image_ref != IMAGE_REF:
                    raise InputError(p, f"SRC_CAT.IMAGE of source {int(row['SRC_ID'])}",
                                     f"reference {image_ref!r} is not {IMAGE_REF!r}",
                                     "only files written by 'xmmsr simput' (one image source) can be read back")
                ext_spectrum = (model, parameter, nh)
                ext_photon_flux += photon_flux
            else:
                points.append((float(row["RA"]), float(row["DEC"]), photon_flux, parameter, nh))
    total = image.sum()
    if ext_spectrum is not None and total > 0:
        image = image * (ext_photon_flux / total)
    else:
        image = np.zeros_like(image)
    pts = np.zeros(len(points), dtype=empty_point_table().dtype)
    for i, (ra, dec, flux, gamma, nh) in enumerate(points):
        pts[i] = (ra, dec, flux, gamma, nh)
    if ext_spectrum is None:  # no extended source: the spectrum recorded in the primary header
        ext_spectrum = (str(primary.get("SPECMOD", "bremss")).strip(), float(primary.get("SPECPAR", 3.0)),
                        float(primary.get("NH", 3e20)))
    model = SkyModel(
        image=image.astype(np.float32),
        wcs=wcs,
        ra_pnt=float(primary.get("RA_PNT", wcs.wcs.crval[0])),
        dec_pnt=float(primary.get("DEC_PNT", wcs.wcs.crval[1])),
        kind=str(primary.get("SRCKIND", "extended")).strip(),
        source_id=int(primary.get("SRCID", 0)),
        seed=int(primary.get("SEED", 0)),
        spectrum=(ext_spectrum[0], ext_spectrum[1]),
        nh=ext_spectrum[2],
        points=pts,
    )
    validate_sky_model(model, p)
    return model


def _spectrum_name(ref: str) -> str | None:
    """The NAME in a ``[SPECTRUM,1][NAME=='x']`` reference (None if it is not one)."""
    prefix = f"[{SPECTRUM_EXT[0]},{SPECTRUM_EXT[1]}][NAME=='"
    if ref.startswith(prefix) and ref.endswith("']"):
        return ref[len(prefix):-2]
    return None
