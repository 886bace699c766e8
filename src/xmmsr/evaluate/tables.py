"""Result tables: every metric's label, format and better direction, and the per-method median tables
of a ``summary.csv`` that both the PDF report and the model card print."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import methods


@dataclass(frozen=True)
class Metric:
    """How a metric is shown: ``better`` is ``high``, ``low``, ``one`` (closest to ``nominal``, 1 unless
    given) or ``truth`` (closest to the truth's own value)."""

    label: str
    fmt: str
    better: str
    nominal: float = 1.0


METRICS: dict[str, Metric] = {
    "psnr_asinh_vs_expected": Metric("PSNR asinh vs truth [dB]", "{:.2f}", "high"),
    "ssim_asinh_vs_expected": Metric("SSIM asinh vs truth", "{:.3f}", "high"),
    "psnr_sqrt_vs_expected": Metric("PSNR sqrt vs truth [dB]", "{:.2f}", "high"),
    "ssim_sqrt_vs_expected": Metric("SSIM sqrt vs truth", "{:.3f}", "high"),
    "psnr_linear_vs_expected": Metric("PSNR linear vs truth [dB]", "{:.2f}", "high"),
    "ssim_linear_vs_expected": Metric("SSIM linear vs truth", "{:.3f}", "high"),
    "l1_vs_expected": Metric("L1 vs truth [counts/px]", "{:.3f}", "low"),
    "deviance_vs_expected": Metric("Poisson dev. vs truth", "{:.3f}", "low"),
    "deviance_vs_target": Metric("Poisson dev. vs target data", "{:.3f}", "low"),
    "flux_ratio": Metric("flux ratio (pred/truth)", "{:.3f}", "one"),
    "completeness": Metric("point-source completeness", "{:.2f}", "high"),
    "n_false": Metric("false sources per field", "{:.2f}", "low"),
    "median_flux_ratio": Metric("flux ratio (matched sources)", "{:.2f}", "one"),
    "median_offset_arcsec": Metric("position error [\"]", "{:.2f}", "low"),
    "consistency_deviance": Metric("consistency deviance", "{:.3f}", "truth"),
    "coverage_68": Metric("±1σ coverage (nominal 0.68)", "{:.2f}", "one", 0.6827),
    "coverage_95": Metric("±2σ coverage (nominal 0.95)", "{:.2f}", "one", 0.9545),
    "coverage_calibrated_68": Metric("±1σ coverage, calibrated (nominal 0.68)", "{:.2f}", "one", 0.6827),
    "coverage_calibrated_95": Metric("±2σ coverage, calibrated (nominal 0.95)", "{:.2f}", "one", 0.9545),
}

# the columns of each table
REPORT_OVERALL = ("psnr_asinh_vs_expected", "ssim_asinh_vs_expected", "psnr_sqrt_vs_expected",
                  "psnr_linear_vs_expected", "l1_vs_expected", "deviance_vs_expected", "deviance_vs_target",
                  "flux_ratio", "completeness", "n_false", "consistency_deviance", "coverage_68",
                  "coverage_calibrated_68")
CARD_IMAGES = ("psnr_sqrt_vs_expected", "psnr_asinh_vs_expected", "ssim_sqrt_vs_expected", "ssim_linear_vs_expected",
               "deviance_vs_expected", "deviance_vs_target", "flux_ratio")
CARD_POINTS = ("completeness", "n_false", "median_flux_ratio", "median_offset_arcsec", "consistency_deviance")
CARD_UNCERTAINTY = ("coverage_68", "coverage_95")
CARD_UNCERTAINTY_CALIBRATED = ("coverage_calibrated_68", "coverage_calibrated_95")
CARD_KINDS = ("psnr_sqrt_vs_expected", "deviance_vs_expected", "ssim_sqrt_vs_expected")


def read_summary(path: str | Path) -> pd.DataFrame:
    """A ``summary.csv`` of the evaluate rule (group, value, method, metric, mean, median, p16, p84, n)."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"value": str})


def median_table(summary: pd.DataFrame, metrics: Sequence[str], group: str = "all",
                 value: str = "all") -> pd.DataFrame:
    """Median of each of ``metrics`` per method (rows in registry order; metrics absent are left out)."""
    part = summary[(summary["group"] == group) & (summary["value"].astype(str) == value)]
    table = part.pivot_table(index="method", columns="metric", values="median", aggfunc="first", dropna=False)
    return table.reindex(methods.ordered(table.index))[[m for m in metrics if m in table.columns]]


def median(summary: pd.DataFrame, method: str, metric: str) -> float:
    """The overall median of one method and metric (NaN when absent)."""
    rows = summary[(summary["group"] == "all") & (summary["method"] == method) & (summary["metric"] == metric)]
    return float(rows["median"].iloc[0]) if len(rows) else float("nan")

def deblend_with_counts(table: pd.DataFrame) -> pd.DataFrame:
    """A de-blending table with its ``counts`` column (NaN for tables of one brightness, written before the
    primary's counts were a column)."""
    return table if "counts" in table.columns else table.assign(counts=np.nan)


def deblend_with_models(table: pd.DataFrame, others: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """``table`` with the ``model`` rows of each of ``others`` added under its key (e.g. the adversarial
    continuation's table as ``model_adversarial``). They must come from the same draws (same seed and
    settings): their input, Richardson-Lucy and truth rows must equal ``table``'s, else ValueError."""
    key = [c for c in ("separation_fwhm", "counts", "flux_ratio", "method") if c in table.columns]
    reference = table[table["method"] != "model"].sort_values(key).reset_index(drop=True)
    parts = [table]
    for name, other in others.items():
        same = other[other["method"] != "model"].sort_values(key).reset_index(drop=True)
        if not same[reference.columns].equals(reference):
            raise ValueError(f"the de-blending table of {name!r} comes from other draws than the model's (its input, "
                             "Richardson-Lucy or truth rows differ): score both with the same evaluate.deblend "
                             "settings and seed")
        parts.append(other[other["method"] == "model"].assign(method=name))
    return pd.concat(parts, ignore_index=True)
