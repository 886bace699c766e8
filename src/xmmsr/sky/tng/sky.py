"""From a TNG gas cutout to a sky model: projection in photon flux, and the pipeline's extended sources.

Observation model: the cutout's gas (snapshot redshift z_snap, positions converted to physical kpc with
a = 1 / (1 + z_snap) and h) is placed at the observation redshift z, in a flat LambdaCDM cosmology built
from the header (H0 = 100 h km/s/Mpc, Omega_m = Omega0). The observed 0.5-2 keV band is emitted at
(0.5-2 keV) x (1 + z) in the rest frame (K-correction through the tabulated emissivity); the photon
flux is N_rest (1 + z) / (4 pi D_L^2), and angles are physical kpc / D_A(z). No Galactic absorption in
the image (the simulator applies the sky model's NH to the spectrum).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ..model import SkyModel, make_wcs
from ..spectra import BAND_KEV
from .cutout import GasCutout, read_cutout
from .physics import AXES, KEV_K, KPC_CM, MIN_TEMPERATURE_K, cell_emission, load_emissivity, project_cells

ARCSEC_PER_RAD = 180.0 / np.pi * 3600.0


@dataclass
class Projection:
    """A projected cutout: photon flux per pixel (ph cm-2 s-1, observed 0.5-2 keV) and its provenance."""

    image: np.ndarray
    pixel_arcsec: float
    kt_keV: float                 # photon-weighted gas temperature in the field, observed frame (kT / (1 + z))
    luminosity_erg_s: float       # rest-frame luminosity in the field, in the band that is observed at 0.5-2 keV
    meta: dict[str, float | int | str] = field(default_factory=dict)


def distances_cm(hubble: float, omega0: float, redshift: float) -> tuple[float, float]:
    """(angular-diameter, luminosity) distance in cm at ``redshift`` for flat LambdaCDM (H0 = 100 h, Om0)."""
    from astropy.cosmology import FlatLambdaCDM

    if not redshift > 0:
        raise InputError(None, "redshift", f"{redshift} is not > 0", "place the source at a redshift > 0")
    cosmo = FlatLambdaCDM(H0=100.0 * hubble, Om0=omega0)
    d_a = float(cosmo.angular_diameter_distance(redshift).to("cm").value)
    return d_a, d_a * (1.0 + redshift) ** 2


def project_cutout(cutout: GasCutout, axis: str, width_kpc: float, redshift: float, npix: int = 2048,
                   center_ckpc_h: np.ndarray | None = None, emissivity_table: str | Path | None = None,
                   min_temperature_k: float = MIN_TEMPERATURE_K) -> Projection:
    """Project ``cutout`` along ``axis`` onto ``npix``^2 pixels over ``width_kpc`` (physical) seen at ``redshift``."""
    from ...config import resolve_resource
    from .physics import EMISSIVITY_TABLE

    table = load_emissivity(str(resolve_resource(emissivity_table or EMISSIVITY_TABLE)))
    band_rest = (BAND_KEV[0] * (1.0 + redshift), BAND_KEV[1] * (1.0 + redshift))
    d_a, d_l = distances_cm(cutout.hubble, cutout.omega0, redshift)
    cells = cell_emission(cutout, table, band_rest, center_ckpc_h, min_temperature_k)
    photons = project_cells(cells, axis, width_kpc, npix)                      # ph/s per pixel, rest frame
    image = photons * (1.0 + redshift) / (4.0 * np.pi * d_l**2)
    ix, iy = AXES[axis]
    half = 0.5 * width_kpc
    inside = (np.abs(cells.position_kpc[:, ix]) < half) & (np.abs(cells.position_kpc[:, iy]) < half)
    weight = cells.photons_s[inside]
    kt = float(np.average(cells.temperature_k[inside], weights=weight)) / KEV_K if weight.sum() > 0 else 0.0
    pixel_arcsec = width_kpc / npix * KPC_CM / d_a * ARCSEC_PER_RAD
    meta: dict[str, float | int | str] = {
        "MODEL": "tng", "TNGAXIS": axis, "TNGWIDTH": float(width_kpc), "TNGZOBS": float(redshift),
        "TNGZSNAP": float(cutout.redshift), "TNGNCELL": int(inside.sum()),
        "TNGLX": float(cells.luminosity_erg_s[inside].sum()), "TNGFILE": Path(cutout.path or "").name[:60],
    }
    return Projection(image=image.astype(np.float32), pixel_arcsec=float(pixel_arcsec), kt_keV=kt / (1.0 + redshift),
                      luminosity_erg_s=float(cells.luminosity_erg_s[inside].sum()), meta=meta)


def projection_sky_model(projection: Projection, ra_deg: float, dec_deg: float, nh: float = 3e20,
                         provenance: dict[str, Any] | None = None) -> SkyModel:
    """The unaugmented sky model of a projection: its own grid centred on (ra, dec), pointed at the centre."""
    npix = projection.image.shape[0]
    meta = dict(projection.meta)
    meta.update(provenance or {})
    kt = projection.kt_keV if projection.kt_keV > 0 else 1.0
    return SkyModel(image=projection.image, wcs=make_wcs(ra_deg, dec_deg, (npix, npix), projection.pixel_arcsec),
                    ra_pnt=ra_deg, dec_pnt=dec_deg, kind="extended", spectrum=("bremss", kt), nh=nh, meta=meta)


def rebin_flux(image: np.ndarray, pixel_in: float, npix_out: int, pixel_out: float) -> np.ndarray:
    """Resample a centred image of ``pixel_in`` pixels onto a centred ``npix_out``^2 grid of ``pixel_out``,
    conserving flux (exact area overlaps; flux outside the output grid is lost)."""
    data = np.asarray(image, dtype=np.float64)

    def along(arr: np.ndarray, axis: int) -> np.ndarray:
        n_in = arr.shape[axis]
        edges_in = (np.arange(n_in + 1) - n_in / 2.0) * pixel_in
        edges_out = (np.arange(npix_out + 1) - npix_out / 2.0) * pixel_out
        cum = np.concatenate([np.zeros_like(np.take(arr, [0], axis=axis)), np.cumsum(arr, axis=axis)], axis=axis)
        pos = np.clip((edges_out - edges_in[0]) / pixel_in, 0.0, n_in)
        i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 1)
        frac = pos - i0
        shape = [1, 1]
        shape[axis] = -1
        lo, hi = np.take(cum, i0, axis=axis), np.take(cum, i0 + 1, axis=axis)
        at_edges = lo + (hi - lo) * frac.reshape(shape)
        return np.diff(at_edges, axis=axis)

    return np.clip(along(along(data, 1), 0), 0.0, None)


@lru_cache(maxsize=2)
def _cached_cutout(path: str) -> GasCutout:
    return read_cutout(path)


def tng_extended_image(rng: np.random.Generator, npix: int, pixel_arcsec: float, tng: dict[str, Any],
                       cutouts: list[dict[str, Any]]) -> tuple[np.ndarray, float, dict[str, float | int | str]]:
    """Draw (cutout, axis, width, redshift) from ``rng``, project, and resample onto the sky grid.

    ``tng`` is the ``sources.tng`` config section, ``cutouts`` the manifest entries. Returns the image
    (photon flux per sky pixel, centred on the grid), kT (keV, observed frame) and provenance keywords."""
    if not cutouts:
        raise InputError(None, "sources.tng manifest", "lists no cutouts",
                         "run the tng_download rule (xmmsr tng-download) or set sources.tng.local_dir to a folder "
                         "of cutout HDF5 files")
    entry = cutouts[int(rng.integers(len(cutouts)))]
    axes = list(tng["axes"])
    axis = axes[int(rng.integers(len(axes)))]
    widths = list(tng["widths_kpc"])
    width = float(widths[int(rng.integers(len(widths)))])
    z_lo, z_hi = (float(v) for v in tng["redshift"])
    redshift = float(rng.uniform(z_lo, z_hi))
    cutout = _cached_cutout(str(entry["file"]))
    center = entry.get("center_ckpc_h")
    projection = project_cutout(cutout, axis, width, redshift, int(tng["npix"]),
                                None if center is None else np.asarray(center, dtype=np.float64),
                                tng.get("emissivity_table"), float(tng["min_temperature_k"]))
    image = rebin_flux(projection.image, projection.pixel_arcsec, npix, pixel_arcsec)
    meta = dict(projection.meta)
    meta.update(_provenance(entry))
    kt = projection.kt_keV if projection.kt_keV > 0 else 1.0
    return image.astype(np.float32), kt, meta


def _provenance(entry: dict[str, Any]) -> dict[str, float | int | str]:
    """Header keywords of a manifest entry: simulation, snapshot, subhalo id."""
    return {"TNGSIM": str(entry.get("simulation", "")), "TNGSNAP": int(entry.get("snapshot", -1)),
            "TNGSUBID": int(entry.get("subhalo_id", -1))}
