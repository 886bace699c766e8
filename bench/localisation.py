"""Where SR puts faint sources, against where the input can put them (a benchmark, not a test).

For every image of a dataset split the model predicts once and its detections are matched to the
truth's as the evaluation does (:class:`xmmsr.evaluate.run.FrameTruth`), and also within one 2x FWHM
only, the radius before the error circles. Each true source's nearest detection within the 1x FWHM is
its counterpart; its offset is compared with the source's Cramér–Rao position error in the input
(:mod:`xmmsr.evaluate.localisation`): an estimate that uses all the input holds scatters by a Rayleigh
distribution of that sigma (median 1.18 sigma, 99 % within 3.03 sigma). Printed: the offsets of the
counterparts within one 2x FWHM and of those beyond it, and false sources per field and completeness
with either radius.

    python bench/localisation.py DATASET.h5 [--model MODEL.pt] [--split test] [--config CFG]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from xmmsr import detection
from xmmsr.config import default_config, load_config
from xmmsr.evaluate import points
from xmmsr.evaluate.localisation import ERROR_CIRCLE_SIGMA, PositionErrors
from xmmsr.evaluate.run import FrameTruth, frames_with_background
from xmmsr.instrument.model import PnInstrument
from xmmsr.learn.checkpoint import load_model, shipped_model
from xmmsr.learn.data import PairDataset
from xmmsr.learn.predict import predict_counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--model", default=None, help="an SR model file (default: the shipped SR model)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--config", help="the run's merged config (YAML); default: the embedded default")
    args = ap.parse_args()

    config = load_config(args.config) if args.config else default_config()
    instrument = PnInstrument.from_config(config["instrument"])
    nsigma = config["evaluate"]["detection_nsigma"]
    model = load_model(args.model or shipped_model("sr"))
    if model.upscale < 2:
        raise SystemExit(f"{args.model}: a {model.task} model; the error circles widen the match on the 2x grid only")
    s = model.upscale
    fwhm = detection.psf_fwhm_px(instrument, s)
    widest = detection.psf_fwhm_px(instrument, 1) * s
    pixel_arcsec = instrument.geometry.image_grid(s).pixel_arcsec
    errors = PositionErrors(instrument)
    rows, scores = [], []
    for frame, field, streaks in frames_with_background(PairDataset(args.dataset, model.task, args.split), instrument):
        truth = FrameTruth.detect(frame, field, streaks, instrument, s, nsigma, errors)
        pred = predict_counts(model, frame["input"], frame["exposure_input"], footprint=frame["mask_input"])
        pred = pred.astype(np.float64)
        found = detection.detect_point_sources(pred, frame["mask_target"], truth.background, fwhm, nsigma)
        for name, radius in (("one 2x FWHM", np.full(len(truth.sources), fwhm)), ("error circle", truth.match_radius_px)):
            score = points.score_and_list(truth.sources, pred, frame["mask_target"], truth.background, fwhm, 1.0,
                                          nsigma, edge_truth=truth.anywhere, match_radius_px=radius, detected=found)[0]
            scores.append({"radius": name, **score})
        if truth.sources.empty:
            continue
        offset = np.full(len(truth.sources), np.nan)
        if not found.empty:
            d, _ = cKDTree(found[["x", "y"]].to_numpy(dtype=np.float64)).query(
                truth.sources[["x", "y"]].to_numpy(dtype=np.float64))
            offset = np.where(d <= widest, d, np.nan)
        rows.append(pd.DataFrame({"offset_arcsec": offset * pixel_arcsec,
                                  "sigma_arcsec": truth.position_error_px * pixel_arcsec,
                                  "input_counts": truth.sources["flux"].to_numpy() * frame["exposure_input"]
                                  / frame["exposure_target"]}))
    table = pd.concat(rows, ignore_index=True).dropna(subset=["offset_arcsec"])
    table["ratio"] = table["offset_arcsec"] / table["sigma_arcsec"]
    close = table["offset_arcsec"] <= fwhm * pixel_arcsec
    print(f"{model.task}: {args.split} split; counterparts within the 1x FWHM ({widest * pixel_arcsec:.1f}\"), "
          f"the 2x FWHM is {fwhm * pixel_arcsec:.1f}\"")
    for label, part in (("within one 2x FWHM", table[close]), ("beyond it", table[~close])):
        print(f"  {label}: {len(part)} sources; median offset {part['offset_arcsec'].median():.2f}\", median "
              f"position error {part['sigma_arcsec'].median():.2f}\", median offset / error "
              f"{part['ratio'].median():.2f}, within {ERROR_CIRCLE_SIGMA:.2f} errors {np.mean(part['ratio'] <= ERROR_CIRCLE_SIGMA):.2f}, "
              f"median aperture counts in the input {part['input_counts'].median():.1f}")
    s = pd.DataFrame(scores).groupby("radius", sort=False).agg(fields=("n_true", "size"), false=("n_false", "sum"),
                                                                matched=("n_matched", "sum"), true=("n_true", "sum"))
    s["false_per_field"] = s["false"] / s["fields"]
    s["completeness"] = s["matched"] / s["true"]
    print(s[["fields", "false_per_field", "completeness"]].to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
