"""What training on injected close pairs (``train.pairs``) does for de-blending, and what it costs
(a benchmark, not a test).

An SR model (default: the shipped one) is continued for ``--steps`` optimizer steps on a training set,
once per pair fraction (``--fractions``; 0 is the control: the same steps without pairs), with its own
losses, crop and batch; each continued model and the starting one are then scored by

* de-blending (:func:`xmmsr.evaluate.deblend.deblending`, the evaluation's settings): the fraction of
  pairs at the aim point found as two sources, by separation and flux ratio, and at separation 0 how
  often a lone source of the same counts is found as two (false pairs);
* the point sources of the set's ``--split`` fields (the evaluation's finder and matching): false
  detections per field and completeness;
* the masked PSNR (normalised) and Poisson deviance on the set's validation split.

    python bench/deblend_training.py DATASET.h5 [--model SR.pt] [--steps 600] [--fractions 0 0.5]
        [--lr 1e-4] [--pair-counts 20 2000] [--pair-separation 2 20] [--seed 1] [--trials 20] [--threads 1]
        --output-dir DIR

The continued models, ``deblend.csv``, ``points.csv`` and ``validation.csv`` go to
``--output-dir`` (refused if it exists, so that no earlier run is overwritten).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from xmmsr import detection
from xmmsr.config import default_config
from xmmsr.evaluate.deblend import deblending
from xmmsr.evaluate.localisation import PositionErrors
from xmmsr.evaluate.run import FrameTruth, frames_with_background
from xmmsr.instrument.model import PnInstrument
from xmmsr.learn.checkpoint import TrainedModel, load_model, save_model, shipped_model
from xmmsr.learn.data import EpochSampler, PairDataset, open_dataset
from xmmsr.learn.predict import predict_counts
from xmmsr.learn.train import Restoration, plain_generator, resumable_trainer


def continue_training(start: TrainedModel, dataset: Path, fraction: float, steps: int, lr: float, seed: int,
                      workdir: Path, pairs: dict[str, list[float]] | None = None
                      ) -> tuple[TrainedModel, list[dict[str, float]]]:
    """``start`` continued ``steps`` steps on ``dataset`` with a fraction ``fraction`` of the crops given pairs
    (``pairs``: other ``train.pairs`` settings than the defaults)."""
    cfg = copy.deepcopy(start.train_config["train"])
    cfg["pairs"] = {**(cfg.get("pairs") or {}), **(pairs or {}), "fraction": fraction}
    steps_per_epoch = max(1, steps // 3)
    epochs = -(-steps // steps_per_epoch)
    torch.manual_seed(seed)
    module = Restoration(start.architecture, start.normalisation, dict(cfg["loss"]), lr, cfg["weight_decay"],
                         min(20, steps // 10), epochs * steps_per_epoch, 0.1)
    module.generator.load_state_dict(start.generator.state_dict())
    train_set = PairDataset.training(dataset, start.task, cfg)
    val_set = PairDataset(dataset, start.task, "val")
    sampler = EpochSampler(len(train_set), steps_per_epoch * cfg["batch_size"], seed)
    trainer = resumable_trainer(workdir, "cpu", 1, "32-true", epochs, steps_per_epoch, cfg["gradient_clip"], (),
                                False)
    trainer.fit(module, DataLoader(train_set, batch_size=cfg["batch_size"], sampler=sampler, drop_last=True),
                DataLoader(val_set, batch_size=1))
    model = TrainedModel(generator=plain_generator(module.generator, start.architecture),
                         architecture=start.architecture, normalisation=start.normalisation,
                         input_exposure_s=start.input_exposure_s, target_exposure_s=start.target_exposure_s,
                         train_config={**start.train_config, "train": cfg},
                         provenance={**start.provenance, "continued": {"dataset": dataset.name, "steps": steps,
                                                                       "pairs_fraction": fraction, "lr": lr}})
    return model, module.history


def point_scores(model: TrainedModel, dataset: Path, split: str, instrument: PnInstrument,
                 nsigma: float) -> dict[str, float]:
    """False detections per field and completeness of the model's predictions of a split (the evaluation's
    finder and matching)."""
    s = model.upscale
    fwhm = detection.psf_fwhm_px(instrument, s)
    errors = PositionErrors(instrument)
    found = false = true = 0
    images = 0
    for frame, field, streaks in frames_with_background(PairDataset(dataset, model.task, split), instrument):
        truth = FrameTruth.detect(frame, field, streaks, instrument, s, nsigma, errors)
        pred = predict_counts(model, frame["input"], frame["exposure_input"], footprint=frame["mask_input"])
        score = truth.score(pred.astype(np.float64), frame, fwhm, 1.0, nsigma)[0]
        found, false, true, images = (found + score["n_matched"], false + score["n_false"],
                                      true + score["n_true"], images + 1)
    return {"images": images, "false_per_field": false / max(images, 1), "completeness": found / max(true, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--model", type=Path, default=None, help="the SR model to continue (default: the shipped one)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--split", default="test", help="fields scored for false detections and completeness")
    ap.add_argument("--pair-counts", type=float, nargs=2, default=None, help="train.pairs.counts (default 20 2000)")
    ap.add_argument("--pair-separation", type=float, nargs=2, default=None,
                    help="train.pairs.separation_arcsec (default 2 20)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output-dir", type=Path, required=True)
    args = ap.parse_args()
    if args.output_dir.exists():
        raise SystemExit(f"{args.output_dir} exists: give a new --output-dir (nothing is overwritten)")
    torch.set_num_threads(args.threads)
    start = load_model(args.model or shipped_model("sr"))
    if start.upscale != 2:
        raise SystemExit(f"{args.model}: a {start.task} model; de-blending needs an SR model")
    with open_dataset(args.dataset) as h5:
        config = json.loads(h5.attrs["config"])
    instrument = PnInstrument.from_config(config["instrument"])
    ev = default_config()["evaluate"]   # the evaluation's settings (the training set holds no evaluate section)
    nsigma, settings, rl_iterations = float(ev["detection_nsigma"]), ev["deblend"], int(ev["rl_iterations"])

    args.output_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=args.output_dir.name + ".", dir=args.output_dir.parent))
    models = {"start": start}
    validation = []
    for fraction in args.fractions:
        name = f"pairs {fraction:g}" if fraction > 0 else "no pairs"
        pairs = {k: v for k, v in (("counts", args.pair_counts), ("separation_arcsec", args.pair_separation)) if v}
        model, history = continue_training(start, args.dataset, fraction, args.steps, args.lr, args.seed,
                                           work / f"checkpoints_{fraction:g}", pairs)
        save_model(work / f"sr_pairs{fraction:g}.pt", model)
        models[name] = model
        validation += [{"model": name, **row} for row in history]

    deblend, scores = [], []
    separations = sorted({0.0, *settings["separations_fwhm"]})
    for name, model in models.items():
        table = deblending(model, instrument, model.input_exposure_s, model.target_exposure_s,
                           settings["counts"], separations,
                           list(settings["flux_ratios"]), args.trials, args.seed, nsigma, rl_iterations)
        deblend.append(table.assign(model=name))
        scores.append({"model": name, **point_scores(model, args.dataset, args.split, instrument, nsigma)})
    pd.concat(deblend).to_csv(work / "deblend.csv", index=False)
    pd.DataFrame(scores).to_csv(work / "points.csv", index=False)
    pd.DataFrame(validation).to_csv(work / "validation.csv", index=False)
    work.rename(args.output_dir)

    table = pd.concat(deblend)
    for ratio in settings["flux_ratios"]:
        sub = table[table["flux_ratio"] == ratio]
        wide = sub.pivot_table(index=["model", "method", "counts"], columns="separation_fwhm",
                               values="resolved_fraction")
        print(f"\nresolved fraction, flux ratio {ratio:g} (columns: separation in 1x FWHM; 0: a lone source "
              f"found as two)\n{wide.round(2)}")
    print("\npoint sources of the", args.split, "split\n", pd.DataFrame(scores).round(3).to_string(index=False))
    print("\nvalidation (last epoch)\n", pd.DataFrame(validation).groupby("model").tail(1)
          [["model", "step", "val_psnr", "val_poisson_deviance"]].to_string(index=False))


if __name__ == "__main__":
    main()
