"""Source gate: a prediction keeps a compact source only where the input data show one.

A network trained on Poisson images learns to turn bumps of the input into sources: a 3-sigma
fluctuation of a 20 ks input that the network keeps becomes a sqrt(5) x 3 = 6.7-sigma source of the
100 ks expected map, i.e. a hallucination at the evaluation's 5-sigma threshold. The gate tests every
compact source of the prediction against the input counts it was predicted from:

1. candidates: :func:`xmmsr.detection.detect_point_sources` on the prediction (threshold
   ``CANDIDATE_SIGMA``, below the evaluation's 5, so that every source the evaluation could count is
   tested), with the prediction's own local level as background;
2. support: the input counts ``N`` in the detection aperture (``APERTURE_FWHM`` x the 1x FWHM) at the
   candidate's position against ``B``, the counts that the prediction's surroundings without the
   source give in that aperture at the input exposure: a quadratic surface fitted to the prediction in
   the detection annulus, so that a ripple on the curved core of a bright cluster has to stand out
   from the core, not from the annulus mean below it; the out-of-time streaks of the input's sources
   (from its own column sums) are part of the surroundings too; the one-sided Poisson significance of ``N``
   over ``B`` (``P(X >= N | B)`` as a Gaussian z; the regularised incomplete gamma function,
   continuous in the fractional counts of exact aperture weights);
3. a candidate below ``sigma`` is removed: within ``REMOVE_FWHM`` x FWHM of it the prediction is
   clipped at that surface (never raised), and the caller's flux conservation then restores the
   input's total.

The gate makes the prediction claim only sources that a detection on the input itself supports at
``sigma`` at the positions the network proposes; faint true sources that the input does not show at
that level are removed too (the evaluation's completeness says how many).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from photutils.aperture import CircularAperture
from scipy import special, stats

from .. import detection
from ..instrument.simulator import out_of_time_streaks

CANDIDATE_SIGMA = 3.0      # detection threshold of the candidates in the prediction
REMOVE_FWHM = 2.0          # radius (FWHM) within which a rejected source is clipped to its surroundings


@dataclass(frozen=True)
class SourceGate:
    """The gate's settings: ``sigma`` the input support a source needs; the PSF FWHM in pixels of the
    1x input grid and of the output grid; ``instrument``: the out-of-time streaks of the input's sources
    are part of the surroundings a source must stand out from (None: no streaks)."""

    sigma: float
    fwhm_1x_px: float
    fwhm_out_px: float
    instrument: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.sigma >= 0 and self.fwhm_1x_px > 0 and self.fwhm_out_px > 0):
            raise ValueError(f"source gate needs sigma >= 0 and positive FWHMs, got {self}")


def default_gate(upscale: int, sigma: float, instrument=None) -> SourceGate:
    """The gate at the aim point's PSF of ``instrument`` (default: the default configuration's, which the
    shipped models were trained with)."""
    if instrument is None:
        from ..config import default_config
        from ..instrument.model import PnInstrument

        instrument = PnInstrument.from_config(default_config()["instrument"])
    return SourceGate(float(sigma), detection.psf_fwhm_px(instrument, 1), detection.psf_fwhm_px(instrument, upscale),
                      instrument)


def poisson_significance(counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """One-sided Poisson significance (Gaussian z) of ``counts`` over an expectation ``expected``:
    ``P(X >= counts)`` by the regularised lower incomplete gamma function; 0 where counts <= expected."""
    n = np.asarray(counts, dtype=np.float64)
    b = np.maximum(np.asarray(expected, dtype=np.float64), 1e-12)
    p = special.gammainc(np.maximum(n, 1e-12), b)
    z = stats.norm.isf(np.clip(p, 1e-300, 1.0))
    return np.where(n > b, np.maximum(z, 0.0), 0.0)


def _local_surface(image: np.ndarray, mask: np.ndarray, x: float, y: float, fwhm: float,
                   level: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The image's surroundings of (x, y) without the source: a quadratic surface fitted (least squares)
    to the image in the detection annulus (``ANNULUS_FWHM`` x FWHM, masked pixels left out), so that
    the curvature of extended emission (a cluster's core) is part of what a source must stand out from;
    the annulus mean ``level`` where too little of the annulus lies in the mask."""
    r_in, r_out = (a * fwhm for a in detection.ANNULUS_FWHM)
    r = int(np.ceil(r_out))
    cx, cy = int(round(x)), int(round(y))
    y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, image.shape[0]), max(cx - r, 0), min(cx + r + 1, image.shape[1])
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d2 = (xx - x) ** 2 + (yy - y) ** 2
    ring = (d2 >= r_in ** 2) & (d2 <= r_out ** 2) & mask[y0:y1, x0:x1]
    full = np.pi * (r_out ** 2 - r_in ** 2)
    if ring.sum() < 0.75 * full:
        return lambda u, v: np.full(np.shape(u), float(level))

    def basis(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        du, dv = (np.asarray(u, dtype=np.float64) - x) / fwhm, (np.asarray(v, dtype=np.float64) - y) / fwhm
        return np.stack([np.ones_like(du), du, dv, du * du, du * dv, dv * dv], axis=-1)

    coeffs = np.linalg.lstsq(basis(xx[ring], yy[ring]), image[y0:y1, x0:x1][ring].astype(np.float64), rcond=None)[0]
    return lambda u, v: basis(u, v) @ coeffs


def aperture_support(prediction: np.ndarray, streak_out: np.ndarray, mask_out: np.ndarray, candidates: pd.DataFrame,
                     fwhm_out_px: float, counts: np.ndarray, seconds: np.ndarray, prediction_exposure_s: float,
                     floor: np.ndarray, upscale: int, radius_1x_px: float,
                     inside: np.ndarray) -> tuple[pd.DataFrame, list[Callable[[np.ndarray, np.ndarray], np.ndarray]]]:
    """What independent (or input) counts on the 1x grid hold at each candidate of a prediction.

    ``prediction``: expected counts per output pixel at ``prediction_exposure_s`` (``upscale`` x finer than
    the 1x grid), ``streak_out`` its out-of-time streaks and ``mask_out`` its valid pixels; ``candidates``:
    the sources found in it (``x``, ``y`` in output pixels, ``level``, :func:`xmmsr.detection.detect_point_sources`);
    ``counts``: the counts per 1x pixel to test against, ``seconds`` their exposure per pixel, ``floor`` the
    expected counts per 1x pixel they hold besides the sky (their streaks), ``inside`` their valid pixels.

    For each candidate, in a circular aperture of ``radius_1x_px`` (exact photutils weights): ``counts``,
    the counts; ``expected``, what the prediction's surroundings without the source give there at the
    counts' exposure (a quadratic surface fitted in the detection annulus, :func:`_local_surface`, plus
    ``floor``); ``predicted``, what the prediction itself gives there. Also each candidate's surface
    (output-pixel coordinates -> expected counts per output pixel at the prediction's exposure)."""
    s = int(upscale)
    h, w = np.shape(counts)
    residual = prediction - streak_out
    n, b, m = (np.zeros(len(candidates)) for _ in range(3))
    block = np.asarray(prediction, dtype=np.float64)
    if s > 1:   # the prediction summed over each 1x pixel
        block = block.reshape(h, s, w, s).sum(axis=(1, 3))
    surfaces = []
    for i, (x, y, level) in enumerate(candidates[["x", "y", "level"]].itertuples(index=False)):
        streak_here = float(streak_out[min(max(int(round(y)), 0), h * s - 1), min(max(int(round(x)), 0), w * s - 1)])
        surface = _local_surface(residual, mask_out, x, y, fwhm_out_px, level - streak_here)
        surfaces.append(surface)
        # the 1x aperture (exact photutils weights) and the surface's counts in it
        x1, y1 = (x + 0.5) / s - 0.5, (y + 0.5) / s - 0.5
        weights = CircularAperture((x1, y1), radius_1x_px).to_mask(method=detection.APERTURE_METHOD)
        large, small = weights.get_overlap_slices((h, w))
        if large is None:
            continue
        wgt = weights.data[small] * inside[large]
        iy, ix = np.mgrid[large]
        at_1x = s * s * np.maximum(surface((ix + 0.5) * s - 0.5, (iy + 0.5) * s - 0.5), 0.0)
        n[i] = float(np.sum(wgt * counts[large]))
        b[i] = float(np.sum(wgt * (at_1x * seconds[large] / prediction_exposure_s + floor[large])))
        m[i] = float(np.sum(wgt * (block[large] * seconds[large] / prediction_exposure_s)))
    return pd.DataFrame({"counts": n, "expected": b, "predicted": m}), surfaces


def gate_sources(prediction: np.ndarray, counts: np.ndarray, exposure_s: float | np.ndarray,
                 target_exposure_s: float, upscale: int, gate: SourceGate,
                 footprint: np.ndarray | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """The prediction with the sources the input does not support removed (a new array) and the table
    of candidates: ``x``, ``y`` (output pixels), ``flux``, ``significance`` (in the prediction),
    ``input_counts``, ``input_expected``, ``input_sigma`` and ``kept``."""
    s = int(upscale)
    pred = np.array(prediction, dtype=np.float32, copy=True)
    h, w = np.shape(counts)
    inside = np.ones((h, w), bool) if footprint is None else np.asarray(footprint, dtype=bool)
    mask_out = np.repeat(np.repeat(inside, s, axis=0), s, axis=1)
    seconds = np.broadcast_to(np.asarray(exposure_s, dtype=np.float64), (h, w))
    data = np.where(inside, np.asarray(counts, dtype=np.float64), 0.0)
    # the input's out-of-time streaks: input counts per 1x pixel, and expected counts per output pixel
    streak_in = (np.zeros((h, w)) if gate.instrument is None else out_of_time_streaks(data, gate.instrument, 1))
    streak_out = np.repeat(np.repeat(streak_in * (float(target_exposure_s) / seconds), s, axis=0), s, axis=1) / (s * s)
    candidates = detection.detect_point_sources(pred, mask_out, streak_out, gate.fwhm_out_px, CANDIDATE_SIGMA)
    table = candidates.assign(input_counts=np.zeros(len(candidates)), input_expected=np.zeros(len(candidates)),
                              input_sigma=np.zeros(len(candidates)), kept=np.ones(len(candidates), dtype=bool))
    if candidates.empty:
        return pred, table
    support, surfaces = aperture_support(pred, streak_out, mask_out, candidates, gate.fwhm_out_px, data, seconds,
                                         float(target_exposure_s), streak_in, s, detection.APERTURE_FWHM * gate.fwhm_1x_px,
                                         inside)
    n, b = support["counts"].to_numpy(), support["expected"].to_numpy()
    z = poisson_significance(n, b)
    kept = (z >= gate.sigma) & (b > 0)
    table = table.assign(input_counts=n, input_expected=b, input_sigma=z, kept=kept)
    radius = REMOVE_FWHM * gate.fwhm_out_px
    r = int(np.ceil(radius))
    for i in np.flatnonzero(~kept):
        x, y = float(candidates["x"].iloc[i]), float(candidates["y"].iloc[i])
        cx, cy = int(round(x)), int(round(y))
        y0, y1_, x0, x1_ = max(cy - r, 0), min(cy + r + 1, pred.shape[0]), max(cx - r, 0), min(cx + r + 1, pred.shape[1])
        yy, xx = np.mgrid[y0:y1_, x0:x1_]
        disk = (xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2
        patch = pred[y0:y1_, x0:x1_]
        floor = np.maximum(surfaces[i](xx[disk], yy[disk]), 0.0) + streak_out[y0:y1_, x0:x1_][disk]
        patch[disk] = np.minimum(patch[disk], floor.astype(np.float32))
    return pred, table
