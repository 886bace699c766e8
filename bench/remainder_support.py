"""How well the real-data test of invented sources counts them, on simulations (a benchmark, not a test).

On real images no truth says which detections are invented; :func:`xmmsr.evaluate.real.remainder_support`
tests each one against the independent remainder of a thinning instead. This checks that test where the
truth is known: on a split of a simulated training set, the 100 ks target (independent of the 20 ks
input) is thinned binomially to ``--remainder-fraction`` of its counts (0.2: a remainder as deep as the
input, as on the real images, whose remainder is the half not given as input) and serves as the
remainder. ``--input-fraction`` thins the input too (0.5: a 10 ks input for models trained on 20 ks
ones, as on the two real images of 20 ks). For the scaled input, the DN model and the SR model (forward-modelled to 1x) it prints, per
field: the sources found; those the truth's sources do not match (the evaluation's false detections at
1x, its detections of edge sources left out); those made from nothing, where the noise-free sky holds less than a third
of the excess the method claims over its surroundings; and the test's counts (``unconfirmed``,
``no_excess``, ``from_nothing``: the estimate of the last truth column).

    python bench/remainder_support.py DATASET.h5 [--dn MODEL.pt] [--sr MODEL.pt] [--split test]
        [--remainder-fraction 0.2] [--input-fraction 1] [--seed 1] [--config CFG]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from xmmsr import detection
from xmmsr.config import default_config, load_config
from xmmsr.evaluate import points
from xmmsr.evaluate.consistency import degradation_kernel, forward_model
from xmmsr.evaluate.localisation import PositionErrors
from xmmsr.evaluate.real import SUPPORT_SIGMA, remainder_support, support_summary
from xmmsr.evaluate.run import FrameTruth, frames_with_background
from xmmsr.instrument.model import PnInstrument
from xmmsr.learn.checkpoint import load_model, shipped_model
from xmmsr.learn.data import PairDataset
from xmmsr.learn.predict import predict_counts

NOTHING = 1.0 / 3.0   # a source is made from nothing where the truth holds less than this of its claimed excess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--dn", default=None, help="a DN model (default: the shipped one)")
    ap.add_argument("--sr", default=None, help="an SR model (default: the shipped one)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--remainder-fraction", type=float, default=0.2)
    ap.add_argument("--input-fraction", type=float, default=1.0, help="thin the input to this fraction too")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--config", help="the run's merged config (YAML); default: the embedded default")
    args = ap.parse_args()
    for name in ("remainder_fraction", "input_fraction"):
        if not 0.0 < getattr(args, name) <= 1.0:
            raise SystemExit(f"--{name.replace('_', '-')} must lie in (0, 1], got {getattr(args, name)}")

    config = load_config(args.config) if args.config else default_config()
    instrument = PnInstrument.from_config(config["instrument"])
    nsigma = config["evaluate"]["detection_nsigma"]
    models = {"model_dn": load_model(args.dn or shipped_model("dn")), "model_sr": load_model(args.sr or shipped_model("sr"))}
    fwhm = detection.psf_fwhm_px(instrument, 1)
    errors = PositionErrors(instrument)
    rng = np.random.default_rng(args.seed)
    rows = []
    for frame, field, streaks in frames_with_background(PairDataset(args.dataset, "dn", args.split), instrument):
        truth = FrameTruth.detect(frame, field, streaks, instrument, 1, nsigma, errors)
        mask, t_in, t_out = frame["mask_target"], frame["exposure_input"] * args.input_fraction, frame["exposure_target"]
        counts_in = (rng.binomial(frame["input"].astype(np.int64), args.input_fraction).astype(np.float64)
                     if args.input_fraction < 1.0 else frame["input"])
        remainder = (rng.binomial(frame["target"].astype(np.int64), args.remainder_fraction).astype(np.float64)
                     if args.remainder_fraction < 1.0 else frame["target"])
        seconds = args.remainder_fraction * t_out
        preds = {"input": counts_in * (t_out / t_in)}
        for name, model in models.items():
            pred = predict_counts(model, counts_in, t_in, footprint=frame["mask_input"]).astype(np.float64)
            if model.upscale != 1:
                pred = forward_model(pred, model.upscale, degradation_kernel(instrument, model.upscale), 1.0, 1.0,
                                     footprint=np.kron(frame["mask_input"], np.ones((model.upscale,) * 2, dtype=bool)))
            preds[name] = pred * (t_out / float(model.target_exposure_s))
        for method, pred in preds.items():
            support = remainder_support(pred, remainder, seconds, t_out, mask, instrument, nsigma)
            # the same sources tested against the noise-free sky: what the truth holds where each was found
            sky = remainder_support(pred, frame["expected"] * args.remainder_fraction, seconds, t_out, mask,
                                    instrument, nsigma)
            claimed = support["predicted_counts"] - support["remainder_expected"]
            held = sky["remainder_counts"] - sky["remainder_expected"]
            true = np.zeros(len(support), dtype=bool)
            true[points.match_pairs(truth.sources, support, truth.match_radius_px).detected_index] = True
            # the evaluation's rule: detections of the truth's edge sources are neither found nor false
            keep = np.zeros(len(support), dtype=bool)
            keep[points.without_edge_sources(truth.sources, truth.anywhere, support.assign(row=np.arange(len(support))),
                                             points.MATCH_FWHM * fwhm, truth.match_radius_px)["row"]] = True
            nothing = (held < NOTHING * claimed).to_numpy()[keep]
            rows.append({"field": frame["index"], "method": method, **support_summary(support[keep]),
                         "false": int(np.sum(~true[keep])), "made_from_nothing": int(nothing.sum()),
                         "unconfirmed_of_nothing": int(np.sum(support["remainder_sigma"].to_numpy()[keep][nothing]
                                                              < SUPPORT_SIGMA))})
    table = pd.DataFrame(rows)
    per_field = table.groupby("method", sort=False)[["sources", "false", "made_from_nothing", "unconfirmed",
                                                     "no_excess", "from_nothing"]].mean()
    print(f"{args.split} split, {table['field'].nunique()} fields; input {args.input_fraction:g} of its counts, "
          f"remainder {args.remainder_fraction:g} of the target's; per field (means):")
    print(per_field.round(2).to_markdown())
    totals = table.groupby("method", sort=False)[["made_from_nothing", "unconfirmed_of_nothing"]].sum()
    for method, row in totals.iterrows():
        if row["made_from_nothing"]:
            print(f"{method}: {row['unconfirmed_of_nothing'] / row['made_from_nothing']:.2f} of the sources made "
                  f"from nothing are unconfirmed (below {SUPPORT_SIGMA:g} sigma in the remainder)")


if __name__ == "__main__":
    main()
