"""King-profile PSF: PSF(r) ∝ [1 + (r/r_c)^2]^(-alpha), truncated at r_max, widening off-axis."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class KingPsf:
    """On-axis King profile at resolution multiplier 1, its off-axis growth and truncation radius."""

    core_radius_arcsec: float = 4.0
    alpha: float = 1.45
    max_radius_arcsec: float = 300.0
    offaxis_growth: float = 0.5      # fractional growth of r_c at 15' off-axis, quadratic in angle
    band_arcmin: float = 5.0         # r_c is constant within off-axis bands of this width

    def band_index(self, offaxis_arcmin: np.ndarray) -> np.ndarray:
        """Off-axis band of each position (the PSF is constant within a band)."""
        return np.floor(offaxis_arcmin / self.band_arcmin).astype(np.int16)

    def core_radius(self, band: int | np.ndarray, resolution: int) -> float | np.ndarray:
        """r_c (arcsec) in off-axis band ``band`` at resolution multiplier ``resolution``."""
        theta = (np.asarray(band) + 0.5) * self.band_arcmin
        return self.core_radius_arcsec / resolution * (1.0 + self.offaxis_growth * (theta / 15.0) ** 2)

    def enclosed_fraction(self, r: np.ndarray, rc: float) -> np.ndarray:
        """Untruncated encircled-energy fraction within radius r: 1 - (1 + (r/rc)^2)^(1 - alpha)."""
        return 1.0 - np.power(1.0 + (np.asarray(r) / rc) ** 2, 1.0 - self.alpha)

    def sample_radii(self, rng: np.random.Generator, bands: np.ndarray, resolution: int) -> np.ndarray:
        """Draw radii (arcsec) by inverse CDF of the King profile truncated at ``max_radius_arcsec``,
        for photons in off-axis ``bands``: r = r_c sqrt((1 - u)^(1/(1 - alpha)) - 1), u < F(r_max)."""
        rc = np.asarray(self.core_radius(np.arange(int(bands.max(initial=0)) + 1), resolution), dtype=np.float64)
        f_max = self.enclosed_fraction(self.max_radius_arcsec, rc)
        u = rng.random(bands.size, dtype=np.float32)
        u *= f_max.astype(np.float32)[bands]
        r = np.power(np.float32(1.0) - u, np.float32(1.0 / (1.0 - self.alpha)))
        r -= np.float32(1.0)
        np.sqrt(r, out=r)
        r *= rc.astype(np.float32)[bands]
        return r

    def half_energy_width(self, rc: float, r_max: float | None = None) -> float:
        """Diameter (arcsec) enclosing half of the (truncated) PSF."""
        r_max = self.max_radius_arcsec if r_max is None else r_max
        half = 0.5 * self.enclosed_fraction(r_max, rc)
        return float(2.0 * rc * np.sqrt(np.power(1.0 - half, 1.0 / (1.0 - self.alpha)) - 1.0))

    def kernel(self, rc: float, pixel_arcsec: float, r_max: float) -> np.ndarray:
        """The truncated PSF integrated over pixels of ``pixel_arcsec``, normalised to sum 1."""
        return _kernel(self.alpha, float(rc), float(pixel_arcsec), float(r_max))


@lru_cache(maxsize=64)
def _kernel(alpha: float, rc: float, pixel: float, r_max: float, supersample: int = 5) -> np.ndarray:
    """Pixel-integrated truncated King kernel: supersampled near the core, sampled at centres beyond."""
    half = int(np.ceil(r_max / pixel))
    centers = np.arange(-half, half + 1) * pixel
    r2 = centers[:, None] ** 2 + centers[None, :] ** 2
    k = np.where(r2 <= r_max**2, np.power(1.0 + r2 / rc**2, -alpha), 0.0)
    core = min(half, int(np.ceil(6.0 * rc / pixel)) + 2)
    sub = ((np.arange(supersample) + 0.5) / supersample - 0.5) * pixel
    c = (centers[half - core: half + core + 1, None] + sub[None, :]).ravel()
    p = np.power(1.0 + (c[:, None] ** 2 + c[None, :] ** 2) / rc**2, -alpha)
    n = 2 * core + 1
    k[half - core: half + core + 1, half - core: half + core + 1] = p.reshape(n, supersample, n, supersample).mean(axis=(1, 3))
    k /= k.sum()
    k.setflags(write=False)
    return k
