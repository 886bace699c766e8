"""The source gate's threshold: false sources and completeness of a model's prediction against the
input support a source needs (a benchmark, not a test).

For every image of a dataset split, the model predicts once; the gate's candidates and their input
significance are computed once (:func:`xmmsr.learn.gate.gate_sources` with sigma 0); each threshold then
removes the candidates below it. The prediction is scored as the evaluation does (detections at the
evaluation's threshold matched to the truth's): false sources per field and completeness, beside the
input's (scaled) figures.

    python bench/gate_threshold.py DATASET.h5 --model MODEL.pt [--split val] [--sigmas 2 3 4 5] [--config CFG]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pandas as pd

from xmmsr import detection
from xmmsr.config import default_config, load_config
from xmmsr.evaluate.localisation import PositionErrors
from xmmsr.evaluate.run import FrameTruth, frames_with_background
from xmmsr.instrument.model import PnInstrument
from xmmsr.learn.checkpoint import load_model
from xmmsr.learn.data import PairDataset
from xmmsr.learn.gate import default_gate, gate_sources
from xmmsr.learn.predict import conserve_total, predict_counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--config", help="the run's merged config (YAML); default: the embedded default")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0])
    ap.add_argument("--max-images", type=int, default=None)
    args = ap.parse_args()

    config = load_config(args.config) if args.config else default_config()
    instrument = PnInstrument.from_config(config["instrument"])
    nsigma = config["evaluate"]["detection_nsigma"]
    model = load_model(args.model)
    s = model.upscale
    fwhm = detection.psf_fwhm_px(instrument, s)
    gate0 = default_gate(s, 0.0, instrument)
    ds = PairDataset(args.dataset, model.task, args.split, max_items=args.max_images)
    rows = []
    errors = PositionErrors(instrument)
    for frame, field, streaks in frames_with_background(ds, instrument):
        truth = FrameTruth.detect(frame, field, streaks, instrument, s, nsigma, errors)   # as the evaluation
        pred = predict_counts(model, frame["input"], frame["exposure_input"], footprint=frame["mask_input"])
        _, candidates = gate_sources(pred, frame["input"], frame["exposure_input"], model.target_exposure_s, s,
                                     gate0, frame["mask_input"])
        scaled = np.repeat(np.repeat(frame["input"], s, 0), s, 1) / (s * s) \
            * (frame["exposure_target"] / frame["exposure_input"])
        score = truth.score(scaled, frame, fwhm, 1.0, nsigma)[0]
        rows.append({"image": frame["index"], "method": "input (scaled)", "sigma": np.nan,
                     "n_false": score["n_false"], "n_matched": score["n_matched"], "n_true": score["n_true"]})
        for sigma in args.sigmas:
            gated, table = gate_sources(pred, frame["input"], frame["exposure_input"], model.target_exposure_s, s,
                                        replace(gate0, sigma=sigma), frame["mask_input"])
            conserve_total(gated, frame["input"], frame["exposure_input"], model.target_exposure_s)
            score = truth.score(gated.astype(np.float64), frame, fwhm, 1.0, nsigma)[0]
            rows.append({"image": frame["index"], "method": "model", "sigma": sigma,
                         "n_false": score["n_false"], "n_matched": score["n_matched"], "n_true": score["n_true"],
                         "candidates": len(table), "removed": int((~table["kept"]).sum())})
    table = pd.DataFrame(rows)
    out = table.groupby(["method", "sigma"], dropna=False).agg(
        images=("image", "nunique"), false=("n_false", "sum"), matched=("n_matched", "sum"), true=("n_true", "sum"),
        removed=("removed", "sum")).reset_index()
    out["false_per_field"] = out["false"] / out["images"]
    out["completeness"] = out["matched"] / out["true"]
    out["median_false_per_field"] = table.groupby(["method", "sigma"], dropna=False)["n_false"].median().to_numpy()
    print(f"{model.task}: {args.split} split, {out['images'].iloc[0]} images, detection at {nsigma:g} sigma "
          f"(sigma 0: no gate)")
    print(out[["method", "sigma", "false_per_field", "median_false_per_field", "completeness", "removed"]]
          .to_string(index=False))


if __name__ == "__main__":
    main()
