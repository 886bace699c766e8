"""The field AGN population: soft-band logN-logS of Moretti et al. (2003) and its sampling.

The cumulative source counts in the 0.5-2 keV band follow the double power law of
Moretti, Campana, Lazzati & Tagliaferri (2003, ApJ 588, 696, eq. 2 and table 2, soft band):

    N(>S) = N0 (2e-15)^a1 / (S^a1 + S0^(a1 - a2) S^a2)      [deg^-2],  S in erg cm^-2 s^-1

with a1 = 1.82 (bright end), a2 = 0.60 (faint end), S0 = 1.48e-14 erg cm^-2 s^-1 (break) and
N0 = 6150 deg^-2.
"""

from __future__ import annotations

import astropy.units as u
import numpy as np

from ..errors import InputError
from .model import empty_point_table, make_wcs
from .spectra import BAND_KEV

MORETTI_A1 = 1.82
"""Bright-end slope of the soft-band N(>S) (Moretti et al. 2003)."""
MORETTI_A2 = 0.60
"""Faint-end slope of the soft-band N(>S) (Moretti et al. 2003)."""
MORETTI_S0 = 1.48e-14
"""Break flux of the soft-band N(>S), erg cm^-2 s^-1 (Moretti et al. 2003)."""
MORETTI_N0 = 6150.0
"""Normalisation of the soft-band N(>S), deg^-2 (Moretti et al. 2003)."""
MORETTI_SREF = 2e-15
"""Reference flux of the normalisation, erg cm^-2 s^-1 (Moretti et al. 2003)."""

KEV_TO_ERG = float((1.0 * u.keV).to_value(u.erg))
_FLUX_GRID_POINTS = 4096


def cumulative_counts(s: np.ndarray | float) -> np.ndarray | float:
    """Number of sources brighter than ``s`` (erg cm^-2 s^-1, 0.5-2 keV) per deg^2."""
    s = np.asarray(s, dtype=np.float64)
    numerator = MORETTI_N0 * MORETTI_SREF**MORETTI_A1
    result = numerator / (s**MORETTI_A1 + MORETTI_S0 ** (MORETTI_A1 - MORETTI_A2) * s**MORETTI_A2)
    return result if result.ndim else float(result)


def energy_to_photon_flux(s_erg: np.ndarray | float, gamma: np.ndarray | float,
                          band: tuple[float, float] = BAND_KEV) -> np.ndarray | float:
    """Photon flux (ph cm^-2 s^-1) of a power law of photon index ``gamma`` with energy flux ``s_erg``
    (erg cm^-2 s^-1), both in ``band`` (keV)."""
    e1, e2 = band
    if not 0 < e1 < e2:
        raise InputError(None, "band", f"{band} is not an energy band",
                         "give (e_min, e_max) with 0 < e_min < e_max keV")
    g = np.asarray(gamma, dtype=np.float64)
    photons = _power_integral(e1, e2, g)          # integral of E^-gamma dE
    energy = _power_integral(e1, e2, g - 1.0)     # integral of E^(1-gamma) dE, keV
    result = np.asarray(s_erg, dtype=np.float64) / KEV_TO_ERG * photons / energy
    return result if result.ndim else float(result)


def _power_integral(e1: float, e2: float, index: np.ndarray) -> np.ndarray:
    """Integral of E^-index from e1 to e2 (handles index = 1 by its logarithmic limit)."""
    one_minus = 1.0 - index
    near_log = np.abs(one_minus) < 1e-8
    safe = np.where(near_log, 1.0, one_minus)
    return np.where(near_log, np.log(e2 / e1), (e2**safe - e1**safe) / safe)


def sample_fluxes(rng: np.random.Generator, n: int, flux_min: float, flux_max: float) -> np.ndarray:
    """``n`` energy fluxes (erg cm^-2 s^-1) drawn from the Moretti N(>S) between the limits (inverse CDF)."""
    log_s = np.linspace(np.log(flux_min), np.log(flux_max), _FLUX_GRID_POINTS)
    n_above = cumulative_counts(np.exp(log_s))
    cdf = (n_above[0] - n_above) / (n_above[0] - n_above[-1])   # P(S' < S), rising from 0 to 1
    return np.exp(np.interp(rng.random(n), cdf, log_s))


def sample_agn(rng: np.random.Generator, center_ra: float, center_dec: float, width_deg: float,
               flux_min: float, flux_max: float, gamma: float, nh: float, min_count: int = 0) -> np.ndarray:
    """AGN point sources in a square tangent-plane field of side ``width_deg`` centred on (ra, dec).

    The number is Poisson with mean (N(>flux_min) - N(>flux_max)) x width_deg^2 (raised to
    ``min_count`` if fewer are drawn); energy fluxes (erg cm^-2 s^-1, 0.5-2 keV) are converted to
    photon flux for the power law ``gamma``. Returns a table with the dtype of ``empty_point_table()``.
    """
    if not 0 < flux_min < flux_max:
        raise InputError(None, "flux_min/flux_max", f"({flux_min}, {flux_max}) is not a flux range",
                         "give 0 < flux_min < flux_max in erg cm-2 s-1")
    if not width_deg > 0:
        raise InputError(None, "width_deg", f"{width_deg} is not a field width", "give a positive width in degrees")
    expected = (cumulative_counts(flux_min) - cumulative_counts(flux_max)) * width_deg**2
    n = max(int(rng.poisson(expected)), int(min_count))
    table = np.zeros(n, dtype=empty_point_table().dtype)
    if n == 0:
        return table
    fluxes = sample_fluxes(rng, n, flux_min, flux_max)
    # One "pixel" of the field's width: pixel coordinates in [-0.5, 0.5] span the square field.
    field_wcs = make_wcs(center_ra, center_dec, (1, 1), width_deg * 3600.0)
    xy = rng.random((2, n)) - 0.5
    ra, dec = field_wcs.wcs_pix2world(xy[0], xy[1], 0)
    table["RA"] = np.mod(ra, 360.0)
    table["DEC"] = dec
    table["FLUX"] = energy_to_photon_flux(fluxes, gamma)
    table["GAMMA"] = gamma
    table["NH"] = nh
    return table
