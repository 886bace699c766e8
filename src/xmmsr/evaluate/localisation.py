"""How well an input can place a point source: the Cramér–Rao bound of its position.

A faint source's position is uncertain in the input itself, whatever method reads it: for a Poisson
image of expected counts lambda_i (background, extended emission, the source and its neighbours), a
source of N counts with the PSF P at its off-axis angle and azimuth has the Fisher information

    F_jk = sum_i (N dP_i/dx_j) (N dP_i/dx_k) / lambda_i,   j, k in (x, y),

and no unbiased estimate of its position scatters less than F^-1 (the Cramér–Rao bound; a
maximum-likelihood PSF fit reaches it, :class:`xmmsr.evaluate.deblend.PsfFit` in the tests). Its
larger eigenvalue gives the position error along the worse axis, ``sigma``. The evaluation matches a
detection to a true source within the source's error circle, ``ERROR_CIRCLE_SIGMA`` x sigma (99 % of
the positions of a circular Gaussian error lie within 3.03 sigma), when that is wider than the fixed
match radius of one PSF FWHM and at most the 1x FWHM (:func:`xmmsr.evaluate.points.match_radii`,
:class:`xmmsr.evaluate.run.FrameTruth`): a faint off-axis source that SR draws where the input puts it
is found, not lost and invented.

The PSF is that of the AGN power law (photon index :data:`PHOTON_INDEX` behind :data:`NH_CM2`, at its
mean detected energy, as the simulator's expected image of an AGN takes it), rendered on the 1x grid by
:class:`~xmmsr.instrument.psf.PointSourceImages` at the source's off-axis angle (to 0.1') and azimuth
(to 0.1 rad, where the PSF is elongated enough for it to matter).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..instrument.model import PnInstrument
from ..instrument.psf import PointSourceImages
from .. import detection

PHOTON_INDEX, NH_CM2 = 1.9, 3.0e20        # the point sources' spectrum (the default AGN's)
ERROR_CIRCLE_SIGMA = float(np.sqrt(-2.0 * np.log(0.01)))   # 99 % of a circular Gaussian error
THETA_STEP_ARCMIN, AZIMUTH_STEP_RAD = 0.1, 0.1
DERIVATIVE_STEP_PX = 0.05


def point_source_energy_kev(instrument: PnInstrument) -> float:
    """Mean detected energy of the point sources' power law, at which their PSF is taken."""
    return float(instrument.require_response().spectral("powerlaw", PHOTON_INDEX, NH_CM2).mean_energy_kev)


class PositionErrors:
    """Cramér–Rao position errors of point sources in a 1x input image (module docstring)."""

    def __init__(self, instrument: PnInstrument) -> None:
        self.instrument = instrument
        self.energy_kev = point_source_energy_kev(instrument)
        self.pixel_arcsec = instrument.geometry.image_grid(1).pixel_arcsec
        self._images: dict[tuple[int, int, int], PointSourceImages] = {}
        self._fractions: dict[tuple[int, int, int, float], float] = {}

    def _key(self, theta_arcmin: float, azimuth_rad: float, resolution: int) -> tuple[int, int, int]:
        theta = int(round(theta_arcmin / THETA_STEP_ARCMIN))
        elongated = self.instrument.psf.needs_azimuth(theta * THETA_STEP_ARCMIN, self.energy_kev)
        return theta, int(round(azimuth_rad / AZIMUTH_STEP_RAD)) if elongated else 0, resolution

    def images(self, theta_arcmin: float, azimuth_rad: float, resolution: int = 1) -> PointSourceImages:
        """The point-source images at the rounded off-axis angle and azimuth (cached)."""
        key = self._key(theta_arcmin, azimuth_rad, resolution)
        if key not in self._images:
            self._images[key] = PointSourceImages(self.instrument.psf, self.pixel_arcsec, key[0] * THETA_STEP_ARCMIN,
                                                  key[1] * AZIMUTH_STEP_RAD, self.energy_kev, resolution)
        return self._images[key]

    def sigma_px(self, expected: np.ndarray, mask: np.ndarray, x: float, y: float, counts: float,
                 theta_arcmin: float, azimuth_rad: float) -> float:
        """The position error (1x pixels, the worse axis) of a source of ``counts`` expected counts over its
        whole PSF at 1x position (``x``, ``y``) in an input of ``expected`` counts per pixel (the source
        included), read over ``mask`` (pixels with data). Infinite where the image holds no information."""
        images = self.images(theta_arcmin, azimuth_rad)
        h = images.half + 2
        ny, nx = expected.shape
        r0, r1 = max(int(round(y)) - h, 0), min(int(round(y)) + h + 1, ny)
        c0, c1 = max(int(round(x)) - h, 0), min(int(round(x)) + h + 1, nx)
        lam, ok = expected[r0:r1, c0:c1], mask[r0:r1, c0:c1] & (expected[r0:r1, c0:c1] > 0)
        if not ok.any() or counts <= 0:
            return float("inf")
        step = DERIVATIVE_STEP_PX
        derivatives = []
        for dx, dy in ((step, 0.0), (0.0, step)):
            plus, minus = np.zeros(lam.shape), np.zeros(lam.shape)
            images.add(plus, x - c0 + dx, y - r0 + dy, counts)
            images.add(minus, x - c0 - dx, y - r0 - dy, counts)
            derivatives.append(((plus - minus) / (2.0 * step))[ok])
        weight = 1.0 / lam[ok]
        fisher = np.array([[np.sum(a * b * weight) for b in derivatives] for a in derivatives])
        if np.linalg.det(fisher) <= 0:
            return float("inf")
        return float(np.sqrt(np.linalg.eigvalsh(np.linalg.inv(fisher)).max()))

    def aperture_fraction(self, theta_arcmin: float, azimuth_rad: float, resolution: int, radius_px: float) -> float:
        """Fraction of a point source's counts within ``radius_px`` of it on the grid of ``resolution`` (the
        finder's aperture: its flux over this is the source's total)."""
        key = (*self._key(theta_arcmin, azimuth_rad, resolution), float(radius_px))
        if key not in self._fractions:
            images = self.images(theta_arcmin, azimuth_rad, resolution)
            n = 2 * images.half + 1
            image = np.zeros((n, n))
            images.add(image, float(images.half), float(images.half), 1.0)
            yy, xx = np.mgrid[:n, :n]
            self._fractions[key] = float(image[np.hypot(xx - images.half, yy - images.half) <= radius_px].sum())
        return self._fractions[key]

    def for_sources(self, sources: pd.DataFrame, expected_input: np.ndarray, mask_input: np.ndarray,
                    theta_arcmin: np.ndarray, azimuth_rad: np.ndarray, upscale: int, fwhm_px: float,
                    flux_scale: float) -> np.ndarray:
        """The position error of each of ``sources`` (the finder's table on the grid of ``upscale``: ``x``,
        ``y``, aperture ``flux``) in pixels of that grid. ``expected_input``, ``mask_input``: the 1x input's
        expected counts and pixels with data; ``theta_arcmin``, ``azimuth_rad``: maps of the task grid;
        ``flux_scale``: the sources' counts at the input exposure per count of ``flux`` (the exposure ratio);
        ``fwhm_px``: the PSF FWHM on the task grid, which sets the finder's aperture."""
        out = np.full(len(sources), np.inf)
        ny, nx = theta_arcmin.shape
        for k, (x, y, flux) in enumerate(sources[["x", "y", "flux"]].to_numpy(dtype=np.float64)):
            iy, ix = min(max(int(round(y)), 0), ny - 1), min(max(int(round(x)), 0), nx - 1)
            theta, azimuth = float(theta_arcmin[iy, ix]), float(azimuth_rad[iy, ix])
            fraction = self.aperture_fraction(theta, azimuth, upscale, detection.APERTURE_FWHM * fwhm_px)
            counts = flux * flux_scale / fraction
            x1, y1 = (x + 0.5) / upscale - 0.5, (y + 0.5) / upscale - 0.5
            out[k] = upscale * self.sigma_px(expected_input, mask_input, x1, y1, counts, theta, azimuth)
        return out
