"""DN models on real pn images, scored by binomial thinning (a benchmark, not a test).

Each real SAS DETX/DETY image (403 x 411, bin 80) is split by keeping every count with probability p
into an input A and an independent remainder B (Poisson thinning: A and B are independent Poisson
images of means p lambda and (1 - p) lambda). p gives A the model's input exposure (20 ks) when the
image is at least twice as long, else p = 0.5. The model's prediction of A, rescaled to B's exposure,
is scored against B's counts by the Poisson deviance per pixel over the detector mask, beside the
input itself and Gaussian smoothing of A (each width, and the best width per image, which is chosen
on B and so flatters the Gaussian). Lower deviance is better.

    python bench/real_thinning.py REAL_DIR [--model MODEL.pt | --task dn] [--seed 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from astropy.io import fits

from xmmsr.config import default_config
from xmmsr.evaluate import baselines, metrics
from xmmsr.instrument.binning import exposure_of
from xmmsr.instrument.model import PnInstrument
from xmmsr.learn.checkpoint import load_model
from xmmsr.learn.predict import predict_counts
from xmmsr.learn.release import shipped_model

REPO = Path(__file__).resolve().parents[1]
SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("real_dir", type=Path)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--task", default="dn")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="independent thinnings per image")
    args = parser.parse_args()
    model_path = args.model or shipped_model(args.task)
    model = load_model(model_path)
    if model.task != "dn":
        raise SystemExit(f"{model_path}: a {model.task} model; this benchmark scores DN models")
    instrument = PnInstrument.from_config(default_config()["instrument"], base_dir=REPO)
    mask = instrument.geometry.detector_mask(1) > 0
    rng = np.random.default_rng(args.seed)
    rows = []
    for path in sorted(args.real_dir.glob("*.fits*")):
        with fits.open(path) as hdul:
            data, header = hdul[0].data, hdul[0].header
            if data is None or data.shape != mask.shape or header.get("CTYPE1L") != "DETX":
                continue
            counts, exposure = data.astype(np.int64), exposure_of(header, path)
        p = model.input_exposure_s / exposure if exposure >= 2 * model.input_exposure_s else 0.5
        for _ in range(args.repeats):
            a = rng.binomial(counts, p)
            b = counts - a
            t_a, t_b = p * exposure, (1.0 - p) * exposure
            preds = {"input": baselines.scaled_input(a, t_a, t_b, 1),
                     "model": predict_counts(model, a, t_a).astype(np.float64) * t_b / model.target_exposure_s}
            for s in SIGMAS:
                preds[f"gaussian {s:g}"] = baselines.gaussian(a, t_a, t_b, 1, sigma_px=s)
            row = {"image": path.name.split("_")[0], "p": p}
            row.update({m: metrics.poisson_deviance(np.maximum(v, 1e-9), b, mask) for m, v in preds.items()})
            rows.append(row)
    if not rows:
        raise SystemExit(f"{args.real_dir}: no real DETX/DETY images on the evselect grid")
    images = sorted({r["image"] for r in rows})
    methods = ["input", *[f"gaussian {s:g}" for s in SIGMAS], "model"]
    print(f"Model {model_path.name} ({model.task}, {model.input_exposure_s / 1000:g} ks -> "
          f"{model.target_exposure_s / 1000:g} ks); Poisson deviance per pixel against the independent remainder, "
          f"mean of {args.repeats} thinnings (seed {args.seed}).\n")
    print("| image | p | " + " | ".join(methods) + " | best Gaussian | model − best Gaussian |")
    print("|---" * (len(methods) + 5) + "|")
    gains = []
    for name in images:
        sel = [r for r in rows if r["image"] == name]
        mean = {m: float(np.mean([r[m] for r in sel])) for m in methods}
        best = min(mean[f"gaussian {s:g}"] for s in SIGMAS)
        gains.append(mean["model"] - best)
        print(f"| {name} | {sel[0]['p']:.2f} | " + " | ".join(f"{mean[m]:.4f}" for m in methods)
              + f" | {best:.4f} | {mean['model'] - best:+.4f} |")
    print(f"\nMean model − best Gaussian over {len(images)} images: {np.mean(gains):+.4f} (negative: the model wins).")


if __name__ == "__main__":
    main()
