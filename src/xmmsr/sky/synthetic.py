"""Synthetic extended sources on a pixel grid: beta-model clusters, supernova-remnant shells, filaments.

All generators take the grid ``shape = (ny, nx)``, the pixel size in arcsec and the source centre
``center_pix = (x, y)`` in 0-based pixel coordinates; lengths are in arcsec, position angles in degrees
counter-clockwise from the +x axis of the image. They return float32 surface-brightness images with
arbitrary normalisation (computed in float64).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Shape = tuple[int, int]
Point = tuple[float, float]


@dataclass(frozen=True)
class Clump:
    """A small elliptical beta blob (substructure) offset from the cluster centre."""

    dx_arcsec: float
    dy_arcsec: float
    rc_arcsec: float
    flux_fraction: float            # flux relative to the main component's flux on the grid
    ellipticity: float = 0.0
    position_angle_deg: float = 0.0
    beta: float = 0.75


@dataclass(frozen=True)
class CoolCore:
    """An extra compact central beta component."""

    rc_arcsec: float
    amplitude: float                # central brightness relative to the main component's
    beta: float = 0.7


@dataclass(frozen=True)
class CavityPair:
    """Two elliptical X-ray cavities on opposite sides of the centre (multiplicative deficit)."""

    distance_arcsec: float
    angle_deg: float
    radius_arcsec: float            # semi-axis along the radial direction
    axis_ratio: float = 1.0         # tangential / radial semi-axis
    depth: float = 0.5              # fractional brightness deficit at the cavity centre (0..1)


@dataclass(frozen=True)
class Shock:
    """A surface-brightness jump: inside ``radius_arcsec`` and the sector, brightness x ``jump``."""

    radius_arcsec: float
    angle_deg: float
    half_opening_deg: float
    jump: float


def _offsets(shape: Shape, pixel_arcsec: float, center_pix: Point) -> tuple[np.ndarray, np.ndarray]:
    """Offsets from the centre in arcsec: x as a row (1, nx), y as a column (ny, 1)."""
    ny, nx = shape
    x = (np.arange(nx, dtype=np.float64) - center_pix[0]) * pixel_arcsec
    y = (np.arange(ny, dtype=np.float64) - center_pix[1]) * pixel_arcsec
    return x[None, :], y[:, None]


def _elliptical_r2(dx: np.ndarray, dy: np.ndarray, ellipticity: float, position_angle_deg: float) -> np.ndarray:
    """Squared elliptical radius (major semi-axis units) for ellipticity 1 - b/a along the position angle."""
    if ellipticity == 0.0:
        return dx * dx + dy * dy
    if not 0.0 <= ellipticity < 1.0:
        raise ValueError(f"ellipticity {ellipticity} outside [0, 1)")
    pa = np.deg2rad(position_angle_deg)
    c, s = np.cos(pa), np.sin(pa)
    major = dx * c + dy * s
    minor = (dy * c - dx * s) / (1.0 - ellipticity)
    return major * major + minor * minor


def beta_profile(r2: np.ndarray, rc: float, beta: float) -> np.ndarray:
    """Beta-model surface brightness (1 + r^2/rc^2)^(-3 beta + 1/2) for squared radius ``r2``."""
    return (1.0 + r2 / (rc * rc)) ** (0.5 - 3.0 * beta)


def _box(shape: Shape, center_pix: Point, half_size_pix: float) -> tuple[slice, slice]:
    """Slices (y, x) of the grid within ``half_size_pix`` of the centre (possibly empty)."""
    ny, nx = shape
    x0, y0 = center_pix
    xs = slice(int(np.clip(np.floor(x0 - half_size_pix), 0, nx)), int(np.clip(np.ceil(x0 + half_size_pix) + 1, 0, nx)))
    ys = slice(int(np.clip(np.floor(y0 - half_size_pix), 0, ny)), int(np.clip(np.ceil(y0 + half_size_pix) + 1, 0, ny)))
    return ys, xs


def beta_cluster(shape: Shape, pixel_arcsec: float, center_pix: Point, rc_arcsec: float, beta: float,
                 ellipticity: float = 0.0, position_angle_deg: float = 0.0, clumps: Sequence[Clump] = (),
                 cool_core: CoolCore | None = None, cavities: CavityPair | None = None,
                 shock: Shock | None = None) -> np.ndarray:
    """A galaxy cluster: elliptical beta model plus optional cool core, cavities, shock and clumps."""
    dx, dy = _offsets(shape, pixel_arcsec, center_pix)
    r2 = _elliptical_r2(dx, dy, ellipticity, position_angle_deg)
    image = beta_profile(r2, rc_arcsec, beta)
    if cool_core is not None:
        image += cool_core.amplitude * beta_profile(r2, cool_core.rc_arcsec, cool_core.beta)
    if cavities is not None:
        image *= _cavity_factor(shape, pixel_arcsec, center_pix, cavities)
    if shock is not None:
        _apply_shock(image, pixel_arcsec, center_pix, shock)
    main_flux = image.sum()
    for clump in clumps:
        _add_clump(image, pixel_arcsec, center_pix, clump, main_flux)
    return image.astype(np.float32)


def _cavity_factor(shape: Shape, pixel_arcsec: float, center_pix: Point, cav: CavityPair) -> np.ndarray:
    """Multiplicative factor (<= 1) of a pair of smooth-edged elliptical cavities."""
    factor = np.ones(shape, dtype=np.float64)
    angle = np.deg2rad(cav.angle_deg)
    a_rad, a_tan = cav.radius_arcsec, cav.radius_arcsec * cav.axis_ratio
    for sign in (1.0, -1.0):
        cx = center_pix[0] + sign * cav.distance_arcsec * np.cos(angle) / pixel_arcsec
        cy = center_pix[1] + sign * cav.distance_arcsec * np.sin(angle) / pixel_arcsec
        ys, xs = _box(shape, (cx, cy), 3.0 * max(a_rad, a_tan) / pixel_arcsec)
        if ys.start == ys.stop or xs.start == xs.stop:
            continue
        x = (np.arange(xs.start, xs.stop) - cx)[None, :] * pixel_arcsec
        y = (np.arange(ys.start, ys.stop) - cy)[:, None] * pixel_arcsec
        along = (x * np.cos(angle) + y * np.sin(angle)) / a_rad
        across = (y * np.cos(angle) - x * np.sin(angle)) / a_tan
        q = along * along + across * across
        factor[ys, xs] *= 1.0 - cav.depth / (1.0 + q**4)   # flat-bottomed, smooth-edged depression
    return factor


def _apply_shock(image: np.ndarray, pixel_arcsec: float, center_pix: Point, shock: Shock) -> None:
    """Multiply by ``jump`` inside the shock radius within the sector (cosine-tapered sides), in place."""
    ys, xs = _box(image.shape, center_pix, shock.radius_arcsec / pixel_arcsec + 1.0)
    if ys.start == ys.stop or xs.start == xs.stop:
        return
    x = (np.arange(xs.start, xs.stop) - center_pix[0])[None, :] * pixel_arcsec
    y = (np.arange(ys.start, ys.stop) - center_pix[1])[:, None] * pixel_arcsec
    phi = np.arctan2(y, x) - np.deg2rad(shock.angle_deg)
    dphi = np.abs(np.mod(phi + np.pi, 2.0 * np.pi) - np.pi)          # angle from the sector axis, [0, pi]
    half = np.deg2rad(shock.half_opening_deg)
    taper = np.clip((half - dphi) / (0.25 * half) + 0.5, 0.0, 1.0)  # smooth over a quarter of the half-opening
    weight = np.sin(0.5 * np.pi * taper) ** 2 * (x * x + y * y < shock.radius_arcsec**2)
    image[ys, xs] *= 1.0 + (shock.jump - 1.0) * weight


def _add_clump(image: np.ndarray, pixel_arcsec: float, center_pix: Point, clump: Clump, main_flux: float) -> None:
    """Add a substructure blob with ``flux_fraction`` of ``main_flux``, evaluated on a local box."""
    cx = center_pix[0] + clump.dx_arcsec / pixel_arcsec
    cy = center_pix[1] + clump.dy_arcsec / pixel_arcsec
    ys, xs = _box(image.shape, (cx, cy), 30.0 * clump.rc_arcsec / pixel_arcsec)
    if ys.start == ys.stop or xs.start == xs.stop:
        return
    x = (np.arange(xs.start, xs.stop) - cx)[None, :] * pixel_arcsec
    y = (np.arange(ys.start, ys.stop) - cy)[:, None] * pixel_arcsec
    if clump.beta <= 0.5:
        raise ValueError(f"clump beta {clump.beta} must exceed 0.5 (finite flux)")
    blob = beta_profile(_elliptical_r2(x, y, clump.ellipticity, clump.position_angle_deg), clump.rc_arcsec, clump.beta)
    # Normalise to the blob's analytic total flux, so that clumps at the grid edge are cut, not boosted.
    q = 1.0 - clump.ellipticity
    total = np.pi * clump.rc_arcsec**2 * q / (3.0 * clump.beta - 1.5) / pixel_arcsec**2
    image[ys, xs] += clump.flux_fraction * main_flux / total * blob


def snr_shell(shape: Shape, pixel_arcsec: float, center_pix: Point, r_in_arcsec: float, r_out_arcsec: float,
              gradient: float = 0.0, gradient_angle_deg: float = 0.0, oversample: int = 2) -> np.ndarray:
    """A supernova remnant: projected uniformly emitting shell R_in..R_out, with a linear brightness
    gradient of relative amplitude ``gradient`` (< 1) across the remnant towards ``gradient_angle_deg``.

    Evaluated on ``oversample``^2 sub-pixels (the limb is sharp) over the remnant's box only.
    """
    if not 0.0 <= r_in_arcsec < r_out_arcsec:
        raise ValueError(f"shell radii ({r_in_arcsec}, {r_out_arcsec}) need 0 <= R_in < R_out")
    image = np.zeros(shape, dtype=np.float64)
    ys, xs = _box(shape, center_pix, r_out_arcsec / pixel_arcsec + 1.0)
    if ys.start == ys.stop or xs.start == xs.stop:
        return image.astype(np.float32)
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    x = ((np.arange(xs.start, xs.stop)[:, None] + sub[None, :]).ravel() - center_pix[0]) * pixel_arcsec
    y = ((np.arange(ys.start, ys.stop)[:, None] + sub[None, :]).ravel() - center_pix[1]) * pixel_arcsec
    x, y = x[None, :], y[:, None]
    r2 = x * x + y * y
    shell = np.sqrt(np.maximum(r_out_arcsec**2 - r2, 0.0)) - np.sqrt(np.maximum(r_in_arcsec**2 - r2, 0.0))
    if gradient:
        g = np.deg2rad(gradient_angle_deg)
        shell *= np.maximum(1.0 + gradient * (x * np.cos(g) + y * np.sin(g)) / r_out_arcsec, 0.0)
    h, w = ys.stop - ys.start, xs.stop - xs.start
    image[ys, xs] = shell.reshape(h, oversample, w, oversample).mean(axis=(1, 3))
    return image.astype(np.float32)


def filament(shape: Shape, pixel_arcsec: float, center_pix: Point, length_arcsec: float, width_arcsec: float,
             position_angle_deg: float = 0.0, bend_deg: float = 0.0, taper_fraction: float = 0.2) -> np.ndarray:
    """A filament: a circular arc through the centre (tangent along the position angle, turning by
    ``bend_deg`` over its length) with a Gaussian cross-section of FWHM ``width_arcsec`` and cosine
    tapering over ``taper_fraction`` of each half-length at the ends."""
    sigma = width_arcsec / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    half = 0.5 * length_arcsec
    image = np.zeros(shape, dtype=np.float32)
    # The arc lies within half a length of the centre: evaluate on that box only (plus 6 sigma).
    ys, xs = _box(shape, center_pix, (half + 6.0 * sigma) / pixel_arcsec + 1.0)
    if ys.start == ys.stop or xs.start == xs.stop:
        return image
    dx = (np.arange(xs.start, xs.stop) - center_pix[0])[None, :] * pixel_arcsec
    dy = (np.arange(ys.start, ys.stop) - center_pix[1])[:, None] * pixel_arcsec
    pa = np.deg2rad(position_angle_deg)
    along = dx * np.cos(pa) + dy * np.sin(pa)
    across = dy * np.cos(pa) - dx * np.sin(pa)
    curvature = np.deg2rad(bend_deg) / length_arcsec           # 1 / radius of curvature, signed
    if abs(curvature) * length_arcsec < 1e-6:
        s, d = along, across                                    # straight: arc length and distance
    else:
        radius = 1.0 / curvature                                # centre of curvature at (0, radius)
        s = radius * np.arctan2(along * np.sign(radius), (radius - across) * np.sign(radius))
        d = np.abs(radius) - np.hypot(along, radius - across)
    flat = (1.0 - taper_fraction) * half
    t = np.clip((np.abs(s) - flat) / max(half - flat, 1e-12), 0.0, 1.0)
    image[ys, xs] = np.exp(-0.5 * (d / sigma) ** 2) * np.cos(0.5 * np.pi * t) ** 2
    return image
