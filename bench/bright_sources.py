"""Bright point sources: how sharp a model draws them against the noise-free truth (a benchmark, not a test).

For every image of a dataset split the model predicts once (as the evaluation does: the input's counts
conserved); for each of the truth's point sources (the evaluation's finder and threshold) the peak of the
prediction within one PSF FWHM of the true position is compared with the truth's peak, and the counts
in a box of 3 FWHM around it with the truth's. One row per source in ``--output`` (CSV); a table of the
medians per bin of the true source's counts is printed. Sources brighter than the training set's have
no counterpart in training: their peaks show whether the network extrapolates.

    python bench/bright_sources.py DATASET.h5 --model MODEL.pt --config CFG.yaml [--split test] [--output OUT.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from xmmsr import detection
from xmmsr.config import default_config, load_config
from xmmsr.evaluate.run import frames_with_background
from xmmsr.instrument.model import PnInstrument
from xmmsr.learn.checkpoint import load_model
from xmmsr.learn.data import PairDataset
from xmmsr.learn.predict import predict_counts

COUNT_BINS = (0.0, 1e2, 1e3, 1e4, 1e5, np.inf)   # true source counts at the target exposure


def _box(image: np.ndarray, x: float, y: float, half: int) -> np.ndarray:
    iy, ix = int(round(y)), int(round(x))
    return image[max(iy - half, 0):iy + half + 1, max(ix - half, 0):ix + half + 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--model", required=True)
    ap.add_argument("--config", help="the run's config (YAML, merged over the default); default: the embedded one")
    ap.add_argument("--split", default="test")
    ap.add_argument("--output", type=Path, help="per-source CSV (never overwritten)")
    args = ap.parse_args()
    if args.output is not None and args.output.exists():
        raise SystemExit(f"{args.output} exists; choose another --output")

    config = load_config(args.config) if args.config else default_config()
    instrument = PnInstrument.from_config(config["instrument"])
    nsigma = config["evaluate"]["detection_nsigma"]
    model = load_model(args.model)
    s = model.upscale
    fwhm = detection.psf_fwhm_px(instrument, s)
    peak_half, box_half = int(np.ceil(fwhm)), int(np.ceil(1.5 * fwhm))
    rows = []
    for frame, field, streaks in frames_with_background(PairDataset(args.dataset, model.task, args.split), instrument):
        bkg = field + streaks   # as the evaluation
        truth = detection.detect_point_sources(frame["expected"], frame["mask_target"], bkg, fwhm, nsigma)
        pred = predict_counts(model, frame["input"], frame["exposure_input"], footprint=frame["mask_input"])
        pred = pred.astype(np.float64) * frame["exposure_target"] / model.target_exposure_s
        for src in truth.itertuples():
            t_peak = _box(frame["expected"] - bkg, src.x, src.y, peak_half).max()
            p_peak = _box(pred - bkg, src.x, src.y, peak_half).max()
            rows.append({"sample": frame["index"], "x": src.x, "y": src.y, "counts": src.flux,
                         "peak_ratio": p_peak / t_peak,
                         "box_ratio": _box(pred - bkg, src.x, src.y, box_half).sum()
                         / _box(frame["expected"] - bkg, src.x, src.y, box_half).sum()})
        print(f"image {frame['index']}: {len(truth)} sources", flush=True)
    table = pd.DataFrame(rows)
    if args.output is not None:
        table.to_csv(args.output, index=False)
    table["true counts"] = pd.cut(table["counts"], COUNT_BINS)
    print(table.groupby("true counts", observed=True).agg(sources=("counts", "size"),
                                                          median_peak_ratio=("peak_ratio", "median"),
                                                          median_box_ratio=("box_ratio", "median")).to_string())


if __name__ == "__main__":
    main()
