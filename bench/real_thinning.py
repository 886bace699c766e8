"""Models on real pn images, scored by binomial thinning (a benchmark, not a test).

Each real SAS DETX/DETY image in the 0.5-2 keV band is thinned as ``xmmsr evaluate-real --image`` does
(:func:`xmmsr.evaluate.real.thinned_predictions`): an input of 20 ks, or half the counts when the image is
shorter than 40 ks, and the independent remainder. Every model and baseline predicts the remainder from
the input and is scored by the Poisson deviance per pixel against its counts (lower is better) and the
PSNR. The Gaussian's width is chosen on the remainder, which flatters it. Each method's point sources
(5 sigma at the model's target exposure, on the 1x grid) are tested against the remainder
(:func:`xmmsr.evaluate.real.remainder_support`): per image, the sources, those the remainder does not
confirm (below 2 sigma), those without any excess there, and the upper estimate of the sources made
from nothing (``from_nothing``).

    python bench/real_thinning.py REAL_DIR [--model NAME=MODEL.pt ...] [--seed 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from xmmsr.config import default_config
from xmmsr.evaluate.real import thinned_predictions, thinned_scores
from xmmsr.instrument.model import PnInstrument
from xmmsr.learn.checkpoint import load_model, shipped_model
from xmmsr.thinning import ThinningPlan


def real_images(real_dir: Path) -> list[Path]:
    """Real 0.5-2 keV DETX/DETY count images of the folder (others are skipped with a note)."""
    out = []
    for path in sorted(real_dir.glob("*.fits*")):
        header = fits.getheader(path)
        band = str(header.get("DSVAL3", "")) + str(header.get("DSVAL4", "")) + str(header.get("DSVAL6", ""))
        if header.get("CTYPE1L") != "DETX" or "500:2000" not in band:
            print(f"skipped {path.name}: not a 0.5-2 keV DETX/DETY count image")
            continue
        out.append(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("real_dir", type=Path)
    parser.add_argument("--model", action="append", default=[],
                        help="NAME=MODEL.pt (repeatable; default: the shipped dn and sr models)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="independent thinnings per image")
    args = parser.parse_args()
    models = dict(m.split("=", 1) for m in args.model) or {t: str(shipped_model(t)) for t in ("dn", "sr")}
    loaded = {name: load_model(path) for name, path in models.items()}
    cfg = default_config()
    instrument = PnInstrument.from_config(cfg["instrument"])
    plan = ThinningPlan(20_000.0, 0.5)
    rows = []
    for path in real_images(args.real_dir):
        exposure = float(fits.getheader(path)["EXPOSURE"])
        for r in range(args.repeats):   # one thinning, the baselines once, every model on it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = thinned_scores(thinned_predictions(loaded, path, plan.fraction(exposure) * exposure,
                                                       args.seed + r, instrument, cfg["evaluate"]), args.seed + r)
            t.insert(0, "image", path.name.split("_")[0])
            rows.append(t)
    scores = pd.concat(rows)
    table = scores.groupby(["image", "method"], sort=False)[["deviance", "psnr", "flux_ratio"]].mean()
    print(table.round(4).to_markdown())
    print()
    support = scores.groupby(["image", "method"], sort=False)[["sources", "unconfirmed", "no_excess",
                                                               "from_nothing"]].mean()
    print(support.round(2).to_markdown())
    print()
    print("means over the images:")
    print(support.groupby("method", sort=False).mean().round(2).to_markdown())
    wide = table["deviance"].unstack("method")
    print()
    for name in models:
        wins = int(np.sum(wide[name] < wide["gaussian"]))
        print(f"{name}: mean deviance {wide[name].mean():.4f} vs best Gaussian {wide['gaussian'].mean():.4f}; "
              f"below the Gaussian on {wins} of {len(wide)} images")


if __name__ == "__main__":
    main()
