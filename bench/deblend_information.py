"""How much a 20 ks input says about a close pair: the evidence for a second source in maximum-likelihood
PSF fits of the input counts (a benchmark, not a test).

For equal pairs (and the other ``--ratios``) at the aim point, at each separation and brightness, the
input is drawn ``--trials`` times as the de-blending evaluation draws it, and one and two PSFs are fitted
to it with the exact PSF and background (:class:`xmmsr.evaluate.deblend.PsfFit`, the method of SAS
emldetect). The drop of the Cash statistic from one to two sources is the evidence for the second (a
chi-square of 3 degrees of freedom where there is none; 33.2 at 5 sigma, the evaluation's detection
threshold). No method can resolve at that confidence what this evidence does not support; separation 0
(a lone source) shows the evidence noise alone gives.

    python bench/deblend_information.py [--separations 0 0.5 0.75 1 1.5] [--counts 100 200 500 1000 2000]
        [--ratios 1] [--trials 20] [--seed 1] [--nsigma 5]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from xmmsr import detection
from xmmsr.config import default_config
from xmmsr.evaluate.deblend import PsfFit, _matched, pair_images
from xmmsr.instrument.model import PnInstrument


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--separations", type=float, nargs="+", default=[0.0, 0.5, 0.75, 1.0, 1.5])
    ap.add_argument("--counts", type=float, nargs="+", default=[100.0, 200.0, 500.0, 1000.0, 2000.0],
                    help="input counts of the primary")
    ap.add_argument("--ratios", type=float, nargs="+", default=[1.0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--nsigma", type=float, default=5.0)
    ap.add_argument("--exposure", type=float, default=20_000.0, help="input exposure (s)")
    args = ap.parse_args()

    instrument = PnInstrument.from_config(default_config()["instrument"])
    fit = PsfFit(instrument, args.nsigma)
    fwhm_arcsec = detection.psf_fwhm_px(instrument, 1) * instrument.geometry.image_grid(1).pixel_arcsec
    rng = np.random.default_rng(args.seed)
    rows = []
    for sep, pair in zip(args.separations, pair_images(instrument, np.asarray(args.separations) * fwhm_arcsec)):
        mask = pair.background[1] > 0
        background = pair.background[1] * args.exposure
        for counts in args.counts:
            scale = counts / float(pair.primary[1].sum() * args.exposure)
            for ratio in args.ratios:
                rate = scale * (pair.primary[1] + pair.secondary[1] / ratio) + pair.background[1]
                evidence, resolved = [], 0
                for _ in range(args.trials):
                    data = rng.poisson(rate * args.exposure).astype(np.float64)
                    single, two, delta = fit.fit(data, background, mask)
                    evidence.append(delta)
                    resolved += _matched(fit.select(single, two, delta), pair.positions[1], sep * fwhm_arcsec,
                                         instrument, 1)
                rows.append({"separation_fwhm": sep, "primary_counts": counts, "flux_ratio": ratio,
                             "median_evidence": float(np.median(evidence)),
                             "evidence_16": float(np.percentile(evidence, 16)),
                             "evidence_84": float(np.percentile(evidence, 84)),
                             "resolved_fraction": resolved / args.trials})
    table = pd.DataFrame(rows)
    print(f"evidence for a second source (drop of the Cash statistic; {fit.threshold:.1f} at {args.nsigma:g} sigma), "
          f"{args.trials} draws per cell, input {args.exposure / 1e3:g} ks")
    for ratio in args.ratios:
        part = table[table["flux_ratio"] == ratio]
        print(f"\nflux ratio {ratio:g}: median evidence (resolved fraction at {args.nsigma:g} sigma); rows: separation "
              "in 1x FWHM, columns: primary's input counts")
        cells = part.assign(cell=[f"{e:.1f} ({f:.2f})" for e, f in zip(part["median_evidence"],
                                                                        part["resolved_fraction"])])
        print(cells.pivot(index="separation_fwhm", columns="primary_counts", values="cell").to_string())


if __name__ == "__main__":
    main()
