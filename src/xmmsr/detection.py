"""Point-source detection in expected-counts maps (the evaluation's and the prediction source gate's).

Detection (:func:`detect_point_sources`) works on *expected* counts per pixel at the target exposure
(a smooth model or truth map, or a prediction; not a Poisson realisation):

1. the excess over the given background, ``(image - background)`` inside the mask, is smoothed by a
   Gaussian with the PSF's FWHM (``SMOOTH_FWHM`` x FWHM), a matched filter for a compact source;
2. candidates are the local maxima of the smoothed excess (``photutils.detection.find_peaks``, box of
   ``2 ceil(PEAK_BOX_FWHM x FWHM) + 1`` pixels, strictly positive excess) that lie inside the mask
   eroded by ``EDGE_FWHM`` x FWHM (a disk), so that no source sits on a chip gap or the field edge;
   candidates far below the threshold on the pixel grid (the photometry of step 3 with the same
   photutils weights, by FFT, at the peak pixel: below ``PREFILTER`` x ``nsigma``) are dropped, which
   only saves time on noisy maps; the position is refined to sub-pixel precision by a parabola through
   the peak and its neighbours along each axis of the smoothed map (offsets clipped to half a pixel);
3. photometry with ``photutils.aperture`` (``method="exact"``): counts in a circular aperture of
   radius ``APERTURE_FWHM`` x FWHM, minus the given background in the aperture and minus the local
   excess level times the aperture area. The excess level is the mean of (image - background) in an
   annulus of ``ANNULUS_FWHM`` x FWHM (masked pixels excluded): any extended emission under the
   source, so that a bump on a cluster counts only by what it adds to its surroundings, not by the
   cluster itself; the background map carries the known structure (vignetting, the out-of-time
   streaks of bright sources), which an annulus mean would mistake for sources where it is not flat.
   On a ridge (a shell, a filament, the rim of a cluster) the annulus crosses the ridge and mostly
   lies off it, so any bump on the ridge would read as a source by the whole ridge's height: the
   local level is therefore the higher of the annulus mean and the ridge level, the mean excess in
   bands along the structure's direction (the structure tensor's) on both sides of the source at the
   annulus's radii, the lower side (:func:`ridge_level`; a side counts when it stands out from the
   background by ``RIDGE_NSIGMA``, so noise beside a peak is no ridge). A source on a ridge counts
   by what it adds to the ridge; a lone source, a pair or the end of a structure have a side off it.
   With ``annulus_fwhm=None`` only the given background is subtracted. The aperture is not corrected for the PSF wings outside it (nor the
   annulus for the wings inside it, which lower the flux by ~1 %): the flux is the aperture flux, about
   55 % of the total for the on-axis pn King profile at 1.5 FWHM, measured the same way in prediction
   and truth, so flux *ratios* are unbiased;
4. significance = flux / sqrt(B), B = the given background in the aperture plus the excess level
   times the area, when the excess is positive: the Poisson significance of the source counts over
   the counts beneath them. A source is kept when significance >= ``nsigma`` (default ``NSIGMA`` = 5).

Why threshold a smooth map by a Poisson significance at the target exposure. A noise-free expected
map has no noise of its own: every faint bump, however small, is a "source" in it, and a prediction
that is slightly wiggly would have arbitrarily many. The question the evaluation asks is which
sources an observation at the target exposure (100 ks) could detect: those whose counts stand out
from the Poisson fluctuations of the counts beneath them at that exposure. Thresholding the smooth
map at ``nsigma`` x sqrt(aperture background counts) selects exactly those, with the same criterion
for the truth (what should be recovered) and for every method (what it claims is there), and makes
the threshold independent of how smooth or noisy a method's output is: noise in a prediction
(e.g. the scaled 20 ks input, whose fluctuations are sqrt(5) times the 100 ks ones) shows up as
detections without a true counterpart, i.e. as false (hallucinated) sources. The noise floor is the
given background, not the prediction's own level, so that a method cannot raise its significances
by predicting too little background.

"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from photutils.aperture import CircularAnnulus, CircularAperture
from photutils.detection import find_peaks
from photutils.utils.exceptions import NoDetectionsWarning
from scipy import ndimage
from scipy.signal import fftconvolve


NSIGMA = 5.0               # detection threshold: Poisson significance at the target exposure
APERTURE_FWHM = 1.5        # photometry aperture radius, in PSF FWHM
ANNULUS_FWHM = (3.0, 5.0)  # local-level annulus radii, in PSF FWHM
SMOOTH_FWHM = 1.0          # FWHM of the Gaussian smoothing kernel, in PSF FWHM
PEAK_BOX_FWHM = 1.0        # half-size of the local-maximum box, in PSF FWHM (rounded up)
EDGE_FWHM = 1.0            # minimum distance of a source from the mask edge, in PSF FWHM
APERTURE_METHOD = "exact"  # photutils aperture-pixel overlap
PREFILTER = 0.7            # candidates must reach PREFILTER x nsigma on the pixel-grid estimate first
RIDGE_COVERAGE = 0.25     # least fraction of a band's samples inside the mask for its side to count
RIDGE_NSIGMA = 3.0        # least significance of the emission on each side of a ridge over the background
RIDGE_SCALE_FWHM = 5.0    # FWHM of the structure tensor's integration window, in PSF FWHM
RIDGE_WIDTH_FWHM = 1.0    # width of the band sampled on each side of a candidate, in PSF FWHM
COLUMNS = ("x", "y", "flux", "significance", "level")


def detect_point_sources(image: np.ndarray, mask: np.ndarray, background: np.ndarray | float,
                         psf_fwhm_px: float, nsigma: float = NSIGMA, *,
                         annulus_fwhm: tuple[float, float] | None = ANNULUS_FWHM,
                         peak_box_fwhm: float = PEAK_BOX_FWHM, edge_fwhm: float = EDGE_FWHM) -> pd.DataFrame:
    """Point sources in an expected-counts map (see the module docstring for the method).

    ``image``: expected counts per pixel at the target exposure; ``mask``: pixels to use (True/1);
    ``background``: expected background counts per pixel at the same exposure (array or scalar);
    ``psf_fwhm_px``: PSF FWHM in pixels of this grid. Returns a DataFrame with columns ``x``, ``y``
    (0-based pixel coordinates, x along columns), ``flux`` (aperture counts minus local level),
    ``significance`` and ``level`` (the local level per pixel), sorted by decreasing flux.
    ``peak_box_fwhm``: half-size of the local-maximum box in FWHM (smaller separates closer pairs);
    ``edge_fwhm``: the least distance of a source from the mask's edge in FWHM (0: anywhere in the mask).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    m = np.broadcast_to(np.asarray(mask, dtype=bool), img.shape) & np.isfinite(img)
    bkg = np.broadcast_to(np.asarray(background, dtype=np.float64), img.shape)
    fwhm = float(psf_fwhm_px)
    if not fwhm > 0:
        raise ValueError(f"psf_fwhm_px must be positive, got {psf_fwhm_px}")
    empty = pd.DataFrame({c: np.zeros(0) for c in COLUMNS})
    if not m.any():
        return empty
    data = np.where(m, img, 0.0)
    bdata = np.where(m, bkg, 0.0)
    weight = m.astype(np.float64)
    r_ap = APERTURE_FWHM * fwhm

    # 1-2: candidates, local maxima of the smoothed excess, away from the mask edge
    smoothed = ndimage.gaussian_filter(data - bdata, SMOOTH_FWHM * fwhm / np.sqrt(8.0 * np.log(2.0)),
                                       mode="constant")
    inner = (ndimage.binary_erosion(m, structure=_disk(max(edge_fwhm * fwhm, 1.0)) > 0, border_value=0)
             if edge_fwhm > 0 else m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)
        peaks = find_peaks(smoothed, 0.0, box_size=2 * int(np.ceil(peak_box_fwhm * fwhm)) + 1, mask=~m)
    if peaks is None or len(peaks) == 0:
        return empty
    px = np.asarray(peaks["x_peak"], dtype=np.int64)
    py = np.asarray(peaks["y_peak"], dtype=np.int64)
    keep = inner[py, px]
    px, py = px[keep], py[keep]
    if px.size == 0:
        return empty

    # prefilter on pixel-grid sums (FFT): cheap, discards the bulk of the noise peaks of noisy maps
    disk = _footprint(CircularAperture, r_ap)
    area_map = _correlate(weight, disk)
    excess_map = _excess_level_map(data, weight, bdata, fwhm, annulus_fwhm)
    ap_sum = _correlate(data, disk)[py, px]
    b_sum = _correlate(bdata, disk)[py, px]
    area0, excess0 = area_map[py, px], excess_map[py, px]
    sig0 = (ap_sum - b_sum - excess0 * area0) / np.sqrt(np.maximum(np.maximum(b_sum + excess0 * area0, b_sum), 1e-12))
    keep = sig0 >= PREFILTER * nsigma
    px, py = px[keep], py[keep]
    if px.size == 0:
        return empty

    # sub-pixel position: parabola through the peak and its two neighbours along each axis
    x = px + _parabola_offset(smoothed[py, px - 1], smoothed[py, px], smoothed[py, px + 1])
    y = py + _parabola_offset(smoothed[py - 1, px], smoothed[py, px], smoothed[py + 1, px])

    # 3-4: exact aperture photometry, local level, significance
    positions = np.column_stack([x, y])
    counts, area, b_ap = aperture_sums(CircularAperture(positions, r_ap), (data, weight, bdata))
    if annulus_fwhm is None:
        excess = np.zeros_like(counts)
    else:
        annulus = CircularAnnulus(positions, annulus_fwhm[0] * fwhm, annulus_fwhm[1] * fwhm)
        ann_sum, ann_b, ann_area = aperture_sums(annulus, (data, bdata, weight))
        excess = np.where(ann_area > 0, (ann_sum - ann_b) / np.maximum(ann_area, 1e-12), 0.0)
        directions = ridge_directions(smoothed, m, positions, fwhm)
        excess = np.maximum(excess, ridge_level(data - bdata, bdata, weight, positions, directions, fwhm,
                                                annulus_fwhm))
    flux = counts - b_ap - excess * area
    level = b_ap / np.maximum(area, 1e-12) + excess
    noise = np.sqrt(np.maximum(np.maximum(b_ap + excess * area, b_ap), 1e-12))
    significance = flux / noise
    keep = (significance >= nsigma) & (area > 0)
    out = pd.DataFrame({"x": x[keep], "y": y[keep], "flux": flux[keep], "significance": significance[keep],
                        "level": level[keep]})
    return out.sort_values("flux", ascending=False, ignore_index=True)


def psf_fwhm_px(instrument, upscale: int) -> float:
    """FWHM (pixels of the ``upscale`` grid) of the PSF at the aim point at resolution ``upscale``
    (pixel integration not included)."""
    pixel = instrument.geometry.image_grid(upscale).pixel_arcsec
    return instrument.psf.fwhm_arcsec(instrument.aim_offaxis_arcmin, resolution=upscale) / pixel


def _disk(radius: float) -> np.ndarray:
    """Pixel-centre disk of ``radius`` pixels (at least the central pixel) as float weights."""
    h = int(np.floor(radius))
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    return (xx**2 + yy**2 <= radius**2).astype(np.float64)


def _footprint(aperture_cls, *radii: float) -> np.ndarray:
    """The photutils weights (``APERTURE_METHOD``) of an aperture centred on a pixel, as an odd-sized
    array centred on it: the pixel-grid version of the photometry."""
    h = int(np.ceil(radii[-1])) + 1
    aperture = aperture_cls((float(h), float(h)), *radii)
    return np.asarray(aperture.to_mask(method=APERTURE_METHOD).to_image((2 * h + 1, 2 * h + 1)), dtype=np.float64)


def _correlate(a: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Sum of ``a`` over the (symmetric) ``kernel`` footprint around every pixel."""
    return fftconvolve(a, kernel, mode="same")


def ridge_directions(smoothed: np.ndarray, mask: np.ndarray, positions: np.ndarray, fwhm: float) -> np.ndarray:
    """Direction (radians) of the structure through each position: the orientation perpendicular to the
    dominant gradient of ``smoothed`` (the structure tensor, integrated over a Gaussian of
    ``RIDGE_SCALE_FWHM`` x FWHM, over the gradients whose differences stay inside ``mask``, so that chip
    gaps and the field's edge do not count as structure). Along a ridge it is the ridge's own
    direction; around a lone source the gradients point every way and the direction is arbitrary."""
    gy, gx = np.gradient(smoothed)
    inside = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0).astype(np.float64)
    sigma = RIDGE_SCALE_FWHM * fwhm / np.sqrt(8.0 * np.log(2.0))
    jxx, jxy, jyy = (ndimage.gaussian_filter(g * inside, sigma, mode="constant") for g in (gx * gx, gx * gy, gy * gy))
    iy = np.clip(np.round(positions[:, 1]).astype(int), 0, smoothed.shape[0] - 1)
    ix = np.clip(np.round(positions[:, 0]).astype(int), 0, smoothed.shape[1] - 1)
    gradient = 0.5 * np.arctan2(2.0 * jxy[iy, ix], jxx[iy, ix] - jyy[iy, ix])
    return gradient + 0.5 * np.pi


def ridge_level(excess: np.ndarray, background: np.ndarray, weight: np.ndarray, positions: np.ndarray,
                directions: np.ndarray, fwhm: float, radii_fwhm: tuple[float, float]) -> np.ndarray:
    """Level of the emission along the ridge through each position (a shell, a filament, a streak):
    the mean ``excess`` in a band ``RIDGE_WIDTH_FWHM`` x FWHM wide along ``directions`` over the
    annulus's radii, on each side of the position; the lower of the two sides. Both sides of a ridge
    lie on it; beside a lone source or the end of a structure, one side at least lies off it. A side
    with less than ``RIDGE_COVERAGE`` of its band inside the mask (a chip gap, the field's edge) leaves
    the other side alone; a side that does not stand out from the ``background`` counts beneath it by
    ``RIDGE_NSIGMA`` (a Poisson significance at the map's exposure, as the sources') is no ridge, so
    that noise beside a peak is not taken for one. -inf: no ridge."""
    step = 0.5   # pixels between samples along and across the band
    along = np.arange(radii_fwhm[0] * fwhm, radii_fwhm[1] * fwhm + 1e-9, step)
    half = 0.5 * RIDGE_WIDTH_FWHM * fwhm
    across = np.arange(-half, half + 1e-9, step) if half >= step else np.zeros(1)
    u = np.stack([np.cos(directions), np.sin(directions)], axis=1)[:, None, None, :]
    v = np.stack([-np.sin(directions), np.cos(directions)], axis=1)[:, None, None, :]
    offs = (along[None, :, None, None] * u + across[None, None, :, None] * v).reshape(len(directions), -1, 2)
    # samples weighted by their distance along the band, as an annulus weights its radii: around a lone
    # source the band mean is then the annulus mean of its PSF wings
    radial = np.broadcast_to(along[:, None], (along.size, across.size)).ravel()
    planes = (excess * weight, background * weight, weight)
    sides = []
    for sign in (1.0, -1.0):
        coords = [(positions[:, 1][:, None] + sign * offs[:, :, 1]).ravel(),
                  (positions[:, 0][:, None] + sign * offs[:, :, 0]).ravel()]
        num, bkg, den = (ndimage.map_coordinates(a, coords, order=1, mode="constant", cval=0.0)
                         .reshape(offs.shape[:2]) for a in planes)
        inside = den.sum(axis=1)
        norm = np.maximum((den * radial).sum(axis=1), 1e-12)
        mean, bkg_mean = (num * radial).sum(axis=1) / norm, (bkg * radial).sum(axis=1) / norm
        area = inside * step * step   # pixels in the band
        stands_out = mean * area >= RIDGE_NSIGMA * np.sqrt(np.maximum(bkg_mean * area, 1e-12))
        sides.append(np.where(inside < RIDGE_COVERAGE * offs.shape[1], np.nan, np.where(stands_out, mean, -np.inf)))
    low = np.fmin(sides[0], sides[1])   # a side off the mask (a chip gap, the field's edge) leaves the other
    return np.where(np.isnan(low), -np.inf, low)


def _excess_level_map(data: np.ndarray, weight: np.ndarray, bdata: np.ndarray, fwhm: float,
                      annulus_fwhm: tuple[float, float] | None) -> np.ndarray:
    """Local level of the image above the given background per pixel on the pixel grid: the annulus mean
    of (image - background); 0 without an annulus."""
    if annulus_fwhm is None:
        return np.zeros_like(data)
    ring = _footprint(CircularAnnulus, annulus_fwhm[0] * fwhm, annulus_fwhm[1] * fwhm)
    n = _correlate(weight, ring)
    s = _correlate(data - bdata, ring)
    return np.where(n > 0.5, s / np.maximum(n, 0.5), 0.0)


def _parabola_offset(left: np.ndarray, centre: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Vertex of the parabola through three equally spaced samples, relative to the centre one."""
    denom = left - 2.0 * centre + right
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(denom < 0, 0.5 * (left - right) / denom, 0.0)
    return np.clip(off, -0.5, 0.5)


def aperture_sums(aperture, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Sums of each array over each aperture, weighted by the photutils aperture mask
    (``APERTURE_METHOD``); the masks are computed once for all arrays."""
    stack = np.stack(arrays)
    n = len(aperture) if not aperture.isscalar else 1
    out = np.zeros((len(arrays), n))
    masks = aperture.to_mask(method=APERTURE_METHOD)
    for i, mk in enumerate([masks] if aperture.isscalar else masks):
        large, small = mk.get_overlap_slices(stack.shape[1:])
        if large is None:
            continue
        out[:, i] = np.tensordot(stack[(slice(None), *large)], mk.data[small], axes=([1, 2], [0, 1]))
    return tuple(out)
