"""Point-source recovery: detect sources in a prediction and in the truth with the same settings, match them.

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
   radius ``APERTURE_FWHM`` x FWHM, minus the local level times the aperture area. The local level is
   the mean of the image in an annulus of ``ANNULUS_FWHM`` x FWHM (masked pixels excluded): the
   given background plus any extended emission under the source, so that a bump on a cluster counts
   only by what it adds to its surroundings, not by the cluster itself. With ``annulus_fwhm=None`` the
   level is the given background. The aperture is not corrected for the PSF wings outside it (nor the
   annulus for the wings inside it, which lower the flux by ~1 %): the flux is the aperture flux, about
   55 % of the total for the on-axis pn King profile at 1.5 FWHM, measured the same way in prediction
   and truth, so flux *ratios* are unbiased;
4. significance = flux / sqrt(B), B = aperture area x max(local level, mean given background in the
   aperture): the Poisson significance of the source counts over the counts beneath them. A source
   is kept when significance >= ``nsigma`` (default ``NSIGMA`` = 5).

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

Matching (:func:`match_pairs`, :func:`match_sources`): greedy one-to-one nearest neighbours within
``max_sep_px`` (pairs taken in order of increasing separation), so each true source is recovered at
most once; unmatched detections are false (hallucinated) sources. :func:`point_source_metrics` uses
a maximum separation of one PSF FWHM (``MATCH_FWHM``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from photutils.aperture import CircularAnnulus, CircularAperture
from photutils.detection import find_peaks
from photutils.utils.exceptions import NoDetectionsWarning
from scipy import ndimage
from scipy.signal import fftconvolve
from scipy.spatial import cKDTree

NSIGMA = 5.0               # detection threshold: Poisson significance at the target exposure
APERTURE_FWHM = 1.5        # photometry aperture radius, in PSF FWHM
ANNULUS_FWHM = (3.0, 5.0)  # local-level annulus radii, in PSF FWHM
SMOOTH_FWHM = 1.0          # FWHM of the Gaussian smoothing kernel, in PSF FWHM
PEAK_BOX_FWHM = 1.0        # half-size of the local-maximum box, in PSF FWHM (rounded up)
EDGE_FWHM = 1.0            # minimum distance of a source from the mask edge, in PSF FWHM
MATCH_FWHM = 1.0           # maximum separation of a matched pair, in PSF FWHM
APERTURE_METHOD = "exact"  # photutils aperture-pixel overlap
PREFILTER = 0.7            # candidates must reach PREFILTER x nsigma on the pixel-grid estimate first
COLUMNS = ("x", "y", "flux", "significance", "level")


def detect_point_sources(image: np.ndarray, mask: np.ndarray, background: np.ndarray | float,
                         psf_fwhm_px: float, nsigma: float = NSIGMA, *,
                         annulus_fwhm: tuple[float, float] | None = ANNULUS_FWHM,
                         peak_box_fwhm: float = PEAK_BOX_FWHM) -> pd.DataFrame:
    """Point sources in an expected-counts map (see the module docstring for the method).

    ``image``: expected counts per pixel at the target exposure; ``mask``: pixels to use (True/1);
    ``background``: expected background counts per pixel at the same exposure (array or scalar);
    ``psf_fwhm_px``: PSF FWHM in pixels of this grid. Returns a DataFrame with columns ``x``, ``y``
    (0-based pixel coordinates, x along columns), ``flux`` (aperture counts minus local level),
    ``significance`` and ``level`` (the local level per pixel), sorted by decreasing flux.
    ``peak_box_fwhm``: half-size of the local-maximum box in FWHM (smaller separates closer pairs).
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
    inner = ndimage.binary_erosion(m, structure=_disk(max(EDGE_FWHM * fwhm, 1.0)) > 0, border_value=0)
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
    level_map = _level_map(data, weight, bdata, fwhm, annulus_fwhm)
    ap_sum = _correlate(data, disk)[py, px]
    b_sum = _correlate(bdata, disk)[py, px]
    area0, level0 = area_map[py, px], level_map[py, px]
    sig0 = (ap_sum - level0 * area0) / np.sqrt(np.maximum(np.maximum(level0 * area0, b_sum), 1e-12))
    keep = sig0 >= PREFILTER * nsigma
    px, py = px[keep], py[keep]
    if px.size == 0:
        return empty

    # sub-pixel position: parabola through the peak and its two neighbours along each axis
    x = px + _parabola_offset(smoothed[py, px - 1], smoothed[py, px], smoothed[py, px + 1])
    y = py + _parabola_offset(smoothed[py - 1, px], smoothed[py, px], smoothed[py + 1, px])

    # 3-4: exact aperture photometry, local level, significance
    positions = np.column_stack([x, y])
    counts, area, b_ap = _aperture_sums(CircularAperture(positions, r_ap), (data, weight, bdata))
    if annulus_fwhm is None:
        level = b_ap / np.maximum(area, 1e-12)
    else:
        annulus = CircularAnnulus(positions, annulus_fwhm[0] * fwhm, annulus_fwhm[1] * fwhm)
        ann_sum, ann_area = _aperture_sums(annulus, (data, weight))
        level = np.where(ann_area > 0, ann_sum / np.maximum(ann_area, 1e-12), b_ap / np.maximum(area, 1e-12))
    flux = counts - level * area
    noise = np.sqrt(np.maximum(np.maximum(level * area, b_ap), 1e-12))
    significance = flux / noise
    keep = (significance >= nsigma) & (area > 0)
    out = pd.DataFrame({"x": x[keep], "y": y[keep], "flux": flux[keep], "significance": significance[keep],
                        "level": level[keep]})
    return out.sort_values("flux", ascending=False, ignore_index=True)


@dataclass(frozen=True)
class MatchedPairs:
    """One-to-one matches: indices into the truth and detected tables, separations (pixels) and
    flux ratios (detected / true)."""

    truth_index: np.ndarray
    detected_index: np.ndarray
    separation_px: np.ndarray
    flux_ratio: np.ndarray
    n_true: int
    n_detected: int

    @property
    def n_matched(self) -> int:
        return int(self.truth_index.size)


def match_pairs(truth: pd.DataFrame, detected: pd.DataFrame, max_sep_px: float) -> MatchedPairs:
    """Greedy one-to-one nearest-neighbour matching within ``max_sep_px`` (closest pairs first).

    ``truth`` and ``detected`` need columns ``x``, ``y`` and ``flux`` (a DataFrame or an astropy Table)."""
    tx, ty, tf = (np.asarray(truth[c], dtype=np.float64) for c in ("x", "y", "flux"))
    dx, dy, df = (np.asarray(detected[c], dtype=np.float64) for c in ("x", "y", "flux"))
    n_true, n_det = tx.size, dx.size
    ti: list[int] = []
    di: list[int] = []
    sep: list[float] = []
    if n_true and n_det:
        pairs = cKDTree(np.column_stack([tx, ty])).sparse_distance_matrix(
            cKDTree(np.column_stack([dx, dy])), float(max_sep_px), output_type="ndarray")
        used_t: set[int] = set()
        used_d: set[int] = set()
        for i in np.argsort(pairs["v"], kind="stable"):
            a, b = int(pairs["i"][i]), int(pairs["j"][i])
            if a in used_t or b in used_d:
                continue
            used_t.add(a)
            used_d.add(b)
            ti.append(a)
            di.append(b)
            sep.append(float(pairs["v"][i]))
    t_idx = np.asarray(ti, dtype=np.int64)
    d_idx = np.asarray(di, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = df[d_idx] / tf[t_idx]
    return MatchedPairs(t_idx, d_idx, np.asarray(sep, dtype=np.float64), ratio, n_true, n_det)


def match_sources(truth: pd.DataFrame, detected: pd.DataFrame, max_sep_px: float) -> dict[str, float]:
    """Summary of :func:`match_pairs`: ``n_true``, ``n_detected``, ``n_matched``, ``n_false`` (detections
    with no true source within ``max_sep_px``: hallucinated), ``completeness`` (n_matched / n_true, nan
    when there is no true source), ``median_flux_ratio`` (detected / true flux of the matched pairs)
    and ``median_offset_px`` (both nan when nothing matched)."""
    return summarise_pairs(match_pairs(truth, detected, max_sep_px))


def summarise_pairs(p: MatchedPairs) -> dict[str, float]:
    """The figures of :func:`match_sources` from already matched pairs."""
    return {
        "n_true": float(p.n_true),
        "n_detected": float(p.n_detected),
        "n_matched": float(p.n_matched),
        "n_false": float(p.n_detected - p.n_matched),
        "completeness": p.n_matched / p.n_true if p.n_true else float("nan"),
        "median_flux_ratio": float(np.median(p.flux_ratio)) if p.n_matched else float("nan"),
        "median_offset_px": float(np.median(p.separation_px)) if p.n_matched else float("nan"),
    }


def point_source_metrics(pred: np.ndarray, truth_expected: np.ndarray, mask: np.ndarray,
                         background: np.ndarray | float, psf_fwhm_px: float, pixel_arcsec: float,
                         nsigma: float = NSIGMA) -> dict[str, float]:
    """Detect point sources in the prediction and in the noise-free truth with the same settings and
    match them within ``MATCH_FWHM`` x FWHM. Keys: ``n_true``, ``n_detected``, ``n_matched``,
    ``n_false``, ``completeness``, ``median_flux_ratio``, ``median_offset_arcsec``."""
    truth = detect_point_sources(truth_expected, mask, background, psf_fwhm_px, nsigma)
    return score_against_truth(truth, pred, mask, background, psf_fwhm_px, pixel_arcsec, nsigma)


def score_against_truth(truth: pd.DataFrame, pred: np.ndarray, mask: np.ndarray, background: np.ndarray | float,
                        psf_fwhm_px: float, pixel_arcsec: float, nsigma: float = NSIGMA) -> dict[str, float]:
    """:func:`point_source_metrics` with the truth's detections given (detect them once per image when
    several predictions are scored against the same truth)."""
    return score_and_list(truth, pred, mask, background, psf_fwhm_px, pixel_arcsec, nsigma)[0]


SOURCE_COLUMNS = ("source", "x", "y", "flux", "significance", "offaxis_arcmin", "found")


def score_and_list(truth: pd.DataFrame, pred: np.ndarray, mask: np.ndarray, background: np.ndarray | float,
                   psf_fwhm_px: float, pixel_arcsec: float, nsigma: float = NSIGMA,
                   offaxis_arcmin: np.ndarray | None = None) -> tuple[dict[str, float], pd.DataFrame]:
    """:func:`score_against_truth` and the sources behind it, one row each (:data:`SOURCE_COLUMNS`): every
    true source (``source`` = ``true_source``; its flux and significance in the truth; ``found`` when
    matched) and every detection without a true source (``false_detection``: hallucinated; its own flux
    and significance).
    ``offaxis_arcmin``: a map of the off-axis angle on this grid (NaN without it)."""
    detected = detect_point_sources(pred, mask, background, psf_fwhm_px, nsigma)
    pairs = match_pairs(truth, detected, MATCH_FWHM * float(psf_fwhm_px))
    out = summarise_pairs(pairs)
    out["median_offset_arcsec"] = out.pop("median_offset_px") * float(pixel_arcsec)
    found = np.zeros(len(truth), dtype=bool)
    found[pairs.truth_index] = True
    false = np.ones(len(detected), dtype=bool)
    false[pairs.detected_index] = False
    rows = pd.concat([truth.assign(source="true_source", found=found),
                      detected[false].assign(source="false_detection", found=False)],
                     ignore_index=True)
    if offaxis_arcmin is None or rows.empty:
        rows["offaxis_arcmin"] = np.nan
    else:
        ny, nx = offaxis_arcmin.shape
        iy = np.clip(np.round(rows["y"].to_numpy()).astype(int), 0, ny - 1)
        ix = np.clip(np.round(rows["x"].to_numpy()).astype(int), 0, nx - 1)
        rows["offaxis_arcmin"] = offaxis_arcmin[iy, ix]
    return out, rows.reindex(columns=list(SOURCE_COLUMNS))


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


def _level_map(data: np.ndarray, weight: np.ndarray, bdata: np.ndarray, fwhm: float,
               annulus_fwhm: tuple[float, float] | None) -> np.ndarray:
    """Local level per pixel on the pixel grid: annulus mean of the image (or the background)."""
    if annulus_fwhm is None:
        return bdata
    ring = _footprint(CircularAnnulus, annulus_fwhm[0] * fwhm, annulus_fwhm[1] * fwhm)
    n = _correlate(weight, ring)
    s = _correlate(data, ring)
    return np.where(n > 0.5, s / np.maximum(n, 0.5), bdata)


def _parabola_offset(left: np.ndarray, centre: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Vertex of the parabola through three equally spaced samples, relative to the centre one."""
    denom = left - 2.0 * centre + right
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(denom < 0, 0.5 * (left - right) / denom, 0.0)
    return np.clip(off, -0.5, 0.5)


def _aperture_sums(aperture, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
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
