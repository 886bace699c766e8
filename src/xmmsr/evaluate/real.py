"""Models on real pn data, scored against independent real counts beside the classical baselines.

Two ways to get independent counts. ``score_thinned``: one deep image is thinned binomially into an
input of the model's exposure and the independent remainder (:mod:`xmmsr.thinning`); every method
predicts from the input and is scored against the remainder, with the real per-pixel exposure of both.
``score_pair``: a short exposure against an independent longer one of the same target (DN).

How to make a pair. From one long observation, split the good time into two disjoint parts with SAS
``tabgtigen`` (or ``evselect`` with a TIME expression), e.g. the first 20 ks and the rest, and bin each
part with ``evselect`` (``xcolumn=DETX ycolumn=DETY ximagebinsize=80 yimagebinsize=80``, 0.5-2 keV,
``PATTERN<=4 && FLAG==0``), writing EXPOSURE (the summed good time) in each header; or two separate
observations of the target with the same pointing and roll. With our own tools: filter the event list
by TIME into two files and run ``xmmsr bin`` on each. The two images then hold independent events.

Scores are computed over the area both images cover (``coverage_mask``), less the chip gaps and dead
pixels of the CCD layout (:func:`~xmmsr.instrument.exposure.layout_acceptance`), with the long image's counts
as the (noisy) reference; predictions are rescaled from the model's target exposure to the long one.

Invented sources on real images (:func:`remainder_support`): no truth says which of a prediction's point
sources are real, but the remainder of a thinning is independent of the input every method saw, so each
source is tested against the remainder's counts where it was found. A source made from nothing leaves
the remainder no excess about half the time; a real one that the remainder is deep enough to show
seldom does. ``thinned_scores`` counts each method's sources, those the remainder does not confirm and
an upper estimate of those made from nothing (``bench/remainder_support.py`` checks it on simulations,
where the truth is known).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy import special

from .. import detection, metrics
from ..errors import InputError
from ..instrument.exposure import image_exposure, layout_acceptance
from ..instrument.model import PnInstrument
from ..instrument.simulator import out_of_time_streaks
from ..io import atomic_path
from ..learn.checkpoint import TrainedModel, load_model
from ..learn.gate import aperture_support, poisson_significance
from ..learn.predict import predict_counts, read_count_image
from ..metrics import coverage_mask
from ..thinning import binomial_split
from . import baselines, methods
from .consistency import degradation_kernel, forward_model
from .run import write_csv

THINNED_COLUMNS = ["method", "deviance", "psnr", "psnr_asinh", "ssim_asinh", "flux_ratio", "parameter",
                   "sources", "unconfirmed", "no_excess", "from_nothing",
                   "exposure_input", "exposure_remainder", "exposure_source", "seed", "pixels"]
SUPPORT_SIGMA = 2.0   # a detection whose remainder counts stand out from its surroundings by less is unconfirmed
SUPPORT_COLUMNS = ["x", "y", "flux", "significance", "remainder_counts", "remainder_expected", "predicted_counts",
                   "remainder_sigma", "no_excess", "null_no_excess"]


def score_pair(model_path: str | Path, short_path: str | Path, long_path: str | Path,
               instrument_cfg: dict[str, Any], eval_cfg: dict[str, Any], tuned: Mapping[str, float] | None = None,
               base_dir: str | Path | None = None) -> pd.DataFrame:
    """Metrics of DN and the baselines on one real pair (one row per method); the baselines' parameters
    are ``tuned`` (method -> value, e.g. those chosen on the simulated validation split) or the defaults."""
    model = load_model(model_path)
    if model.task != "dn":
        raise InputError(model_path, "task", f"is a {model.task} model; real pairs score the DN model",
                         "give models/dn/model.pt")
    short, short_header, t_short = read_count_image(short_path)
    long, long_header, t_long = read_count_image(long_path)
    if short.shape != long.shape:
        raise InputError(long_path, "NAXIS1/NAXIS2", f"shape {long.shape} differs from the short image's {short.shape}",
                         "bin both images on the same grid (same DETX/DETY ranges and bin size)")
    if t_long <= t_short:
        raise InputError(long_path, "EXPOSURE", f"{t_long:g} s is not longer than the short image's {t_short:g} s",
                         "give the longer exposure as --long")
    instrument = PnInstrument.from_config(instrument_cfg, base_dir=base_dir)
    # the area both images cover, without the chip gaps and dead pixels of their CCD layout
    mask = coverage_mask(short, long)
    for image, header, path in ((short, short_header, short_path), (long, long_header, long_path)):
        acceptance = layout_acceptance(header, image.shape, instrument.geometry, path)
        if acceptance is not None:
            mask &= acceptance > 0
    psf = baselines.psf_kernel(instrument, 1)
    args = (short, t_short, t_long, 1)
    settings = methods.with_values(methods.Settings(1.0, psf, None, eval_cfg["rl_iterations"]), tuned)
    preds = methods.predict_baselines("dn", *args, settings, footprint=mask)
    preds["model"] = (predict_counts(model, short, t_short, footprint=mask).astype(np.float64)
                      * t_long / model.target_exposure_s)
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
                        eval_cfg: dict[str, Any], output: str | Path, tuned: Mapping[str, float] | None = None,
                        base_dir: str | Path | None = None) -> pd.DataFrame:
    """Score every configured pair; write one CSV (atomically) with a row per pair and method."""
    tables = []
    for pair in pairs:
        table = score_pair(model_path, pair["short"], pair["long"], instrument_cfg, eval_cfg, tuned, base_dir)
        table.insert(0, "pair", pair["name"])
        tables.append(table)
    result = pd.concat(tables, ignore_index=True)
    write_csv(result, output)
    return result


def remainder_support(prediction: np.ndarray, remainder: np.ndarray, remainder_seconds: np.ndarray,
                      prediction_exposure_s: float, mask: np.ndarray, instrument: PnInstrument,
                      nsigma: float) -> pd.DataFrame:
    """The point sources of a prediction, each tested against independent counts of the same sky.

    ``prediction``: expected counts per 1x pixel at ``prediction_exposure_s`` with the nominal exposure
    everywhere (every method's, SR forward-modelled to 1x); ``remainder``: independent counts (the
    remainder of a thinning, or a second observation), ``remainder_seconds`` their exposure per pixel;
    ``mask``: the pixels to use. Sources are found as the evaluation finds them
    (:func:`xmmsr.detection.detect_point_sources` at ``nsigma``, the significance at the prediction's
    exposure), with the out-of-time streaks of the prediction as the known background and the
    prediction's surroundings as the local level (a real image has no known background map). Each
    source's support (:func:`xmmsr.learn.gate.aperture_support`, the source gate's test): the remainder's
    counts in the detection aperture (``remainder_counts``) against what the prediction's surroundings
    without the source give there at the remainder's exposure (``remainder_expected``), as a one-sided
    Poisson significance (``remainder_sigma``); ``predicted_counts``, what the prediction itself gives
    there. ``no_excess``: the remainder holds no more counts than the surroundings give, which a source
    made from nothing does with probability ``null_no_excess`` (about one half) and a true source
    that the remainder is deep enough to show seldom does. One row per source (:data:`SUPPORT_COLUMNS`)."""
    fwhm = detection.psf_fwhm_px(instrument, 1)
    pred = np.where(mask, np.asarray(prediction, dtype=np.float64), 0.0)
    streak = out_of_time_streaks(pred, instrument, 1)
    found = detection.detect_point_sources(pred, mask, streak, fwhm, nsigma)
    seconds = np.broadcast_to(np.asarray(remainder_seconds, dtype=np.float64), pred.shape)
    counts = np.where(mask, np.asarray(remainder, dtype=np.float64), 0.0)
    support, _ = aperture_support(pred, streak, mask, found, fwhm, counts, seconds, float(prediction_exposure_s),
                                  streak * seconds / float(prediction_exposure_s), 1,
                                  detection.APERTURE_FWHM * fwhm, mask)
    n, b = support["counts"].to_numpy(), support["expected"].to_numpy()
    table = found[["x", "y", "flux", "significance"]].assign(
        remainder_counts=n, remainder_expected=b, predicted_counts=support["predicted"].to_numpy(),
        remainder_sigma=poisson_significance(n, b), no_excess=n <= b,
        # P(N <= b) for N ~ Poisson(b): P(N <= floor(b)) = Q(floor(b) + 1, b)
        null_no_excess=special.gammaincc(np.floor(b) + 1.0, np.maximum(b, 1e-12)))
    return table[SUPPORT_COLUMNS]


def support_summary(support: pd.DataFrame) -> dict[str, float]:
    """A method's sources on one image and how the remainder supports them: ``sources``; ``unconfirmed``,
    those below ``SUPPORT_SIGMA`` in the remainder; ``no_excess``; and ``from_nothing``, the sources
    without excess each weighted by 1 / ``null_no_excess``: an estimate of the sources made from nothing
    that true sources too faint for the remainder can only raise (an upper estimate)."""
    none = support["no_excess"].to_numpy(dtype=bool)
    return {"sources": int(len(support)), "unconfirmed": int(np.sum(support["remainder_sigma"] < SUPPORT_SIGMA)),
            "no_excess": int(none.sum()),
            "from_nothing": float(np.sum(1.0 / np.maximum(support["null_no_excess"].to_numpy()[none], 1e-12)))}


@dataclass(frozen=True)
class ThinnedPredictions:
    """Every method's prediction of the remainder of a thinned deep image, and what scores them."""

    remainder_mean: dict[str, np.ndarray]   # method -> expected remainder counts per 1x pixel
    support: dict[str, pd.DataFrame]         # method -> its point sources tested on the remainder (remainder_support)
    remainder: np.ndarray                    # the remainder's counts
    mask: np.ndarray                         # scored pixels
    parameters: dict[str, float]             # baseline -> its tuned parameter
    exposure_input: float
    exposure_remainder: float
    exposure_source: str
    asinh_scale: float


def thinned_predictions(models: dict[str, TrainedModel], image_path: str | Path, input_exposure_s: float, seed: int,
                        instrument: PnInstrument, eval_cfg: dict[str, Any], exposure_map: str | Path | None = None,
                        fixed: Mapping[str, float] | None = None) -> ThinnedPredictions:
    """Thin a deep real image once to an input of ``input_exposure_s`` and predict the independent remainder
    with every baseline and every model of ``models`` (name -> model; see :func:`score_thinned`). The
    baselines and the asinh scale use the first model's target exposure."""
    deep, header, t_deep = read_count_image(image_path)
    exposure = image_exposure(header, deep.shape, t_deep, exposure_map, instrument.geometry, image_path)
    fraction = float(input_exposure_s) / exposure.reference_s
    if not 0.0 < fraction < 1.0:
        raise InputError(image_path, "EXPOSURE", f"{exposure.reference_s:g} s is not longer than the input exposure "
                         f"{input_exposure_s:g} s", "give a deeper image or a shorter --input-exposure")
    try:
        counts_in, remainder = binomial_split(deep, fraction, np.random.default_rng(seed))
    except ValueError as exc:
        raise InputError(image_path, "pixel values", str(exc), "give a count image (events per pixel)") from None
    t_in, t_rest = fraction * exposure.reference_s, (1.0 - fraction) * exposure.reference_s
    relative = exposure.seconds / exposure.reference_s       # per-pixel exposure relative to the nominal one
    mask = coverage_mask(deep, deep) & (relative > 0.01)
    # exposure-corrected input: the counts it would have with the nominal exposure everywhere
    corrected = np.where(mask, counts_in / np.maximum(relative, 1e-12), 0.0)
    t_out = float(next(iter(models.values())).target_exposure_s)
    args = (corrected, t_in, t_out, 1)
    to_remainder = relative * (t_rest / t_out)               # expected remainder counts per predicted count
    # each baseline's parameter: the candidate with the lowest deviance against the remainder (an oracle
    # choice, which favours the baselines), unless ``fixed``
    candidates = methods.candidates_from_config(eval_cfg)
    for name, value in (fixed or {}).items():
        candidates[methods.REGISTRY[name].tuned] = [float(value)]
    settings = methods.tune("dn", methods.Settings(1.0, baselines.psf_kernel(instrument, 1), None,
                                                   eval_cfg["rl_iterations"]),
                            candidates, [((*args, mask), None)], lambda pred, _: metrics.poisson_deviance(
                                pred * to_remainder, remainder, mask))
    # every method predicts at 1x here (SR is forward-modelled below): the DN baselines
    preds = methods.predict_baselines("dn", *args, settings, footprint=mask)
    means = {m: p * to_remainder for m, p in preds.items()}
    remainder_seconds = relative * t_rest
    nsigma = float(eval_cfg["detection_nsigma"])
    support = {m: remainder_support(p, remainder, remainder_seconds, t_out, mask, instrument, nsigma)
               for m, p in preds.items()}
    seconds = np.where(mask, exposure.seconds * fraction, t_in)
    for name, model in models.items():
        pred = predict_counts(model, counts_in.astype(np.float64), seconds, footprint=mask).astype(np.float64)
        if model.upscale != 1:   # the 2x sky under the gaps, which the prediction leaves 0, from its surroundings
            pred = forward_model(pred, model.upscale, degradation_kernel(instrument, model.upscale), 1.0, 1.0,
                                 footprint=np.kron(mask, np.ones((model.upscale, model.upscale), dtype=bool)))
        means[name] = pred * relative * (t_rest / float(model.target_exposure_s))
        support[name] = remainder_support(pred, remainder, remainder_seconds, float(model.target_exposure_s), mask,
                                          instrument, nsigma)
    return ThinnedPredictions(means, support, remainder.astype(np.float64), mask, methods.tuned_values("dn", settings), t_in,
                              t_rest, exposure.source,
                              eval_cfg["asinh_scale_counts"] * t_rest / t_out)


def score_thinned(model_path: str | Path, image_path: str | Path, input_exposure_s: float, seed: int,
                  instrument_cfg: dict[str, Any], eval_cfg: dict[str, Any], exposure_map: str | Path | None = None,
                  fixed: Mapping[str, float] | None = None, base_dir: str | Path | None = None) -> pd.DataFrame:
    """Thin a deep real image to an input of ``input_exposure_s`` and score every method against the
    independent remainder (one row per method, :data:`THINNED_COLUMNS`).

    Every method predicts expected counts per 1x pixel at a uniform exposure from the exposure-corrected
    input; the SR model's 2x prediction is first forward-modelled to 1x (the 2x->1x PSF kernel and 2x2
    binning of the consistency check). Predictions are turned into the remainder's expected counts with
    its per-pixel exposure. ``deviance``: mean Poisson deviance per pixel against the remainder's counts;
    ``psnr``: linear counts, data range of the remainder; ``flux_ratio``: predicted / remainder counts.
    Each baseline's parameter (the Gaussian's width, ...) is the candidate with the lowest deviance (an
    oracle choice, which favours the baselines) unless ``fixed`` (method -> value) gives it; the
    ``parameter`` column states it. Scores cover the pixels with exposure and counts in
    the deep image's footprint."""
    model = load_model(model_path)
    instrument = PnInstrument.from_config(instrument_cfg, base_dir=base_dir)
    t = thinned_predictions({"model": model}, image_path, input_exposure_s, seed, instrument, eval_cfg, exposure_map,
                            fixed)
    return thinned_scores(t, seed)


def thinned_scores(t: ThinnedPredictions, seed: int) -> pd.DataFrame:
    """One row per method of ``t`` (:data:`THINNED_COLUMNS`): see :func:`score_thinned`."""
    mask, k = t.mask, t.remainder
    rng = metrics.data_range(k, mask)
    ka = metrics.stretch(k, "asinh", t.asinh_scale)
    rows = []
    for method, mu in t.remainder_mean.items():
        ma = metrics.stretch(mu, "asinh", t.asinh_scale)
        rows.append({"method": method, "deviance": metrics.poisson_deviance(mu, k, mask),
                     "psnr": metrics.masked_psnr(mu, k, mask, rng),
                     "psnr_asinh": metrics.masked_psnr(ma, ka, mask, metrics.data_range(ka, mask)),
                     "ssim_asinh": metrics.masked_ssim(ma, ka, mask, metrics.data_range(ka, mask)),
                     "flux_ratio": float(mu[mask].sum() / max(k[mask].sum(), 1e-12)),
                     "parameter": methods.describe_parameter(method, t.parameters.get(method, np.nan)),
                     **support_summary(t.support[method]),
                     "exposure_input": t.exposure_input, "exposure_remainder": t.exposure_remainder,
                     "exposure_source": t.exposure_source, "seed": seed, "pixels": int(mask.sum())})
    return pd.DataFrame(rows, columns=THINNED_COLUMNS)


def score_real_images(models: dict[str, str | Path], images: list[Any], real_cfg: dict[str, Any],
                      instrument_cfg: dict[str, Any], eval_cfg: dict[str, Any], seed: int, output: str | Path,
                      base_dir: str | Path | None = None, gallery: str | Path | None = None) -> pd.DataFrame:
    """Every model of ``models`` (name -> model file) and the baselines on each real image, thinned as the
    fine-tuning thins them (``real.input_exposure_ks``, ``real.max_input_fraction``), with one seed per
    image shared by all methods. One CSV row per image and method (:data:`THINNED_COLUMNS` plus
    ``image`` and ``split``), written atomically. ``gallery``: also an ``.npz`` of every method's
    prediction of the remainder, the remainder and the scored mask per image (keys ``{image}/{method}``,
    ``{image}/remainder``, ``{image}/mask``, float32), for the report."""
    from ..thinning import ThinningPlan

    plan = ThinningPlan(real_cfg["input_exposure_ks"] * 1000.0, real_cfg["max_input_fraction"])
    instrument = PnInstrument.from_config(instrument_cfg, base_dir=base_dir)
    loaded = {name: load_model(path) for name, path in models.items()}
    tables, arrays = [], {}
    for i, image in enumerate(images):
        counts, header, t_deep = read_count_image(image.path)
        reference = image_exposure(header, counts.shape, t_deep, image.exposure_map, instrument.geometry,
                                   image.path).reference_s
        input_s = plan.fraction(reference) * reference
        t = thinned_predictions(loaded, image.path, input_s, seed + i, instrument, eval_cfg, image.exposure_map)
        for method, mean in t.remainder_mean.items():
            arrays[f"{image.name}/{method}"] = mean.astype(np.float32)
        arrays[f"{image.name}/remainder"] = t.remainder.astype(np.float32)
        arrays[f"{image.name}/mask"] = t.mask.astype(np.float32)
        table = thinned_scores(t, seed + i)
        table.insert(0, "split", image.split)
        table.insert(0, "image", image.name)
        tables.append(table)
    result = pd.concat(tables, ignore_index=True)
    if gallery is not None:
        with atomic_path(gallery) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    write_csv(result, output)
    return result
