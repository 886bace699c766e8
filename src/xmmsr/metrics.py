"""Image-quality metrics over the detector mask (numpy, float64): the one measure of the training's
validation, the evaluation of the models and baselines, and the real-data scores.

Images are expected counts per pixel at the target exposure (predictions, noise-free expected images)
or the noisy target counts. Every metric uses only the pixels where ``mask`` is true (or > 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.special import xlogy
from skimage.metrics import structural_similarity

STRETCHES = ("linear", "sqrt", "asinh")
REFERENCES = ("expected", "target")
MU_FLOOR = 1.0e-8  # counts: floor of the Poisson mean inside the deviance
SUMMARY_COLUMNS = ["metric", "mean", "median", "p16", "p84", "n"]


def _prepare(mask: np.ndarray, *images: np.ndarray) -> tuple[np.ndarray, ...]:
    """float64 copies of ``images`` and a boolean mask, all checked to be 2-D and of one shape."""
    m = np.asarray(mask) > 0
    arrays = tuple(np.asarray(im, dtype=np.float64) for im in images)
    for a in arrays:
        if a.ndim != 2 or a.shape != m.shape:
            raise ValueError(f"images and mask must be 2-D arrays of one shape; got {a.shape} and mask {m.shape}")
    return (m, *arrays)


def stretch(image: np.ndarray, kind: str, scale: float) -> np.ndarray:
    """``image`` in display space ``kind``: "linear" (identity), "sqrt" (sqrt of the image clipped at 0)
    or "asinh" (asinh(image / scale)).

    ``scale`` is in the units of the image (expected counts per pixel)."""
    image = np.asarray(image, dtype=np.float64)
    if kind == "linear":
        return image
    if kind == "sqrt":
        return np.sqrt(np.maximum(image, 0.0))
    if kind == "asinh":
        if not scale > 0:
            raise ValueError(f"asinh stretch: scale must be > 0, got {scale}")
        return np.arcsinh(image / scale)
    raise ValueError(f"unknown stretch {kind!r}; use one of {STRETCHES}")


def data_range(ref: np.ndarray, mask: np.ndarray) -> float:
    """Range max - min of the reference over the mask (at least 1e-12): the data range of PSNR and SSIM."""
    m, r = _prepare(mask, ref)
    if not m.any():
        return 1.0e-12
    v = r[m]
    return max(float(v.max() - v.min()), 1.0e-12)


def masked_psnr(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """10 log10(data_range^2 / MSE) with the MSE over the mask; inf when MSE is 0, nan for an empty mask."""
    m, p, r = _prepare(mask, pred, ref)
    if not m.any():
        return float("nan")
    mse = float(np.mean(np.square(p[m] - r[m])))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(float(data_range) ** 2 / mse))


def masked_ssim(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """Mean over the mask of the SSIM map (Gaussian 11-px window, sigma 1.5, population covariances).

    Pixels outside the mask are set to 0 in both images first, so windows touching masked pixels see
    zeros there (identically in both images). Images must be at least 11 x 11."""
    m, p, r = _prepare(mask, pred, ref)
    if not m.any():
        return float("nan")
    p[~m] = 0.0
    r[~m] = 0.0
    _, smap = structural_similarity(p, r, data_range=float(data_range), full=True, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False)
    return float(np.mean(smap[m]))


def masked_l1(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference over the mask."""
    m, p, r = _prepare(mask, pred, ref)
    if not m.any():
        return float("nan")
    return float(np.mean(np.abs(p[m] - r[m])))


def deviance_map(mu: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-pixel Poisson deviance 2 [k log(k/mu) - (k - mu)] of counts k given means mu.

    k log k := 0 at k = 0; mu is floored at 1e-8; never negative."""
    k = np.asarray(counts, dtype=np.float64)
    mu = np.maximum(np.asarray(mu, dtype=np.float64), MU_FLOOR)
    return np.maximum(2.0 * (xlogy(k, k) - xlogy(k, mu) - (k - mu)), 0.0)


def poisson_deviance(mu: np.ndarray, counts: np.ndarray, mask: np.ndarray) -> float:
    """Mean over the mask of :func:`deviance_map`. Lower is better; 0 when mu == k."""
    m, mu, k = _prepare(mask, mu, counts)
    if not m.any():
        return float("nan")
    return float(np.mean(deviance_map(mu[m], k[m])))


def image_metrics(pred: np.ndarray, target_counts: np.ndarray, expected: np.ndarray, mask: np.ndarray,
                  asinh_scale: float) -> dict[str, float]:
    """All metrics of one predicted image.

    ``pred`` and ``expected``: expected counts per pixel at the target exposure; ``target_counts``: the
    noisy target counts. Keys: ``psnr_{space}_vs_{ref}`` and ``ssim_{space}_vs_{ref}`` for space in
    ``STRETCHES`` and ref in ("expected", "target") (data range: that of the stretched reference over the
    mask), ``l1_vs_expected``, ``l1_vs_target``, ``deviance_vs_target`` (Poisson deviance of the target
    counts given ``pred`` as their mean), ``deviance_vs_expected`` (the same with the noise-free truth in
    place of the counts: 0 for a perfect prediction) and ``flux_ratio`` (sum pred / sum expected over the
    mask).
    """
    m, p, k, e = _prepare(mask, pred, target_counts, expected)
    refs = {"expected": e, "target": k}
    out: dict[str, float] = {}
    for ref_name in REFERENCES:
        for space in STRETCHES:
            ps = stretch(p, space, asinh_scale)
            rs = stretch(refs[ref_name], space, asinh_scale)
            rng = data_range(rs, m)
            out[f"psnr_{space}_vs_{ref_name}"] = masked_psnr(ps, rs, m, rng)
            out[f"ssim_{space}_vs_{ref_name}"] = masked_ssim(ps, rs, m, rng)
    out["l1_vs_expected"] = masked_l1(p, e, m)
    out["l1_vs_target"] = masked_l1(p, k, m)
    out["deviance_vs_target"] = poisson_deviance(p, k, m)
    out["deviance_vs_expected"] = poisson_deviance(p, e, m)
    total = float(e[m].sum())
    out["flux_ratio"] = float(p[m].sum()) / total if total > 0 else float("nan")
    return out


def summarise(df: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Per group of ``by`` and per metric: mean, median, 16th and 84th percentiles and n.

    A long table with columns ``by + ["metric", "mean", "median", "p16", "p84", "n"]``; inf and nan
    values are left out of the statistics and of n (statistics are nan when no finite value is left)."""
    by = list(by)
    rows: list[dict] = []
    groups = df.groupby(by, sort=True, dropna=False) if by else [((), df)]
    for keys, g in groups:
        keys = keys if isinstance(keys, tuple) else (keys,)
        for metric in metrics:
            v = pd.to_numeric(g[metric], errors="coerce").to_numpy(dtype=np.float64)
            v = v[np.isfinite(v)]
            if v.size:
                p16, med, p84 = np.percentile(v, [16.0, 50.0, 84.0])
                stats = {"mean": float(v.mean()), "median": float(med), "p16": float(p16), "p84": float(p84)}
            else:
                stats = dict.fromkeys(("mean", "median", "p16", "p84"), float("nan"))
            rows.append({**dict(zip(by, keys)), "metric": metric, **stats, "n": int(v.size)})
    out = pd.DataFrame(rows, columns=by + SUMMARY_COLUMNS)
    out["n"] = out["n"].astype(np.int64)
    return out


def coverage_mask(short: np.ndarray, long: np.ndarray) -> np.ndarray:
    """Pixels inside the footprint covered by the counts of both images (gaps closed, holes filled)."""
    covered = [ndimage.binary_fill_holes(ndimage.binary_closing(img > 0, iterations=3)) for img in (short, long)]
    return covered[0] & covered[1]


def interval_coverage(pred: np.ndarray, sigma: np.ndarray, truth: np.ndarray, mask: np.ndarray,
                      k: float = 1.0) -> float:
    """Fraction of the masked pixels whose truth lies within ``pred`` +- ``k`` ``sigma`` (0.683 for k = 1
    and 0.954 for k = 2 when ``sigma`` is a calibrated Gaussian error)."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return float("nan")
    return float(np.mean(np.abs(np.asarray(pred)[m] - np.asarray(truth)[m]) <= k * np.asarray(sigma)[m]))
