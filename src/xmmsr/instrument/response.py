"""Spectral response: effective area, source spectra, absorption and energy resolution (0.5-2 keV)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from ..errors import InputError
from ..io import open_fits

BAND_KEV = (0.5, 2.0)
PI_RANGE_EV = (500, 2000)
_ENERGY_GRID_KEV = np.linspace(BAND_KEV[0], BAND_KEV[1], 1501)


def read_effective_area(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an effective-area curve: a CSV of ``energy_keV,area_cm2`` or an OGIP ARF (SPECRESP).

    Returns (energy_keV, area_cm2), sorted by energy, covering at least 0.5-2 keV.
    """
    p = Path(path)
    if p.suffix.lower() in (".arf", ".fits", ".fit", ".rsp"):
        with open_fits(p, "effective-area file (ARF)", verify_checksum=False) as hdul:
            if "SPECRESP" not in hdul:
                raise InputError(p, "SPECRESP extension", "missing", "give an OGIP ARF made by SAS arfgen")
            t = hdul["SPECRESP"].data
            energy = 0.5 * (np.asarray(t["ENERG_LO"], float) + np.asarray(t["ENERG_HI"], float))
            area = np.asarray(t["SPECRESP"], float)
    else:
        if not p.is_file():
            raise InputError(p, "instrument.effective_area_file", "file not found",
                             "point it at a CSV of energy_keV,area_cm2 or an OGIP ARF")
        try:
            table = np.loadtxt(p, delimiter=",", comments="#", ndmin=2)
        except ValueError as exc:
            raise InputError(p, "effective-area table", f"cannot be parsed ({exc})",
                             "write two comma-separated columns energy_keV,area_cm2") from exc
        if table.shape[1] != 2:
            raise InputError(p, "effective-area table", f"has {table.shape[1]} columns", "write energy_keV,area_cm2")
        energy, area = table[:, 0], table[:, 1]
    order = np.argsort(energy)
    energy, area = energy[order], area[order]
    if energy[0] > BAND_KEV[0] or energy[-1] < BAND_KEV[1] or np.any(area < 0):
        raise InputError(p, "effective-area table", "does not cover 0.5-2 keV with non-negative areas",
                         "extend the table to cover the band")
    return energy, area


def absorption_cross_section(energy_kev: np.ndarray) -> np.ndarray:
    """Photo-electric cross-section per H atom (cm^2), power-law approximation of
    Morrison & McCammon (1983) in 0.5-2 keV: 2.4e-22 (E / keV)^(-8/3)."""
    return 2.4e-22 * np.power(energy_kev, -8.0 / 3.0)


def photon_spectrum(model: str, parameter: float, nh: float, energy_kev: np.ndarray) -> np.ndarray:
    """Unnormalised photon spectrum N(E) (ph cm-2 s-1 keV-1) of a power law (photon index) or of
    thermal bremsstrahlung (kT in keV; Gaunt factor approximated by (E/kT)^-0.4), absorbed by ``nh``."""
    if model == "powerlaw":
        spec = np.power(energy_kev, -parameter)
    elif model == "bremss":
        spec = np.power(energy_kev / parameter, -0.4) * np.exp(-energy_kev / parameter) / energy_kev
    else:
        raise ValueError(f"unknown spectral model {model!r}; use 'powerlaw' or 'bremss'")
    return spec * np.exp(-nh * absorption_cross_section(energy_kev))


_QUANTILE_STEPS = 4096


@dataclass(frozen=True)
class SpectralResponse:
    """What one spectrum gives through the instrument in the 0.5-2 keV band."""

    mean_area_cm2: float          # photon-flux-weighted mean effective area over the band
    pi_fraction: float            # fraction of detected photons with PI in [500, 2000] eV
    quantiles_kev: np.ndarray     # energy at CDF = k / 4096, k = 0..4096 (float32), plus a copy of the last
    quantile_slopes: np.ndarray   # differences of consecutive quantiles (float32)
    mean_energy_kev: float = 1.0  # mean true energy of the detected photons

    def sample_energies(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw true energies (keV) of ``n`` detected photons: inverse CDF tabulated on a uniform
        probability grid, linear within a step (two small-table look-ups, no search)."""
        f = rng.random(n, dtype=np.float32) * np.float32(_QUANTILE_STEPS)
        k_float = np.floor(f)
        k = k_float.astype(np.int32)
        f -= k_float
        return self.quantiles_kev[k] + self.quantile_slopes[k] * f


@dataclass(frozen=True)
class Response:
    """Effective area and energy resolution of the pn camera."""

    energy_kev: np.ndarray
    area_cm2: np.ndarray
    fwhm_ev_at_1kev: float

    def sigma_ev(self, energy_kev: np.ndarray) -> np.ndarray:
        """Gaussian energy resolution sigma in eV, scaling as sqrt(E)."""
        return self.fwhm_ev_at_1kev / 2.3548 * np.sqrt(energy_kev)

    def spectral(self, model: str, parameter: float, nh: float) -> SpectralResponse:
        """Band response to one spectrum (cached per spectrum)."""
        return _spectral(self, model, float(parameter), float(nh))

    def to_pi(self, rng: np.random.Generator, energy_kev: np.ndarray) -> np.ndarray:
        """Measured PI (eV, integer) of photons of true energy ``energy_kev``."""
        measured = rng.standard_normal(energy_kev.size, dtype=np.float32)
        measured *= np.sqrt(energy_kev)
        measured *= np.float32(self.fwhm_ev_at_1kev / 2.3548)
        measured += energy_kev * np.float32(1000.0)
        return np.rint(measured).astype(np.int16)

    def pi_fraction(self, energy_kev: np.ndarray) -> np.ndarray:
        """Probability that a photon of true energy ``energy_kev`` gets PI in [500, 2000] eV."""
        sigma_kev = self.sigma_ev(energy_kev) / 1000.0
        lo, hi = (PI_RANGE_EV[0] - 0.5) / 1000.0, (PI_RANGE_EV[1] + 0.5) / 1000.0
        return ndtr((hi - energy_kev) / sigma_kev) - ndtr((lo - energy_kev) / sigma_kev)

    def flat_pi_fraction(self) -> float:
        """PI-band fraction of events spread uniformly in energy over 0.5-2 keV (particle background)."""
        return float(np.mean(self.pi_fraction(_ENERGY_GRID_KEV)))

    def __hash__(self) -> int:
        return hash((self.energy_kev.tobytes(), self.area_cm2.tobytes(), self.fwhm_ev_at_1kev))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Response) and hash(self) == hash(other)


@lru_cache(maxsize=256)
def _spectral(response: Response, model: str, parameter: float, nh: float) -> SpectralResponse:
    e = _ENERGY_GRID_KEV
    spec = photon_spectrum(model, parameter, nh, e)
    area = np.interp(e, response.energy_kev, response.area_cm2)
    detected = spec * area
    mean_area = np.trapezoid(detected, e) / np.trapezoid(spec, e)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (detected[1:] + detected[:-1]) * np.diff(e))])
    cdf /= cdf[-1]
    quantiles = np.interp(np.linspace(0.0, 1.0, _QUANTILE_STEPS + 1), cdf, e)
    quantiles = np.append(quantiles, quantiles[-1]).astype(np.float32)
    pi_fraction = np.trapezoid(detected * response.pi_fraction(e), e) / np.trapezoid(detected, e)
    mean_energy = np.trapezoid(detected * e, e) / np.trapezoid(detected, e)
    return SpectralResponse(float(mean_area), float(pi_fraction), quantiles, np.diff(quantiles).astype(np.float32),
                            float(mean_energy))
