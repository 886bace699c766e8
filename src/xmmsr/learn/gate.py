"""Source gate: a prediction keeps a compact source only where the input data show one.

A network trained on Poisson images learns to turn bumps of the input into sources: a 3-sigma
fluctuation of a 20 ks input that the network keeps becomes a sqrt(5) x 3 = 6.7-sigma source of the
100 ks expected map, i.e. a hallucination at the evaluation's 5-sigma threshold. The gate tests every
compact source of the prediction against the input counts it was predicted from:

1. candidates: :func:`xmmsr.detection.detect_point_sources` on the prediction (threshold
   ``CANDIDATE_SIGMA``, below the evaluation's 5, so that every source the evaluation could count is
   tested), with the prediction's own local level as background;
2. support: the input counts ``N`` in the detection aperture (``APERTURE_FWHM`` x the 1x FWHM) at the
   candidate's position against ``B``, the counts the prediction's local level (annulus mean, the
   surroundings without the source) gives in that aperture at the input exposure; the one-sided Poisson
   significance of ``N`` over ``B`` (``P(X >= N | B)`` as a Gaussian z; the regularised incomplete
   gamma function, continuous in the fractional counts of exact aperture weights);
3. a candidate below ``sigma`` is removed: within ``REMOVE_FWHM`` x FWHM of it the prediction is
   clipped at the local level (never raised), and the caller's flux conservation then restores the
   input's total.

The gate makes the prediction claim only sources that a detection on the input itself supports at
``sigma`` at the positions the network proposes; faint true sources that the input does not show at
that level are removed too (the evaluation's completeness says how many).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from photutils.aperture import CircularAperture
from scipy import special, stats

from .. import detection

CANDIDATE_SIGMA = 3.0      # detection threshold of the candidates in the prediction
REMOVE_FWHM = 2.0          # radius (FWHM) within which a rejected source is clipped at its local level


@dataclass(frozen=True)
class SourceGate:
    """The gate's settings: ``sigma`` the input support a source needs; the PSF FWHM in pixels of the
    1x input grid and of the output grid."""

    sigma: float
    fwhm_1x_px: float
    fwhm_out_px: float

    def __post_init__(self) -> None:
        if not (self.sigma >= 0 and self.fwhm_1x_px > 0 and self.fwhm_out_px > 0):
            raise ValueError(f"source gate needs sigma >= 0 and positive FWHMs, got {self}")


def default_sigma() -> float:
    """The default configuration's ``evaluate.source_gate_sigma``: what ``xmmsr predict`` uses."""
    from ..config import default_config

    return float(default_config()["evaluate"]["source_gate_sigma"])


def default_gate(upscale: int, sigma: float | None = None, instrument=None) -> SourceGate:
    """The gate at the aim point's PSF of ``instrument`` (default: the default configuration's, which the
    shipped models were trained with); ``sigma`` None: :func:`default_sigma`."""
    if instrument is None:
        from ..config import default_config
        from ..instrument.model import PnInstrument

        instrument = PnInstrument.from_config(default_config()["instrument"])
    if sigma is None:
        sigma = default_sigma()
    return SourceGate(float(sigma), detection.psf_fwhm_px(instrument, 1), detection.psf_fwhm_px(instrument, upscale))


def poisson_significance(counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """One-sided Poisson significance (Gaussian z) of ``counts`` over an expectation ``expected``:
    ``P(X >= counts)`` by the regularised lower incomplete gamma function; 0 where counts <= expected."""
    n = np.asarray(counts, dtype=np.float64)
    b = np.maximum(np.asarray(expected, dtype=np.float64), 1e-12)
    p = special.gammainc(np.maximum(n, 1e-12), b)
    z = stats.norm.isf(np.clip(p, 1e-300, 1.0))
    return np.where(n > b, np.maximum(z, 0.0), 0.0)


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
    candidates = detection.detect_point_sources(pred, mask_out, 0.0, gate.fwhm_out_px, CANDIDATE_SIGMA)
    table = candidates.assign(input_counts=np.zeros(len(candidates)), input_expected=np.zeros(len(candidates)),
                              input_sigma=np.zeros(len(candidates)), kept=np.ones(len(candidates), dtype=bool))
    if candidates.empty:
        return pred, table
    x1 = (candidates["x"].to_numpy() + 0.5) / s - 0.5
    y1 = (candidates["y"].to_numpy() + 0.5) / s - 0.5
    aperture = CircularAperture(np.column_stack([x1, y1]), detection.APERTURE_FWHM * gate.fwhm_1x_px)
    seconds = np.broadcast_to(np.asarray(exposure_s, dtype=np.float64), (h, w))
    data = np.where(inside, np.asarray(counts, dtype=np.float64), 0.0)
    n, area, exposure_sum = detection.aperture_sums(aperture, (data, inside.astype(np.float64),
                                                                np.where(inside, seconds, 0.0)))
    # the prediction's local level per output pixel -> counts per 1x pixel at the input exposure
    mean_exposure = exposure_sum / np.maximum(area, 1e-12)
    b = candidates["level"].to_numpy() * s * s * area * mean_exposure / float(target_exposure_s)
    z = poisson_significance(n, b)
    kept = (z >= gate.sigma) & (area > 0)
    table = table.assign(input_counts=n, input_expected=b, input_sigma=z, kept=kept)
    radius = REMOVE_FWHM * gate.fwhm_out_px
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    for x, y, level in candidates.loc[~kept, ["x", "y", "level"]].itertuples(index=False):
        cx, cy = int(round(x)), int(round(y))
        y0, y1_, x0, x1_ = max(cy - r, 0), min(cy + r + 1, pred.shape[0]), max(cx - r, 0), min(cx + r + 1, pred.shape[1])
        disk = ((xx + cx - x) ** 2 + (yy + cy - y) ** 2 <= radius ** 2)[y0 - cy + r:y1_ - cy + r, x0 - cx + r:x1_ - cx + r]
        patch = pred[y0:y1_, x0:x1_]
        patch[disk] = np.minimum(patch[disk], np.float32(max(level, 0.0)))
    return pred, table
