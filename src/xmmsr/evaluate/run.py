"""Score a trained model and the classical baselines on the same held-out images.

For every image of the evaluation split, each method gives expected counts per output pixel at the
target exposure:

* ``input``: the 20 ks counts scaled to the target exposure (nearest-upsampled for SR)
* ``bicubic`` (SR only): flux-conserving bicubic upsampling of the scaled input
* ``gaussian``: Gaussian smoothing with the width that is best on the validation split
* ``richardson_lucy``: Richardson-Lucy deconvolution with the known on-axis PSF (SR: the 1x PSF on
  the 2x grid, then re-convolved with the 2x PSF, since the 2x target still has that blur)
* ``model``: the trained network
* ``truth``: the noise-free expected image itself, a reference for the point-source and consistency
  numbers (its image metrics against the noisy target show the floor set by Poisson noise)

Outputs (one directory per task): ``per_image.csv`` (every metric of every method on every image),
``summary.csv`` (mean, median, 16/84 percentiles per method, overall, per source kind and per
brightness tercile), ``summary.json`` (the overall table and provenance) and ``gallery.npz`` (a few
images of every method, and consistency maps, for the report).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__, detection, metrics
from ..instrument.geometry import FrameLayout
from ..instrument.model import PnInstrument
from ..instrument.simulator import offaxis_direction, out_of_time_streaks
from ..io import atomic_path
from ..learn.checkpoint import TrainedModel, load_model
from ..learn.data import PairDataset, open_dataset
from ..learn.gate import SourceGate, gate_sources
from ..learn.calibration import UncertaintyCalibration, fit_calibration
from ..learn.predict import conserve_total, predict_counts, predict_uncertainty
from ..progress import progress
from . import baselines, consistency, methods, points
from .localisation import PositionErrors

KIND_LABELS = {"extended": "extended", "agn": "AGN-dominated", "background": "background-dominated"}
GROUPS = ("all", "kind", "brightness")


def _frames(ds: PairDataset) -> Iterator[dict[str, Any]]:
    """The items of a full-frame dataset as float64 numpy arrays (progress in the job's log)."""
    for i in progress(range(len(ds)), "evaluate", "image"):
        item = ds[i]
        yield {"index": int(item["index"]), "input": item["input"][0].numpy().astype(np.float64),
               "target": item["target"][0].numpy().astype(np.float64),
               "expected": item["expected"][0].numpy().astype(np.float64),
               "mask_input": item["mask_input"][0].numpy() > 0, "mask_target": item["mask_target"][0].numpy() > 0,
               "exposure_input": float(item["exposure_input"]), "exposure_target": float(item["exposure_target"])}


def frames_with_background(ds: PairDataset, instrument: PnInstrument) -> Iterator[tuple[dict[str, Any], np.ndarray,
                                                                                        np.ndarray]]:
    """Each frame of ``ds`` (:func:`_frames`) with its field's background and the out-of-time streaks of its
    sources, both in counts at the frame's target exposure: what the point-source finder takes as the
    known background (their sum) in the evaluation and its benchmarks. Each frame also gets
    ``expected_input``, the noise-free 1x image at the input exposure (where the input's information on
    a source's position is read, :class:`FrameTruth`; on the 1x grid the frame's own expected image,
    rescaled, otherwise read from the set), and ``offaxis`` and ``azimuth``, its pixels' direction from the
    optical axis (:func:`frame_direction`, the same arrays for every frame)."""
    s = ds.upscale
    offaxis, azimuth = frame_direction(instrument, s, ds.masks[s].shape)
    with open_dataset(ds.path) as h5:   # the background plane of each frame (fields differ)
        background, expected_1x = h5[f"background_rate_{s}x"], h5["expected_rate_1x"]
        for frame in _frames(ds):
            bkg = np.asarray(background[frame["index"]], dtype=np.float64) * frame["exposure_target"]
            frame["expected_input"] = (frame["expected"] * (frame["exposure_input"] / frame["exposure_target"])
                                       if s == 1 else
                                       np.asarray(expected_1x[frame["index"]], dtype=np.float64) * frame["exposure_input"])
            frame["offaxis"], frame["azimuth"] = offaxis, azimuth
            yield frame, bkg, out_of_time_streaks(frame["expected"] - bkg, instrument, s)


@dataclass(frozen=True)
class FrameTruth:
    """The point sources of one frame's noise-free truth, as every prediction of it is scored against:
    the detection's background (the field's and the out-of-time streaks), the truth's sources away from
    the mask's edge and anywhere in it, and each source's match radius (:func:`points.match_radii`: one
    FWHM, on the 2x grid widened to the source's error circle in the input, at most the 1x FWHM, the
    radius of the 1x grid: a finer grid is never held to less than the input's own precision, nor
    credited with more than the 1x grid)."""

    background: np.ndarray
    sources: pd.DataFrame
    anywhere: pd.DataFrame
    match_radius_px: np.ndarray
    position_error_px: np.ndarray    # each source's Cramér-Rao position error in the input (NaN on the 1x grid)

    @classmethod
    def detect(cls, frame: dict[str, Any], bkg: np.ndarray, streaks: np.ndarray, instrument: PnInstrument,
               upscale: int, nsigma: float, errors: PositionErrors) -> FrameTruth:
        fwhm_px = detection.psf_fwhm_px(instrument, upscale)
        detect_bkg = bkg + streaks
        sources = detection.detect_point_sources(frame["expected"], frame["mask_target"], detect_bkg, fwhm_px, nsigma)
        anywhere = detection.detect_point_sources(frame["expected"], frame["mask_target"], detect_bkg, fwhm_px, nsigma,
                                                  edge_fwhm=0.0)
        widest_px = points.MATCH_FWHM * detection.psf_fwhm_px(instrument, 1) * upscale   # the 1x match radius
        if widest_px <= points.MATCH_FWHM * fwhm_px:    # the 1x grid: one FWHM for every source
            return cls(detect_bkg, sources, anywhere, np.full(len(sources), points.MATCH_FWHM * fwhm_px),
                       np.full(len(sources), np.nan))
        sigma = errors.for_sources(sources, frame["expected_input"], frame["mask_input"], frame["offaxis"],
                                   frame["azimuth"], upscale, fwhm_px, frame["exposure_input"] / frame["exposure_target"])
        return cls(detect_bkg, sources, anywhere, points.match_radii(sigma, fwhm_px, widest_px), sigma)

    def score(self, pred: np.ndarray, frame: dict[str, Any], fwhm_px: float, pixel_arcsec: float,
              nsigma: float) -> tuple[dict[str, float], pd.DataFrame]:
        """:func:`points.score_and_list` of ``pred`` against this truth (sources listed with their off-axis
        angle)."""
        return points.score_and_list(self.sources, pred, frame["mask_target"], self.background, fwhm_px, pixel_arcsec,
                                     nsigma, frame["offaxis"], self.anywhere, self.match_radius_px)


def masked_mse(pred: np.ndarray, target: tuple[np.ndarray, np.ndarray]) -> float:
    """Mean squared error of ``pred`` against (expected, mask)'s expected counts over the mask."""
    expected, mask = target
    return float(np.mean(np.square(pred[mask] - expected[mask])))


def predictions(model: TrainedModel, frame: dict[str, Any], settings: methods.Settings,
                gate: SourceGate | None = None) -> dict[str, np.ndarray]:
    """Every method's expected counts per output pixel at the target exposure for one frame: the
    registered baselines of the model's task, the model, the model with its source gate (``gate``) and
    the truth. The model and its gated version are what :func:`predict_counts` gives without and with
    ``gate`` (the gate acts before the flux conservation), from one run of the network."""
    out = methods.predict_baselines(model.task, frame["input"], frame["exposure_input"], frame["exposure_target"],
                                    model.upscale, settings, footprint=frame["mask_input"])
    network = predict_counts(model, frame["input"], frame["exposure_input"], footprint=frame["mask_input"],
                             conserve_flux=False)
    if gate is not None:
        gated = gate_sources(network, frame["input"], frame["exposure_input"], model.target_exposure_s,
                             model.upscale, gate, frame["mask_input"])[0]
        out["model_gated"] = conserve_total(gated, frame["input"], frame["exposure_input"],
                                            model.target_exposure_s).astype(np.float64)
    out["model"] = conserve_total(network, frame["input"], frame["exposure_input"],
                                  model.target_exposure_s).astype(np.float64)
    out["truth"] = frame["expected"]
    return out


def fit_uncertainty_calibration(model: TrainedModel, frames: PairDataset, draws: int) -> UncertaintyCalibration:
    """The scale factors of the model's bootstrap uncertainty (:mod:`xmmsr.learn.calibration`) fitted on
    ``frames`` (the validation split: the test split scores the result)."""
    def images() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        for frame in _frames(frames):
            pred = predict_counts(model, frame["input"], frame["exposure_input"], footprint=frame["mask_input"])
            sigma = predict_uncertainty(model, frame["input"], frame["exposure_input"], draws,
                                        seed=int(frame["index"]), prediction=pred, footprint=frame["mask_input"])
            yield pred, sigma, frame["expected"], frame["mask_target"]
    return fit_calibration(images(), split=frames.split)


def evaluate_task(dataset: str | Path, model_path: str | Path, instrument_cfg: dict[str, Any],
                  eval_cfg: dict[str, Any], out_dir: str | Path, base_dir: str | Path | None = None) -> pd.DataFrame:
    """Score the model and the baselines on the evaluation split; write the task's metric files."""
    model = load_model(model_path)
    task, s = model.task, model.upscale
    instrument = PnInstrument.from_config(instrument_cfg, base_dir=base_dir)
    pixel_arcsec = instrument.geometry.image_grid(s).pixel_arcsec
    psf_out = baselines.psf_kernel(instrument, s)
    psf_1x_out = baselines.psf_kernel(instrument, 1, grid_resolution=s)
    fwhm_px = detection.psf_fwhm_px(instrument, s)
    near_px = 2.0 * detection.psf_fwhm_px(instrument, 1) * s   # false detections near a true source: 2 x 1x FWHM
    kernel = consistency.degradation_kernel(instrument, s)
    gate = (SourceGate(float(eval_cfg["source_gate_sigma"]), detection.psf_fwhm_px(instrument, 1), fwhm_px, instrument)
            if eval_cfg["source_gate_sigma"] > 0 else None)
    with open_dataset(dataset) as h5:
        meta = h5["meta"][:]
        dataset_info = {"config_hash": str(h5.attrs["config_hash"]), "software": str(h5.attrs["software"]),
                        "n_samples": int(len(meta)),
                        **{f"n_{split}": int(len(h5[f"splits/{split}"])) for split in ("train", "val", "test")}}

    val = PairDataset(dataset, task, "val", max_items=eval_cfg["max_images"])
    settings = methods.tune(task, methods.Settings(1.0, psf_1x_out, psf_out, eval_cfg["rl_iterations"]),
                            methods.candidates_from_config(eval_cfg),
                            (((f["input"], f["exposure_input"], f["exposure_target"], s, f["mask_input"]),
                              (f["expected"], f["mask_target"]))
                             for f in _frames(val) if f["mask_target"].any()), masked_mse)
    calibration = (fit_uncertainty_calibration(model, val, eval_cfg["uncertainty_draws"])
                   if eval_cfg["uncertainty_draws"] >= 2 else None)
    test = PairDataset(dataset, task, eval_cfg["split"], max_items=eval_cfg["max_images"])
    if len(test) == 0:
        raise ValueError(f"{dataset}: the {eval_cfg['split']} split is empty; raise pack.split.{eval_cfg['split']}")

    rows: list[dict[str, Any]] = []
    source_rows: list[pd.DataFrame] = []
    gallery: dict[str, np.ndarray] = {}
    errors = PositionErrors(instrument)
    for n, (frame, bkg, streaks) in enumerate(frames_with_background(test, instrument)):
        m = meta[frame["index"]]
        source_counts = float(((frame["expected"] - bkg) * frame["mask_target"]).sum())
        info = {"task": task, "sample": frame["index"], "kind": KIND_LABELS[m["kind"].decode()],
                "source_id": int(m["source_id"]), "model_kind": m["model"].decode(),
                "source_counts": source_counts}
        preds = predictions(model, frame, settings, gate)
        coverage = {}
        if eval_cfg["uncertainty_draws"] >= 2:
            sigma = predict_uncertainty(model, frame["input"], frame["exposure_input"], eval_cfg["uncertainty_draws"],
                                        seed=int(frame["index"]), prediction=preds["model"],
                                        footprint=frame["mask_input"])
            calibrated = calibration.apply(preds["model"], sigma)
            coverage = {f"coverage{kind}_{p}": metrics.interval_coverage(preds["model"], spread, frame["expected"],
                                                                         frame["mask_target"], k)
                        for kind, spread in (("", sigma), ("_calibrated", calibrated))
                        for p, k in (("68", 1.0), ("95", 2.0))}
        nsigma = eval_cfg["detection_nsigma"]
        # the detection's background: the field's and the out-of-time streaks of its sources (known
        # detector structure, in the truth and in every prediction; not point sources)
        truth = FrameTruth.detect(frame, bkg, streaks, instrument, s, nsigma, errors)
        extended = points.extended_emission(frame["expected"] - truth.background, fwhm_px)   # why detections are false
        for method, pred in preds.items():
            row = {**info, "method": method}
            row.update(metrics.image_metrics(pred, frame["target"], frame["expected"], frame["mask_target"],
                                             eval_cfg["asinh_scale_counts"]))
            scores, sources = truth.score(pred, frame, fwhm_px, pixel_arcsec, nsigma)
            row.update(scores)
            if method != "truth":
                sources = points.false_causes(sources, near_px, streaks, extended, bkg)
                source_rows.append(sources.assign(sample=info["sample"], kind=info["kind"], method=method))
            if method == "model":
                row.update(coverage)
            summary, residual = consistency.consistency(pred, frame["input"], frame["mask_input"], s, kernel,
                                                        frame["exposure_target"], frame["exposure_input"])
            row.update(summary)
            rows.append(row)
            if n < eval_cfg["gallery"]:
                gallery[f"{n}/{method}"] = pred.astype(np.float32)
                gallery[f"{n}/{method}/consistency"] = residual.astype(np.float32)
        if n < eval_cfg["gallery"]:
            for name in ("input", "target", "mask_target", "mask_input"):
                gallery[f"{n}/{name}_data"] = np.asarray(frame[name], dtype=np.float32)
            gallery[f"{n}/info"] = np.array(json.dumps({**info, "exposure_input": frame["exposure_input"],
                                                        "exposure_target": frame["exposure_target"]}))
    table = pd.DataFrame(rows)
    table["brightness"] = _terciles(table["source_counts"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(table)
    provenance = {"task": task, "software": f"xmmsr {__version__}", "model": str(Path(model_path).name),
                  "model_provenance": model.provenance, "architecture": model.architecture.to_dict(),
                  "normalisation": model.normalisation.to_dict(), "dataset": dataset_info,
                  "split": eval_cfg["split"], "n_images": int(table["sample"].nunique()),
                  "gaussian_sigma_px": settings.gaussian_sigma_px, "tuned_parameters": methods.tuned_values(task, settings),
                  "psf_fwhm_px": float(fwhm_px), "pixel_arcsec": pixel_arcsec,
                  "evaluate": eval_cfg}
    overall = summary[summary["group"] == "all"]
    write_csv(table, out / "per_image.csv")
    sources = (pd.concat(source_rows, ignore_index=True) if source_rows
               else pd.DataFrame(columns=["sample", "kind", "method", *points.SOURCE_COLUMNS]))
    write_csv(sources[["sample", "kind", "method", *points.SOURCE_COLUMNS]], out / "sources.csv")
    write_csv(purity(table, sources, eval_cfg["detection_nsigma"]), out / "purity.csv")
    write_csv(summary, out / "summary.csv")
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps({"provenance": provenance, "overall": overall.to_dict(orient="records")},
                                  indent=1, sort_keys=True, default=float))
    with atomic_path(out / "uncertainty_calibration.json") as tmp:
        tmp.write_text(json.dumps(None if calibration is None else calibration.to_dict(), indent=1, sort_keys=True))
    with atomic_path(out / "gallery.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **gallery)
    return table


def frame_direction(instrument: PnInstrument, s: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Off-axis angle (arcmin) and azimuth (radians from +x, counter-clockwise) of every pixel of a
    dataset frame of ``shape`` at resolution ``s`` (:class:`FrameLayout`: the image grid centred, as
    packing pads it)."""
    layout = FrameLayout.centred(instrument.geometry.image_grid(1), (shape[0] // s, shape[1] // s))
    x, y = layout.pixel_centres(s, shape)
    return offaxis_direction(instrument, x[None, :], y[:, None])


POINT_SOURCE_FIELDS = "without extended sources"


def purity(table: pd.DataFrame, sources: pd.DataFrame, nsigma: float) -> pd.DataFrame:
    """Completeness at equal purity (:func:`points.purity_table`) over all test fields and over the fields
    without an extended source (AGN and blank fields): in bright extended emission the finder's peaks
    of any smoothed image (the baselines' too) fall on substructure that the truth's peaks miss by more
    than the match radius, so those fields set every method's threshold; the point-source fields ask
    the hallucination question alone."""
    parts = [points.purity_table(sources, int(table["sample"].nunique()), nsigma, fields="all")]
    point_fields = table.loc[table["kind"] != KIND_LABELS["extended"], "sample"].unique()
    if point_fields.size:
        parts.append(points.purity_table(sources[sources["sample"].isin(point_fields)], int(point_fields.size),
                                         nsigma, fields=POINT_SOURCE_FIELDS))
    return pd.concat(parts, ignore_index=True)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Statistics of every metric per method: overall, per source kind and per brightness tercile."""
    metric_cols = [c for c in table.columns if c not in ("task", "sample", "kind", "source_id", "model_kind",
                                                         "source_counts", "method", "brightness")
                   and pd.api.types.is_numeric_dtype(table[c])]
    parts = []
    for group in GROUPS:
        by = ["method"] if group == "all" else ["method", group]
        part = metrics.summarise(table, by, metric_cols)
        part.insert(0, "group", group)
        if group != "all":
            part = part.rename(columns={group: "value"})
        else:
            part.insert(1, "value", "all")
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _terciles(counts: pd.Series) -> pd.Series:
    """faint / medium / bright thirds of the source counts (all the same label for < 3 distinct values)."""
    ranks = counts.rank(method="dense")
    n = ranks.max()
    if n < 3:
        return pd.Series(["all"] * len(counts), index=counts.index)
    return pd.cut(ranks, bins=[0, n / 3, 2 * n / 3, n], labels=["faint", "medium", "bright"]).astype(str)


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """A metrics table as CSV, written atomically (6 significant digits)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
