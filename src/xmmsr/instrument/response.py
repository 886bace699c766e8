"""Spectral response: effective area, source spectra, absorption and PI redistribution (0.5-2 keV band)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import open_fits
from ..sky.spectra import BAND_KEV, photon_spectrum

PI_RANGE_EV = (500, 2000)
# True energies whose photons can be counted in the band (the pn redistribution reaches 0.4-4 keV), 1 eV steps.
TRUE_ENERGY_RANGE_KEV = (0.4, 4.0)
_TRUE_ENERGY_GRID_KEV = np.linspace(TRUE_ENERGY_RANGE_KEV[0], TRUE_ENERGY_RANGE_KEV[1], 3601)


def read_effective_area(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an effective-area curve: a CSV of ``energy_keV,area_cm2`` or an OGIP ARF (SPECRESP).

    Returns (energy_keV, area_cm2), sorted by energy, covering at least the true energies 0.4-4 keV.
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
    lo, hi = TRUE_ENERGY_RANGE_KEV
    if energy[0] > lo + 0.01 or energy[-1] < hi - 0.01 or np.any(area < 0):
        raise InputError(p, "effective-area table", f"does not cover {lo}-{hi} keV with non-negative areas "
                         f"(photons of these true energies can be counted in the 0.5-2 keV band)",
                         "extend the table (an OGIP ARF covers it)")
    return energy, area


_QUANTILE_STEPS = 4096


@dataclass(frozen=True)
class SpectralResponse:
    """What one spectrum gives through the instrument in the 0.5-2 keV band.

    Fluxes are photon fluxes at true energies 0.5-2 keV; counts are events with PI in 500-2000 eV,
    which photons of true energies 0.4-4 keV can give (the redistribution)."""

    mean_area_cm2: float          # photon-flux-weighted mean effective area over the true 0.5-2 keV band
    pi_fraction: float            # in-band counts per photon detected in the true band (redistribution)
    quantiles_kev: np.ndarray     # true energy of the in-band counts at CDF = k / 4096, k = 0..4096, plus a copy of the last
    quantile_slopes: np.ndarray   # differences of consecutive quantiles (float32)
    mean_energy_kev: float = 1.0  # mean true energy of the in-band counts

    @property
    def band_area_cm2(self) -> float:
        """In-band counts per second per unit 0.5-2 keV photon flux (cm^2): what the image sees."""
        return self.mean_area_cm2 * self.pi_fraction

    def sample_energies(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw true energies (keV) of ``n`` in-band counts: inverse CDF tabulated on a uniform
        probability grid, linear within a step (two small-table look-ups, no search)."""
        f = rng.random(n, dtype=np.float32) * np.float32(_QUANTILE_STEPS)
        k_float = np.floor(f)
        k = k_float.astype(np.int32)
        f -= k_float
        return self.quantiles_kev[k] + self.quantile_slopes[k] * f


@dataclass(frozen=True, eq=False)
class Redistribution:
    """How photons of a true energy spread in PI, restricted to the band PI 500-2000 eV.

    On a uniform true-energy grid: the probability of an in-band PI, and the PI (eV) of the in-band
    events at ``K + 1`` equally spaced levels of their cumulative distribution. Built from a real pn
    response matrix (``tools/derive_redistribution.py``) or, for comparison, a Gaussian resolution."""

    energy_kev: np.ndarray       # uniform grid of true energies
    band_fraction: np.ndarray    # P(PI in band | E)
    pi_quantiles: np.ndarray     # (n_energies, K + 1) float32, increasing along each row

    @classmethod
    def from_file(cls, path: str | Path) -> "Redistribution":
        """Read a table of ``energy_keV,band_fraction,q00..qK`` (see tools/derive_redistribution.py)."""
        p = Path(path)
        if not p.is_file():
            raise InputError(p, "instrument.redistribution_file", "file not found",
                             "point it at a redistribution table made by tools/derive_redistribution.py, or set it "
                             "to null for a Gaussian resolution")
        try:
            table = _read_numeric_csv(p)
        except ValueError as exc:
            raise InputError(p, "redistribution table", f"cannot be parsed ({exc})",
                             "write energy_keV,band_fraction,q00..qK as made by tools/derive_redistribution.py") from exc
        energy, band, q = table[:, 0], table[:, 1], table[:, 2:]
        step = np.diff(energy)
        if (q.shape[1] < 3 or energy.size < 2 or np.any(step <= 0) or not np.allclose(step, step[0], rtol=1e-3)
                or np.any((band < 0) | (band > 1)) or np.any(np.diff(q, axis=1) < 0)
                or energy[0] > BAND_KEV[0] or energy[-1] < BAND_KEV[1]):
            raise InputError(p, "redistribution table", "needs a uniform increasing energy grid covering 0.5-2 keV, "
                             "band fractions in [0, 1] and increasing PI quantiles", "regenerate it with "
                             "tools/derive_redistribution.py")
        return cls(energy, band, q.astype(np.float32))

    @classmethod
    def gaussian(cls, fwhm_ev_at_1kev: float, levels: int = 64) -> "Redistribution":
        """A Gaussian resolution of ``fwhm_ev_at_1kev`` scaling as sqrt(E), centred on the true energy."""
        from scipy.special import ndtr, ndtri   # here: scipy.special is half a second of every command's start-up

        energy = np.round(np.arange(0.40, 4.0001, 0.01), 4)
        sigma = fwhm_ev_at_1kev / 2.3548 * np.sqrt(energy)
        lo, hi = PI_RANGE_EV[0] - 0.5, PI_RANGE_EV[1] + 0.5
        p_lo, p_hi = ndtr((lo - 1000 * energy) / sigma), ndtr((hi - 1000 * energy) / sigma)
        # The end levels stop 1e-4 short of the band edges: a Gaussian's far tails would otherwise stretch
        # the first and last steps of the table across the band.
        level = np.linspace(1e-4, 1.0 - 1e-4, levels + 1)
        p = np.clip(p_lo[:, None] + level[None, :] * (p_hi - p_lo)[:, None], 1e-300, 1 - 1e-16)
        q = np.clip(1000 * energy[:, None] + sigma[:, None] * ndtri(p), lo, hi)
        return cls(energy, p_hi - p_lo, np.maximum.accumulate(q, axis=1).astype(np.float32))

    def band_fraction_at(self, energy_kev: np.ndarray) -> np.ndarray:
        """Probability that photons of true energy ``energy_kev`` get PI in [500, 2000] eV."""
        return np.interp(energy_kev, self.energy_kev, self.band_fraction, left=0.0, right=0.0)

    def sample_pi(self, rng: np.random.Generator, energy_kev: np.ndarray) -> np.ndarray:
        """PI (eV, int16, in the band) of in-band events of true energy ``energy_kev``: quantiles
        interpolated linearly in energy and in probability."""
        n_levels = self.pi_quantiles.shape[1] - 1
        f = (np.asarray(energy_kev, np.float32) - np.float32(self.energy_kev[0])) * np.float32(1.0 / (self.energy_kev[1] - self.energy_kev[0]))
        f = np.clip(f, 0, self.energy_kev.size - 1.001)
        i = f.astype(np.int32)
        t = f - i
        u = rng.random(i.size, dtype=np.float32) * np.float32(n_levels)
        k = np.minimum(u.astype(np.int32), n_levels - 1)
        s = u - k
        q = self.pi_quantiles.ravel()   # flat look-ups (row i, level k at i * width + k): 1-D gathers are faster
        width = self.pi_quantiles.shape[1]
        at = i * np.int32(width) + k
        q_ik, q_ik1 = q[at], q[at + 1]
        q_i1k, q_i1k1 = q[at + width], q[at + width + 1]
        low = q_ik + (q_ik1 - q_ik) * s
        high = q_i1k + (q_i1k1 - q_i1k) * s
        pi = np.rint(low + (high - low) * t)
        return np.clip(pi, PI_RANGE_EV[0], PI_RANGE_EV[1]).astype(np.int16)

    def digest(self) -> bytes:
        return self.energy_kev.tobytes() + self.band_fraction.tobytes() + self.pi_quantiles.tobytes()


def _read_numeric_csv(path: Path) -> np.ndarray:
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip() and not line.startswith("#")]
    if lines and not _is_number(lines[0].split(",")[0]):
        lines = lines[1:]  # column names
    return np.loadtxt(lines, delimiter=",", ndmin=2)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, eq=False)
class Response:
    """Effective area and PI redistribution of the pn camera."""

    energy_kev: np.ndarray
    area_cm2: np.ndarray
    redistribution: Redistribution

    def spectral(self, model: str, parameter: float, nh: float) -> SpectralResponse:
        """Band response to one spectrum (cached per spectrum)."""
        return _spectral(self, model, float(parameter), float(nh))

    def to_pi(self, rng: np.random.Generator, energy_kev: np.ndarray) -> np.ndarray:
        """Measured PI (eV, integer, in the band) of in-band events of true energy ``energy_kev``."""
        return self.redistribution.sample_pi(rng, energy_kev)

    def pi_fraction(self, energy_kev: np.ndarray) -> np.ndarray:
        """Probability that a photon of true energy ``energy_kev`` gets PI in [500, 2000] eV."""
        return self.redistribution.band_fraction_at(energy_kev)

    def __hash__(self) -> int:
        return hash((self.energy_kev.tobytes(), self.area_cm2.tobytes(), self.redistribution.digest()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Response) and hash(self) == hash(other)


@lru_cache(maxsize=256)
def _spectral(response: Response, model: str, parameter: float, nh: float) -> SpectralResponse:
    e = _TRUE_ENERGY_GRID_KEV
    spec = photon_spectrum(model, parameter, nh, e)
    area = np.interp(e, response.energy_kev, response.area_cm2)
    in_band = (e >= BAND_KEV[0]) & (e <= BAND_KEV[1])
    band_flux = np.trapezoid(spec[in_band], e[in_band])
    mean_area = np.trapezoid((spec * area)[in_band], e[in_band]) / band_flux
    counted = spec * area * response.pi_fraction(e)  # in-band counts per unit energy
    band_area = np.trapezoid(counted, e) / band_flux
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (counted[1:] + counted[:-1]) * np.diff(e))])
    cdf /= cdf[-1]
    keep = np.concatenate([[True], np.diff(cdf) > 0])
    quantiles = np.interp(np.linspace(0.0, 1.0, _QUANTILE_STEPS + 1), cdf[keep], e[keep])
    quantiles = np.append(quantiles, quantiles[-1]).astype(np.float32)
    mean_energy = np.trapezoid(counted * e, e) / np.trapezoid(counted, e)
    return SpectralResponse(float(mean_area), float(band_area / mean_area), quantiles,
                            np.diff(quantiles).astype(np.float32), float(mean_energy))
