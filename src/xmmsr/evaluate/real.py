"""DN on real pn data: a short exposure de-noised and scored against an independent, longer exposure of
the same target (different events), beside the same classical baselines.

How to make a pair. From one long observation, split the good time into two disjoint parts with SAS
``tabgtigen`` (or ``evselect`` with a TIME expression), e.g. the first 20 ks and the rest, and bin each
part with ``evselect`` (``xcolumn=DETX ycolumn=DETY ximagebinsize=80 yimagebinsize=80``, 0.5-2 keV,
``PATTERN<=4 && FLAG==0``), writing EXPOSURE (the summed good time) in each header; or two separate
observations of the target with the same pointing and roll. With our own tools: filter the event list
by TIME into two files and run ``xmmsr bin`` on each. The two images then hold independent events.

Scores are computed over the area both images cover (``coverage_mask``), with the long image's counts
as the (noisy) reference; predictions are rescaled from the model's target exposure to the long one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from ..errors import InputError
from ..instrument.model import PnInstrument
from ..learn.checkpoint import load_model
from ..learn.predict import predict_counts, read_count_image
from . import baselines, metrics
from .run import write_csv

REAL_METHODS = ("input", "gaussian", "richardson_lucy", "model")


def coverage_mask(short: np.ndarray, long: np.ndarray) -> np.ndarray:
    """Pixels inside the footprint covered by the counts of both images (gaps closed, holes filled)."""
    covered = [ndimage.binary_fill_holes(ndimage.binary_closing(img > 0, iterations=3)) for img in (short, long)]
    return covered[0] & covered[1]


def score_pair(model_path: str | Path, short_path: str | Path, long_path: str | Path,
               instrument_cfg: dict[str, Any], eval_cfg: dict[str, Any], gaussian_sigma: float = 1.0,
               base_dir: str | Path | None = None) -> pd.DataFrame:
    """Metrics of DN and the baselines on one real pair (one row per method)."""
    model = load_model(model_path)
    if model.task != "dn":
        raise InputError(model_path, "task", f"is a {model.task} model; real pairs score the DN model",
                         "give models/dn/model.pt")
    short, _, t_short = read_count_image(short_path)
    long, _, t_long = read_count_image(long_path)
    if short.shape != long.shape:
        raise InputError(long_path, "NAXIS1/NAXIS2", f"shape {long.shape} differs from the short image's {short.shape}",
                         "bin both images on the same grid (same DETX/DETY ranges and bin size)")
    if t_long <= t_short:
        raise InputError(long_path, "EXPOSURE", f"{t_long:g} s is not longer than the short image's {t_short:g} s",
                         "give the longer exposure as --long")
    mask = coverage_mask(short, long)
    instrument = PnInstrument.from_config(instrument_cfg, base_dir=base_dir)
    psf = baselines.psf_kernel(instrument, 1)
    args = (short, t_short, t_long, 1)
    preds = {"input": baselines.scaled_input(*args),
             "gaussian": baselines.gaussian(*args, sigma_px=gaussian_sigma),
             "richardson_lucy": baselines.richardson_lucy(*args, psf, iterations=eval_cfg["rl_iterations"]),
             "model": predict_counts(model, short, t_short).astype(np.float64) * t_long / model.target_exposure_s}
    a = eval_cfg["asinh_scale_counts"] * t_long / model.target_exposure_s
    rows = []
    for method, pred in preds.items():
        row: dict[str, Any] = {"method": method, "exposure_short": t_short, "exposure_long": t_long}
        for space in ("linear", "asinh"):
            p, r = metrics.stretch(pred, space, a), metrics.stretch(long, space, a)
            rng = metrics.data_range(r, mask)
            row[f"psnr_{space}_vs_long"] = metrics.masked_psnr(p, r, mask, rng)
            row[f"ssim_{space}_vs_long"] = metrics.masked_ssim(p, r, mask, rng)
        row["l1_vs_long"] = metrics.masked_l1(pred, long, mask)
        row["deviance_vs_long"] = metrics.poisson_deviance(pred, long, mask)
        row["flux_ratio"] = float(pred[mask].sum() / max(long[mask].sum(), 1e-12))
        rows.append(row)
    table = pd.DataFrame(rows)
    base = table.set_index("method").loc["input", "psnr_linear_vs_long"]
    table["psnr_gain_vs_input_percent"] = 100.0 * (table["psnr_linear_vs_long"] / base - 1.0)
    return table


def evaluate_real_pairs(model_path: str | Path, pairs: list[dict[str, str]], instrument_cfg: dict[str, Any],
                        eval_cfg: dict[str, Any], output: str | Path, gaussian_sigma: float = 1.0,
                        base_dir: str | Path | None = None) -> pd.DataFrame:
    """Score every configured pair; write one CSV (atomically) with a row per pair and method."""
    tables = []
    for pair in pairs:
        table = score_pair(model_path, pair["short"], pair["long"], instrument_cfg, eval_cfg, gaussian_sigma,
                           base_dir)
        table.insert(0, "pair", pair["name"])
        tables.append(table)
    result = pd.concat(tables, ignore_index=True)
    write_csv(result, output)
    return result
