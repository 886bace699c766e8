"""The pn point-spread function: one interface for the simulator, the expected image and the evaluation.

Every model here is a King profile in an elliptical radius, PSF ∝ [1 + (rho / r_c)^2]^(-alpha) with
rho^2 = x_rad^2 + (x_tan / q)^2, truncated at rho = r_max / q (so that no photon lands farther than r_max
from its source, and kernels keep one size): x_rad runs away from the optical axis and
x_tan across it, so q > 1 stretches the PSF tangentially, as the pn PSF is off axis. The models differ
only in how (r_c, alpha, q) depend on the off-axis angle theta, the energy E and the resolution
multiplier (r_c is divided by it: the 2x instrument has a PSF half as wide):

* :class:`EllbetaPsf` (default): r_c and alpha linear in E, theta and E theta with the pn coefficients
  of the ELLBETA core (Read et al. 2011, A&A 534, A34), and a tangential elongation q(theta)
  interpolated in a table of axis ratios measured on bright point sources of real pn images;
* :class:`KingPsf`: a round King profile with r_c growing quadratically off axis and alpha fixed (the
  earlier model, kept for comparison).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

REFERENCE_ENERGY_KEV = 1.5   # energy of the on-axis numbers quoted for a model
FINE_ARCSEC_PER_1X = 4       # PointSourceImages: fine pixels per 1x pixel (the 2x pixel is 2 of them)
STAMP_RADIUS_ARCSEC = 128.0  # PointSourceImages: the PSF truncated here (or at its own radius), scaled to
                             # the fraction of the PSF within it


@dataclass(frozen=True)
class PsfModel(ABC):
    """Base of the PSF models: subclasses define :meth:`parameters`; the rest is shared."""

    max_radius_arcsec: float = 300.0

    @abstractmethod
    def parameters(self, theta_arcmin: np.ndarray | float, energy_kev: np.ndarray | float,
                   resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(r_c [arcsec], alpha, q) at off-axis angles ``theta_arcmin`` and energies ``energy_kev``."""

    # ------------------------------------------------------------------ numbers

    def enclosed_fraction(self, rho: np.ndarray | float, theta_arcmin: float = 0.0,
                          energy_kev: float = REFERENCE_ENERGY_KEV, resolution: int = 1) -> np.ndarray:
        """Untruncated fraction of the PSF within elliptical radius ``rho`` (a circle where q = 1)."""
        rc, alpha, _ = (float(v) for v in self.parameters(theta_arcmin, energy_kev, resolution))
        return 1.0 - np.power(1.0 + (np.asarray(rho, dtype=float) / rc) ** 2, 1.0 - alpha)

    def half_energy_width(self, theta_arcmin: float = 0.0, energy_kev: float = REFERENCE_ENERGY_KEV,
                          resolution: int = 1) -> float:
        """Diameter (arcsec) of the circle of the same area as the ellipse holding half the truncated PSF."""
        rc, alpha, q = (float(v) for v in self.parameters(theta_arcmin, energy_kev, resolution))
        half = 0.5 * (1.0 - (1.0 + (self.max_radius_arcsec / q / rc) ** 2) ** (1.0 - alpha))
        rho = rc * np.sqrt((1.0 - half) ** (1.0 / (1.0 - alpha)) - 1.0)
        return float(2.0 * rho * np.sqrt(q))

    def fwhm_arcsec(self, theta_arcmin: float = 0.0, energy_kev: float = REFERENCE_ENERGY_KEV,
                    resolution: int = 1) -> float:
        """Geometric mean of the radial and tangential FWHM (arcsec; pixel integration not included)."""
        rc, alpha, q = (float(v) for v in self.parameters(theta_arcmin, energy_kev, resolution))
        return float(2.0 * rc * np.sqrt(2.0 ** (1.0 / alpha) - 1.0) * np.sqrt(q))

    # ------------------------------------------------------------------ Monte Carlo

    def sample_offsets(self, rng: np.random.Generator, radial_x: np.ndarray, radial_y: np.ndarray,
                       theta_arcmin: np.ndarray, energy_kev: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
        """PSF offsets (arcsec, float32) of photons at off-axis angles ``theta_arcmin`` whose unit vector
        away from the optical axis is (radial_x, radial_y): elliptical radius by inverse CDF of the
        truncated King profile, uniform angle, tangential axis stretched by q."""
        f32 = np.float32
        rc, alpha, q = (np.asarray(v, dtype=f32) for v in self.parameters(theta_arcmin, energy_kev, resolution))
        rc, alpha, q = (np.broadcast_to(v, theta_arcmin.shape) for v in (rc, alpha, q))
        expo = f32(1.0) / (f32(1.0) - alpha)
        f_max = f32(1.0) - np.power(f32(1.0) + np.square(f32(self.max_radius_arcsec) / (rc * q)), f32(1.0) - alpha)
        u = rng.random(theta_arcmin.size, dtype=f32)
        u *= f_max
        rho = np.power(f32(1.0) - u, expo)
        rho -= f32(1.0)
        np.sqrt(rho, out=rho)
        rho *= rc
        phi = rng.random(theta_arcmin.size, dtype=f32) * f32(2 * np.pi)
        a = rho * np.cos(phi)                  # along the radial direction
        b = rho * np.sin(phi) * q              # across it
        return a * radial_x - b * radial_y, a * radial_y + b * radial_x

    # ------------------------------------------------------------------ images

    def kernel(self, pixel_arcsec: float, theta_arcmin: float = 0.0, azimuth_rad: float = 0.0,
               energy_kev: float = REFERENCE_ENERGY_KEV, resolution: int = 1,
               r_max_arcsec: float | None = None) -> np.ndarray:
        """The PSF integrated over pixels of ``pixel_arcsec`` (odd square, centred), truncated at elliptical
        radius ``r_max_arcsec / q`` (default r_max: the model's), normalised to sum 1; ``azimuth_rad`` is the angle
        of the radial direction from +x (counter-clockwise). Read-only, cached."""
        rc, alpha, q = (float(v) for v in self.parameters(theta_arcmin, energy_kev, resolution))
        r_max = self.max_radius_arcsec if r_max_arcsec is None else float(r_max_arcsec)
        az = float(azimuth_rad) if q > 1.0 + 1e-6 else 0.0
        return _kernel(round(rc, 6), round(alpha, 6), round(q, 6), round(az, 6), float(pixel_arcsec), r_max)

    def needs_azimuth(self, theta_arcmin: float, energy_kev: float = REFERENCE_ENERGY_KEV) -> bool:
        """Whether the PSF at ``theta_arcmin`` is elongated enough for its orientation to matter."""
        return float(self.parameters(theta_arcmin, energy_kev, 1)[2]) > 1.01


@dataclass(frozen=True)
class KingPsf(PsfModel):
    """Round King profile: r_c grows by ``offaxis_growth`` at 15' (quadratic in theta), alpha fixed."""

    core_radius_arcsec: float = 4.0
    alpha: float = 1.45
    offaxis_growth: float = 0.5

    def parameters(self, theta_arcmin, energy_kev, resolution):
        theta = np.asarray(theta_arcmin, dtype=float)
        rc = self.core_radius_arcsec / resolution * (1.0 + self.offaxis_growth * (theta / 15.0) ** 2)
        return rc, np.full_like(rc, self.alpha), np.ones_like(rc)


@dataclass(frozen=True)
class EllbetaPsf(PsfModel):
    """ELLBETA-like pn PSF: King core and slope from Read et al. (2011), tangential elongation q(theta)."""

    core_radius_coefficients: tuple[float, float, float, float] = (5.074, -0.236, 0.002, -0.0180)
    alpha_coefficients: tuple[float, float, float, float] = (1.472, -0.010, 0.001, -0.0016)
    elongation_theta_arcmin: tuple[float, ...] = (0.0, 4.0, 8.0, 11.25, 13.75)
    elongation_ratio: tuple[float, ...] = (1.0, 1.0, 1.16, 1.35, 1.90)

    def parameters(self, theta_arcmin, energy_kev, resolution):
        theta = np.asarray(theta_arcmin, dtype=float)
        e = np.asarray(energy_kev, dtype=float)
        c, a = self.core_radius_coefficients, self.alpha_coefficients
        rc = (c[0] + c[1] * e + c[2] * theta + c[3] * e * theta) / resolution
        alpha = a[0] + a[1] * e + a[2] * theta + a[3] * e * theta
        q = np.interp(theta, self.elongation_theta_arcmin, self.elongation_ratio)
        rc, alpha, q = np.broadcast_arrays(rc, alpha, q)
        return rc, alpha, q


class PointSourceImages:
    """Pixel-integrated images of a point source at any position of the image grid of ``resolution`` (1x
    pixels of ``pixel_1x_arcsec``, or ``resolution`` times finer), with the PSF at one off-axis angle,
    azimuth and energy (a source of unit counts over the whole PSF; truncated at
    :data:`STAMP_RADIUS_ARCSEC` or the PSF's own radius, and scaled to the fraction within it).

    The PSF is integrated on a grid of :data:`FINE_ARCSEC_PER_1X` fine pixels per 1x pixel (the 1x PSF in
    4 x 4 blocks, the 2x PSF in 2 x 2 blocks); the image of a source at each fine pixel of a grid pixel (a
    phase) is made once, and a source anywhere is shared by the four fine pixels around it in proportion
    to their overlap (cloud in cell), so that no position is rounded."""

    def __init__(self, psf: PsfModel, pixel_1x_arcsec: float, theta_arcmin: float, azimuth_rad: float,
                 energy_kev: float, resolution: int) -> None:
        fine_arcsec = pixel_1x_arcsec / FINE_ARCSEC_PER_1X
        radius = min(STAMP_RADIUS_ARCSEC, psf.max_radius_arcsec)
        kernel = np.asarray(psf.kernel(fine_arcsec, theta_arcmin, azimuth_rad, energy_kev, resolution,
                                       r_max_arcsec=radius))
        q = float(psf.parameters(theta_arcmin, energy_kev, resolution)[2])

        def enclosed(r: float) -> float:   # fraction within elliptical radius r / q (the truncation's shape)
            return float(psf.enclosed_fraction(r / q, theta_arcmin, energy_kev, resolution))
        kernel = kernel * (enclosed(radius) / enclosed(psf.max_radius_arcsec))
        self.block = FINE_ARCSEC_PER_1X // resolution          # fine pixels per grid pixel
        h = kernel.shape[0] // 2
        self.half = -(-(h + self.block) // self.block)         # stamp half-size in grid pixels
        n = (2 * self.half + 1) * self.block
        self.stamps = np.zeros((self.block, self.block, 2 * self.half + 1, 2 * self.half + 1))
        for py in range(self.block):
            for px in range(self.block):
                fine = np.zeros((n, n))
                cy, cx = self.half * self.block + py, self.half * self.block + px   # the source's fine pixel
                fine[cy - h: cy + h + 1, cx - h: cx + h + 1] = kernel
                self.stamps[py, px] = fine.reshape(2 * self.half + 1, self.block, 2 * self.half + 1,
                                                   self.block).sum(axis=(1, 3))

    def add(self, image: np.ndarray, x: float, y: float, counts: float) -> None:
        """Add ``counts`` times the image of a source at grid position (``x``, ``y``) (pixel centres at
        integers) to ``image``, clipped to it."""
        b = self.block
        fx, fy = (x + 0.5) * b - 0.5, (y + 0.5) * b - 0.5      # fine coordinates, fine pixel centres at integers
        j, i = int(np.floor(fx)), int(np.floor(fy))
        wx, wy = fx - j, fy - i
        for di, dj, w in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx), (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
            if w > 0:
                fi, fj = i + di, j + dj
                self._place(image, fi // b, fj // b, self.stamps[fi % b, fj % b], counts * w)

    def _place(self, image: np.ndarray, row: int, col: int, stamp: np.ndarray, weight: float) -> None:
        h = self.half
        r0, r1 = max(row - h, 0), min(row + h + 1, image.shape[0])
        c0, c1 = max(col - h, 0), min(col + h + 1, image.shape[1])
        if r0 < r1 and c0 < c1:
            image[r0:r1, c0:c1] += weight * stamp[r0 - row + h: r1 - row + h, c0 - col + h: c1 - col + h]


def psf_from_config(cfg: dict) -> PsfModel:
    """The PSF of the ``instrument.psf`` config section (``model``: ellbeta | king)."""
    r_max = float(cfg["max_radius_arcsec"])
    if cfg["model"] == "king":
        k = cfg["king"]
        return KingPsf(max_radius_arcsec=r_max, core_radius_arcsec=float(k["core_radius_arcsec"]),
                       alpha=float(k["alpha"]), offaxis_growth=float(k["offaxis_growth"]))
    e = cfg["ellbeta"]
    table = sorted((float(t), float(q)) for t, q in e["elongation"])
    return EllbetaPsf(max_radius_arcsec=r_max,
                      core_radius_coefficients=tuple(float(v) for v in e["core_radius_coefficients"]),
                      alpha_coefficients=tuple(float(v) for v in e["alpha_coefficients"]),
                      elongation_theta_arcmin=tuple(t for t, _ in table), elongation_ratio=tuple(q for _, q in table))


def describe_psf(cfg: dict) -> str:
    """One sentence on the PSF of an ``instrument.psf`` config section (for reports and model cards)."""
    model = psf_from_config(cfg)
    hew = model.half_energy_width(0.0)
    if isinstance(model, KingPsf):
        return (f"round King PSF, r_c = {model.core_radius_arcsec:g}\", alpha = {model.alpha:g} on axis "
                f"(HEW {hew:.1f}\" at 1x), r_c +{100 * model.offaxis_growth:.0f} % at 15'")
    q_max = max(model.elongation_ratio)
    return (f"ELLBETA-like elliptical King PSF (r_c and alpha of Read et al. 2011, energy- and off-axis-dependent; "
            f"HEW {hew:.1f}\" on axis at {REFERENCE_ENERGY_KEV:g} keV), elongated tangentially off axis up to an "
            f"axis ratio of {q_max:g}")


@lru_cache(maxsize=64)   # the expected image keeps its own cache of the kernels it uses (at 2x, 3 MB each)
def _kernel(rc: float, alpha: float, q: float, azimuth: float, pixel: float, r_max: float,
            supersample: int = 5) -> np.ndarray:
    """Pixel-integrated truncated elliptical King kernel: supersampled near the core, centres beyond."""
    half = int(np.ceil(r_max / pixel))
    rho_max2 = (r_max / q) ** 2
    centers = np.arange(-half, half + 1) * pixel
    c, s = np.cos(azimuth), np.sin(azimuth)

    def profile(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        rad = x * c + y * s
        tan = -x * s + y * c
        rho2 = rad**2 + (tan / q) ** 2
        inside = rho2 <= rho_max2
        out = np.zeros(rho2.shape)
        out[inside] = np.power(1.0 + rho2[inside] / rc**2, -alpha)   # the power only where it is kept
        return out

    def symmetric_profile(coords: np.ndarray) -> np.ndarray:
        """The profile on the grid coords x coords; ``coords`` (odd length) is symmetric about 0 bit for bit,
        and so is the profile (negating x and y negates rad and tan exactly): the rows below the centre
        row are the rows above it reversed, computed once."""
        upper = profile(coords[None, :], coords[: coords.size // 2 + 1, None])
        return np.concatenate([upper, upper[-2::-1, ::-1]])

    k = symmetric_profile(centers)
    core = min(half, int(np.ceil(6.0 * rc * q / pixel)) + 2)
    sub = (np.arange(supersample) - (supersample - 1) / 2) / supersample * pixel   # symmetric sub-pixel offsets
    cc = (centers[half - core: half + core + 1, None] + sub[None, :]).ravel()
    n = 2 * core + 1
    p = symmetric_profile(cc).reshape(n, supersample, n, supersample).mean(axis=(1, 3))
    k[half - core: half + core + 1, half - core: half + core + 1] = p
    k /= k.sum()
    k.setflags(write=False)
    return k
