"""Augmentations shared by all extended sources: zoom, brightness scale (sigma_b), boresight offset."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InputError


def zoom_image(image: np.ndarray, zoom: float, center_pix: tuple[float, float]) -> np.ndarray:
    """Magnify ``image`` by ``zoom`` (>= 1) about ``center_pix = (x, y)`` on the same grid (bilinear),
    negatives clipped to 0. Surface brightness per pixel is kept (the total grows by about zoom^2)."""
    if not zoom >= 1.0:
        raise InputError(None, "zoom", f"{zoom} is below 1", "give a magnification >= 1")
    data = np.asarray(image, dtype=np.float64)
    if zoom == 1.0:
        return np.clip(data, 0.0, None).astype(np.float32)
    center_yx = np.array([center_pix[1], center_pix[0]], dtype=np.float64)
    # output pixel o samples the input at c + (o - c) / zoom
    out = ndimage.affine_transform(data, np.full(2, 1.0 / zoom), offset=center_yx * (1.0 - 1.0 / zoom),
                                   order=1, mode="constant", cval=0.0, prefilter=False)
    return np.clip(out, 0.0, None).astype(np.float32)


def central_mean(image: np.ndarray, pixel_arcsec: float, center_pix: tuple[float, float],
                 radius_arcsec: float) -> float:
    """Mean pixel value within ``radius_arcsec`` of ``center_pix = (x, y)`` (NaN if no pixel is inside)."""
    ny, nx = image.shape
    r_pix = radius_arcsec / pixel_arcsec
    y0, y1 = max(int(np.floor(center_pix[1] - r_pix)), 0), min(int(np.ceil(center_pix[1] + r_pix)) + 1, ny)
    x0, x1 = max(int(np.floor(center_pix[0] - r_pix)), 0), min(int(np.ceil(center_pix[0] + r_pix)) + 1, nx)
    if y0 >= y1 or x0 >= x1:
        return float("nan")
    dx = np.arange(x0, x1)[None, :] - center_pix[0]
    dy = np.arange(y0, y1)[:, None] - center_pix[1]
    inside = dx * dx + dy * dy <= r_pix * r_pix
    if not inside.any():
        return float("nan")
    return float(np.asarray(image[y0:y1, x0:x1], dtype=np.float64)[inside].mean())


def normalise_brightness(image: np.ndarray, pixel_arcsec: float, center_pix: tuple[float, float], sigma_b: float,
                         background_rate_arcsec2: float, effective_area_cm2: float,
                         central_radius_arcsec: float) -> np.ndarray:
    """Scale ``image`` to photon flux per pixel (ph cm-2 s-1) such that the mean within
    ``central_radius_arcsec`` of the centre is ``sigma_b`` times the background:
    sigma_b x background_rate_arcsec2 x pixel_arcsec^2 / effective_area_cm2 (the exposure cancels)."""
    if not (sigma_b > 0 and background_rate_arcsec2 > 0 and effective_area_cm2 > 0):
        raise InputError(None, "sigma_b / background rate / effective area",
                         f"({sigma_b}, {background_rate_arcsec2}, {effective_area_cm2}) must all be positive",
                         "check the sigma_b range and the instrument background and effective area")
    current = central_mean(image, pixel_arcsec, center_pix, central_radius_arcsec)
    if not current > 0:
        raise InputError(None, "sources.extended.central_radius_arcsec",
                         f"the source has no flux within {central_radius_arcsec} arcsec of its centre {center_pix}",
                         "centre the source on the grid and use a central radius that covers its emission")
    target = sigma_b * background_rate_arcsec2 * pixel_arcsec**2 / effective_area_cm2
    return (np.asarray(image, dtype=np.float64) * (target / current)).astype(np.float32)


def boresight_offset(rng: np.random.Generator, field_width_arcsec: float,
                     sigma_fraction: float) -> tuple[float, float]:
    """Random offset (dx, dy) in arcsec of the optical axis from the source: normal, sigma = fraction x width."""
    sigma = sigma_fraction * field_width_arcsec
    if not sigma >= 0:
        raise InputError(None, "sources.extended.offset_sigma_fraction", f"sigma {sigma} is negative",
                         "give a fraction >= 0")
    dx, dy = rng.normal(0.0, sigma, size=2)
    return float(dx), float(dy)
