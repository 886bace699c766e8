"""Calibration of the per-pixel uncertainty against the truth.

The parametric bootstrap (:func:`~xmmsr.learn.predict.predict_uncertainty`) measures the spread of the
estimator under the Poisson noise of its input, not its bias (smoothed-away faint sources, sharpened or
broadened profiles), so the truth falls outside +-1 sigma more often than 32 % of the time. The calibration
scales the bootstrap sigma by a factor per bin of predicted counts per pixel, each factor the quantile of
``|prediction - truth| / sigma`` at the nominal level (68.27 %) over held-out simulated images (the
validation split, never the test split that scores it). It is stored in the released model file and
applied by ``xmmsr predict --uncertainty``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

ONE_SIGMA = 0.6827          # Gaussian probability within +-1 sigma
TWO_SIGMA = 0.9545          # ... and within +-2 sigma
BINS = 8                    # bins of predicted counts (one global factor leaves the faintest SR pixels short)


@dataclass(frozen=True)
class UncertaintyCalibration:
    """Scale factors of the bootstrap sigma per bin of predicted counts per output pixel.

    ``edges``: the inner bin edges (counts per pixel, ascending; ``len(scales) - 1`` of them);
    ``scales``: the factor of each bin; ``level``: the coverage the scaled +-1 sigma reaches on the
    fitting images; ``split`` and ``pixels``: what it was fitted on."""

    edges: tuple[float, ...]
    scales: tuple[float, ...]
    level: float = ONE_SIGMA
    split: str = "val"
    pixels: int = 0

    def __post_init__(self) -> None:
        if len(self.scales) != len(self.edges) + 1:
            raise ValueError(f"need one more scale than inner edges, got {len(self.scales)} and {len(self.edges)}")
        if np.any(np.diff(self.edges) < 0):
            raise ValueError("bin edges must be ascending")
        if not all(np.isfinite(self.scales)) or min(self.scales) <= 0:
            raise ValueError(f"scales must be finite and positive, got {self.scales}")

    def apply(self, prediction: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """The calibrated sigma (float32, the shape of ``sigma``)."""
        factor = np.asarray(self.scales)[np.searchsorted(np.asarray(self.edges), prediction, side="right")]
        return (np.asarray(sigma, dtype=np.float64) * factor).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"edges": [float(e) for e in self.edges], "scales": [float(s) for s in self.scales],
                "level": float(self.level), "split": str(self.split), "pixels": int(self.pixels)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UncertaintyCalibration:
        return cls(edges=tuple(float(e) for e in d["edges"]), scales=tuple(float(s) for s in d["scales"]),
                   level=float(d.get("level", ONE_SIGMA)), split=str(d.get("split", "val")),
                   pixels=int(d.get("pixels", 0)))


def fit_calibration(images: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], bins: int = BINS,
                    level: float = ONE_SIGMA, split: str = "val") -> UncertaintyCalibration:
    """Fit the scale factors on ``(prediction, sigma, truth, mask)`` images: ``bins`` bins of predicted
    counts holding equal numbers of masked pixels, and in each the ``level`` quantile of
    ``|prediction - truth| / sigma``. Pixels with sigma 0 (no spread in any draw) are left out."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    values, ratios = [], []
    for pred, sigma, truth, mask in images:
        m = np.asarray(mask, dtype=bool) & (np.asarray(sigma) > 0)
        p = np.asarray(pred, dtype=np.float64)[m]
        values.append(p)
        ratios.append(np.abs(p - np.asarray(truth, dtype=np.float64)[m]) / np.asarray(sigma, dtype=np.float64)[m])
    value, ratio = np.concatenate(values or [np.zeros(0)]), np.concatenate(ratios or [np.zeros(0)])
    if value.size < 10 * bins:
        raise ValueError(f"{value.size} pixels with a bootstrap spread are too few to fit {bins} bins")
    edges = np.unique(np.quantile(value, np.linspace(0, 1, bins + 1)[1:-1]))
    which = np.searchsorted(edges, value, side="right")
    scales = []
    for b in range(edges.size + 1):
        in_bin = ratio[which == b]
        scales.append(float(np.quantile(in_bin, level)) if in_bin.size else 1.0)
    # a bin whose errors are all 0 (the truth reproduced exactly) keeps the bootstrap sigma
    scales = [s if s > 0 else 1.0 for s in scales]
    return UncertaintyCalibration(tuple(float(e) for e in edges), tuple(scales), level, split, int(value.size))
