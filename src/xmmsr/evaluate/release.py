"""Released models: the DN and SR models shipped with the package and their model card.

Rule ``release`` copies the trained models (``.pt`` and ``.onnx``) of a run into ``{outdir}/release/``
with a ``MODEL_CARD.md`` written from the run's own outputs: the training history, the test-split
metrics beside every baseline, the point-source (hallucination) figures and the provenance stored in
the model files. ``config/pretrained.yaml`` is the run whose release is shipped in
``resources/models/``; :func:`xmmsr.learn.checkpoint.shipped_model` finds those files for
``xmmsr predict --task``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from ..instrument.psf import describe_psf
from ..io import atomic_path
from ..learn.calibration import ONE_SIGMA, TWO_SIGMA, UncertaintyCalibration
from ..learn.checkpoint import TrainedModel, load_model, save_model
from ..learn.model import count_parameters
from ..learn.predict import check_onnx
from . import methods, points, tables

CARD_NAME = "MODEL_CARD.md"
TASK_TITLES = {"dn": "DN (de-noising): {t_in} → {t_out} on the 1x grid (4\" pixels)",
               "sr": "SR (2x super-resolution): {t_in} at 4\" → {t_out} at 2\""}
# (metric, column label, format)
EPOCH_LINE = re.compile(r"^epoch (\d+) step (\d+):.*?([0-9.]+) samples/s")


@dataclass(frozen=True)
class TaskRun:
    """The outputs of one task of a run that enter a release."""

    task: str
    model: Path
    onnx: Path
    history: Path | None     # the training history (None for a fine-tuned model of another run's model)
    summary_csv: Path
    train_log: Path | None = None
    finetune_history: Path | None = None   # a fine-tuned model: its fine-tuning history ...
    real_scores: Path | None = None        # ... and its scores on the held-out real images (score_real)
    deblend: Path | None = None            # SR: the de-blending table (rule deblend)
    purity: Path | None = None             # completeness at equal purity (evaluate's purity.csv)
    adversarial: tuple[Path, Path] | None = None  # summaries of the pixel-loss model and its adversarial continuation
    calibration: Path | None = None        # the uncertainty calibration fitted by its evaluation (put in the .pt)
    sources: Path | None = None            # every true source and false detection of the evaluation (sources.csv)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _history(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def training_seconds(log: Path | None, batch_size: int, steps_per_epoch: int) -> float | None:
    """Training time from the per-epoch throughput lines of a train log (None when there is no log).

    A resumed run logs only the epochs it ran, so the figure covers the last attempt."""
    if log is None or not Path(log).is_file():
        return None
    seconds = 0.0
    for line in Path(log).read_text().splitlines():
        m = EPOCH_LINE.match(line)
        if m and float(m.group(3)) > 0:
            seconds += steps_per_epoch * batch_size / float(m.group(3))
    return seconds or None


def _software(model_file: Path) -> str:
    import torch

    return str(torch.load(model_file, map_location="cpu", weights_only=True).get("software", ""))


def _table(summary: pd.DataFrame, group: str, value: str, metrics: Sequence[str]) -> list[str]:
    """A Markdown table of the medians of ``metrics`` per method (methods with no value left out)."""
    table = tables.median_table(summary, metrics, group, value)
    lines = ["| method | " + " | ".join(tables.METRICS[m].label for m in table.columns) + " |",
             "|---" * (len(table.columns) + 1) + "|"]
    for method in table.index:
        cells = ["–" if pd.isna(v) else tables.METRICS[m].fmt.format(v) for m, v in table.loc[method].items()]
        if all(c == "–" for c in cells):
            continue
        name = methods.label(method)
        lines.append(f"| {f'**{name}**' if methods.role(method) == 'model' else name} | " + " | ".join(cells) + " |")
    return lines


def _ks(seconds: float) -> str:
    return f"{seconds / 1000:g} ks"


def _max_sigma_b(cfg: dict) -> str:
    sigma_b = cfg.get("sources", {}).get("extended", {}).get("sigma_b")
    return f"{sigma_b[1]:g}" if sigma_b else "an unrecorded multiple of"


def _scale_text(models: dict, counts: dict[str, int]) -> str:
    """How large the models and the training set are, and where they were trained."""
    sizes = ", ".join(f"{task.upper()} {count_parameters(m.generator):,}" for task, m in models.items())
    fields = sum(v for k, v in counts.items() if k.endswith(" sources"))
    devices = sorted({str(m.provenance.get("accelerator")) for m in models.values()})
    return (f"Models of {sizes} parameters trained on {fields} fields ({counts.get('train samples', 0)} in the "
            f"training split) on {', '.join(devices)}.")


def _simulated_instrument(cfg: dict) -> str:
    """The PSF and effective area the training set was simulated with, from its recorded config."""
    cfg = cfg.get("instrument", {})
    parts = []
    if "psf" in cfg and "model" in cfg["psf"]:
        parts.append(describe_psf(cfg["psf"]))
    else:
        parts.append("a round King PSF")
    if cfg.get("effective_area_file"):
        parts.append(f"effective area from `{Path(cfg['effective_area_file']).name}`")
    return "; ".join(parts)


def _dataset_counts(dataset: Path) -> dict[str, int]:
    with h5py.File(dataset, "r") as h5:
        counts = {f"{split} samples": int(len(h5[f"splits/{split}"])) for split in ("train", "val", "test")}
        kinds = [k.decode() if isinstance(k, bytes) else str(k) for k in h5["meta"]["kind"][:]]
    for kind in sorted(set(kinds)):
        counts[f"{kind} sources"] = kinds.count(kind)
    return counts


def _measured_limits(task: str, summary: pd.DataFrame) -> list[str]:
    """The weaknesses this run measured, in words (flux bias, lost point sources, hallucinations)."""
    lines = [f"Measured limits of the {task.upper()} model on this test split:", ""]
    flux = tables.median(summary, "model", "flux_ratio")
    if abs(flux - 1.0) > 0.05:
        lines.append(f"- The total flux is {'under' if flux < 1 else 'over'}estimated: median flux ratio "
                     f"{flux:.2f} (truth 1). Do not use the output for flux measurements.")
    model_c, input_c = tables.median(summary, "model", "completeness"), tables.median(summary, "input", "completeness")
    if model_c < input_c:
        lines.append(f"- Faint point sources are smoothed away: completeness {model_c:.2f}, against "
                     f"{input_c:.2f} for the input itself at the same detection threshold.")
    false = tables.median(summary, "model", "n_false")
    scored = summary[(summary["group"] == "all") & (summary["metric"] == "n_false")]["method"]
    baselines = {m: tables.median(summary, m, "n_false") for m in methods.ordered(scored)
                 if methods.role(m) == "baseline"}
    fewer = [m for m, v in baselines.items() if false < v]
    if len(fewer) == len(baselines):
        verdict = "fewer than every baseline" + (", but not zero" if false > 0 else "")
    elif not fewer:
        verdict = "no fewer than any baseline"
    else:
        verdict = f"fewer than {', '.join(fewer)}; not fewer than {', '.join(m for m in baselines if m not in fewer)}"
    lines.append(f"- {false:.1f} detections per field that are not in the truth (the input: "
                 f"{tables.median(summary, 'input', 'n_false'):.0f}; Gaussian smoothing: "
                 f"{tables.median(summary, 'gaussian', 'n_false'):.0f}): {verdict}.")
    gated_false, gated_c = (tables.median(summary, "model_gated", m) for m in ("n_false", "completeness"))
    if np.isfinite(gated_false):
        lines.append(f"- With the source gate (`xmmsr predict --source-gate`: a predicted source kept only where "
                     f"the input's counts show it): {gated_false:.1f} detections per field not in the truth, "
                     f"completeness {gated_c:.2f} (without it {false:.1f} and {model_c:.2f}).")
    return lines


def _dataset_config(dataset: Path) -> tuple[dict, float, float]:
    """(the config sections recorded with the training set, input and target exposures in s)."""
    with h5py.File(dataset, "r") as h5:
        return (json.loads(h5.attrs["config"]), float(h5.attrs["input_exposure_s"]),
                float(h5.attrs["target_exposure_s"]))


def _training_data_text(cfg: dict, t_in: float, t_out: float) -> str:
    """What the training set holds, from its recorded config and exposures (s)."""
    sources = cfg.get("sources", {})
    origin = sources.get("kind", "synthetic")
    extended = {"synthetic": "synthetic extended sources (beta-model clusters with cool cores, cavities, shocks and "
                             "clumps; supernova-remnant shells; filaments)",
                "tng": "IllustrisTNG gas cutouts projected in X-rays",
                "mixed": "synthetic extended sources and IllustrisTNG gas cutouts",
                "images": "real-sky images (sources.images)"}.get(origin, origin)
    sigma_b = sources.get("extended", {}).get("sigma_b")
    brightness = f", central brightness {sigma_b[0]:g}–{sigma_b[1]:g}× the background" if sigma_b else ""
    field = sources.get("field_background")
    background = ("particle, cosmic X-ray, Galactic and soft-proton background with per-field scales"
                  if field else "particle and cosmic X-ray background")
    return (f"Simulated with the built-in EPIC-pn simulator (0.5–2 keV, pattern ≤ 4): {extended}{brightness}, "
            f"with their field AGN; AGN-only fields from the Moretti et al. (2003) logN–logS; blank fields; "
            f"{background}. Inputs ({t_in / 1000:g} ks) and targets ({t_out / 1000:g} ks) are independent "
            f"realizations.")


def model_card(runs: Sequence[TaskRun], models: dict[str, TrainedModel], dataset: Path, config_name: str,
               release_dir: Path) -> str:
    """The model card (Markdown) of the released ``models`` (by task, as written to ``release_dir``), from the
    run's outputs."""
    counts = _dataset_counts(dataset)
    recorded, exposure_in, exposure_out = _dataset_config(dataset)
    rule = "release_finetuned" if any(run.finetune_history is not None for run in runs) else "release"
    out = ["# xmmsr pretrained models: model card", "",
           f"Written by the `{rule}` rule of the xmmsr pipeline from the outputs of the run that trained the "
           f"models (`{config_name}`); every figure below comes from that run's files. Metrics are medians "
           "over the simulated **test split** (sources never seen in training); the 16th–84th percentiles are "
           "in the run's `metrics/{task}/summary.csv`.", "",
           "## Files", "", "| file | task | parameters | size | sha256 |", "|---|---|---|---|---|"]
    for run in runs:
        for suffix in ("pt", "onnx"):
            f = release_dir / f"{run.task}.{suffix}"
            params = count_parameters(models[run.task].generator)
            out.append(f"| `{f.name}` | {run.task} | {params:,} | {f.stat().st_size / 1e6:.2f} MB | "
                       f"`{_sha256(f)[:16]}…` |")
    out += ["", "`xmmsr predict --task dn|sr --input IMAGE.fits --output OUT.fits` uses them when `--model` is "
            "not given; `torch.load(path, weights_only=True)` reads the `.pt` files (a plain dict: weights, "
            "architecture, normalisation, task, exposures, training config, provenance, uncertainty calibration).", "",
            "## Training data", "",
            _training_data_text(recorded, exposure_in, exposure_out), "",
            "| " + " | ".join(counts) + " |", "|---" * len(counts) + "|",
            "| " + " | ".join(str(v) for v in counts.values()) + " |", ""]
    for run in runs:
        model = models[run.task]
        train = model.train_config["train"]
        prov = model.provenance
        history = _history(run.history) if run.history is not None else []
        seconds = training_seconds(run.train_log, int(train["batch_size"]), int(train["steps_per_epoch"]))
        arch = model.architecture.to_dict()
        t_in, t_out = _ks(model.input_exposure_s), _ks(model.target_exposure_s)
        out += [f"## {TASK_TITLES[run.task].format(t_in=t_in, t_out=t_out)}", "",
                f"- Architecture: RRDB generator, {arch['features']} features, growth {arch['growth']}, "
                f"{arch['blocks']} RRDB × {arch['dense_blocks']} dense blocks, residual scale "
                f"{arch['residual_scale']}; {count_parameters(model.generator):,} parameters.",
                f"- Normalisation: `{model.normalisation.to_dict()}` (stored in the file; inference uses it).",
                f"- Exposures: {model.input_exposure_s:g} s → {model.target_exposure_s:g} s.",
                f"- Training: {prov.get('steps', 0):,} steps of {train['batch_size']} crops of {train['crop']}² "
                f"input pixels ({prov.get('samples_seen', 0):,} crops), loss {train['loss']}, AdamW lr "
                f"{train['lr']:g} with warm-up and cosine decay; device {prov.get('accelerator')} "
                f"({prov.get('devices')} device(s), precision {prov.get('precision')})"
                + (f", about {seconds / 60:.1f} min of training (from the logged throughput, validation "
                   "included)." if seconds else "."),
                f"- Dataset config hash `{prov.get('dataset_config_hash', '')[:12]}`, software "
                f"`{prov.get('dataset_software', '')}`; model file software `{_software(run.model)}`.",
                ""]
        out += _validation_curve(history, t_out) if history else [
            f"The validation curve of the training on simulations is in the card released with "
            f"`{prov.get('finetuned_from')}`, the model this one continues.", ""]
        if run.finetune_history is not None:
            out += _finetuning(run, model)
        summary = tables.read_summary(run.summary_csv)
        out += ["Test split, all fields, against the noise-free truth (PSNR/SSIM over the detector mask; data "
                "range that of the truth):", ""]
        out += _table(summary, "all", "all", tables.CARD_IMAGES)
        out += ["", "Point sources (same detection settings on every image; false = detected where the truth "
                f"has none, i.e. hallucinated) and data consistency (the prediction forward-modelled to the {t_in} "
                "input; the truth's value is the noise level):", ""]
        out += _table(summary, "all", "all", tables.CARD_POINTS)
        if run.purity is not None:
            out += _purity(run.purity)
        if run.sources is not None:
            out += _false_causes(run.sources)
        out += _uncertainty(summary, models[run.task].uncertainty_calibration)
        for kind in sorted(summary[summary["group"] == "kind"]["value"].astype(str).unique()):
            n = summary[(summary["group"] == "kind") & (summary["value"].astype(str) == kind)
                        & (summary["method"] == "model") & (summary["metric"] == "psnr_asinh_vs_expected")]["n"]
            out += ["", f"{kind} fields ({int(n.iloc[0]) if len(n) else 0} test images):", ""]
            out += _table(summary, "kind", kind, tables.CARD_KINDS)
        if run.deblend is not None:
            out += _deblending(run.deblend, t_in)
        if run.adversarial is not None:
            out += _adversarial(*run.adversarial)
        out += _measured_limits(run.task, summary) + [""]
    first = next(iter(models.values()))
    real_names = sorted({name for m in models.values()
                         for name, split in m.provenance.get("finetune_real_images", {}).items() if split == "train"})
    out += ["## Intended use", "",
            "EPIC-pn full-frame, thin-filter 0.5–2 keV count images binned like the simulations (DETX/DETY in "
            "bins of 80 = 4\"; `xmmsr bin` on PPS event lists or SAS `evselect`), with an exposure near "
            f"{_ks(first.input_exposure_s)} (the prediction warns beyond a factor 2). Outputs are expected counts at "
            f"{_ks(first.target_exposure_s)}; they are an "
            "estimate, not data: check features against the input with the consistency map, and do not use "
            "them for photometry of faint sources without the completeness and flux-ratio figures above.", "",
            "## Known limits", "",
            (f"- Trained on simulations only ({_simulated_instrument(recorded)}; no spectral lines): real instrument "
             "details differ." if not real_names else
             f"- Trained on simulations ({_simulated_instrument(recorded)}; no spectral lines) and fine-tuned on "
             f"{len(real_names)} real observation(s) ({', '.join(real_names)}): real instrument details and skies "
             "unlike them may differ."),
            f"- Not trained on: piled-up sources, extended emission brighter than the brightest simulated "
            f"sources (central surface brightness up to {_max_sigma_b(recorded)}× the background), other pn modes "
            "(large/small window, timing), other bands, MOS, flaring background, out-of-FoV stray light, or "
            "single-reflection arcs.",
            f"- {_scale_text(models, counts)} The SR model cannot recover structure below the 1x PSF that "
            "the input counts do not constrain; `config/paper.yaml` on GPUs is the scale at which to judge the "
            "method.",
            "- The detector mask is applied to the metrics only; the networks see the chip gaps as zeros."]
    return "\n".join(out) + "\n"


TAIL_MARGIN = 0.02   # ±2σ coverage this far below a Gaussian's is called heavier tails, not test-split scatter


def _uncertainty(summary: pd.DataFrame, calibration: UncertaintyCalibration | None) -> list[str]:
    """The coverage of the per-pixel uncertainty on the test split, bootstrap and calibrated (nothing when it
    was not scored)."""
    c68, c95 = (tables.median(summary, "model", m) for m in tables.CARD_UNCERTAINTY)
    if not (np.isfinite(c68) and np.isfinite(c95)):
        return []
    out = ["", "Per-pixel uncertainty (`xmmsr predict --uncertainty`): medians over the test images of the fraction "
           "of pixels whose truth lies within ±1σ (nominal 68 %) and ±2σ (nominal 95 %) of the prediction:", "",
           "| σ | ±1σ | ±2σ |", "|---|---|---|",
           f"| parametric bootstrap (the spread under the input's Poisson noise) | {c68:.0%} | {c95:.0%} |"]
    k68, k95 = (tables.median(summary, "model", m) for m in tables.CARD_UNCERTAINTY_CALIBRATED)
    if calibration is not None and np.isfinite(k68) and np.isfinite(k95):
        scales = ", ".join(f"{v:.2f}" for v in calibration.scales)
        raw = ("The bootstrap alone is too small: it misses the estimator's bias (smoothed faint sources, reshaped "
               "profiles)." if c68 < ONE_SIGMA else "The bootstrap alone is too large.")
        heavy = k95 < TWO_SIGMA - TAIL_MARGIN   # a Gaussian calibrated at ±1σ would cover 95.45 % at ±2σ
        tails = f" The errors have heavier tails than a Gaussian: ±2σ covers {k95:.0%}, not 95 %." if heavy else ""
        out += [f"| calibrated (shipped in the `.pt`; used by `--uncertainty`) | {k68:.0%} | {k95:.0%} |", "",
                f"{raw} The calibration scales it per bin of predicted counts by {scales} (from faint to bright pixels; "
                f"{len(calibration.scales)} bins of equal pixel numbers), each the {calibration.level:.1%} quantile "
                f"of |prediction − truth| / σ over the {calibration.pixels:,} pixels of the {calibration.split} "
                f"split; the test split above scores it.{tails}"]
    return out


def _false_causes(path: Path) -> list[str]:
    """False detections per field by cause (:func:`xmmsr.evaluate.points.false_causes`), per method."""
    sources = pd.read_csv(path)
    if "cause" not in sources.columns:   # an evaluation made before causes were recorded
        return []
    table = points.false_cause_table(sources).reindex(methods.ordered(sources["method"].unique()))
    fields = int(sources["sample"].nunique())
    out = ["", f"Why detections are false (means per field over the {fields} test fields; the first cause that "
           f"applies): {points.describe_false_causes('`')}.", "",
           "| method | " + " | ".join(table.columns) + " |", "|---" * (len(table.columns) + 1) + "|"]
    for method, row in table.iterrows():
        name = methods.label(str(method))
        out.append(f"| {f'**{name}**' if methods.role(str(method)) == 'model' else name} | "
                   + " | ".join(f"{v:.2f}" for v in row) + " |")
    return out


def _purity(path: Path) -> list[str]:
    """Completeness at equal purity: each method's detection threshold raised until it has at most the
    goal's false sources per field (:func:`xmmsr.evaluate.points.purity_table`), over all test fields and
    over those without an extended source."""
    table = pd.read_csv(path)
    if table.empty:
        return []
    goal = float(table["false_per_field_goal"].iloc[0])
    out = ["", f"Completeness at equal purity: each method's detection threshold (significance at the target "
           f"exposure, never below the default) raised until it invents at most {goal:g} sources per field; a "
           "method that invents sources loses the faint true ones with them. In bright extended emission every "
           "method's peaks (the smoothing baselines' too) fall on substructure that the truth's peaks miss by "
           "more than the match radius, so the fields without an extended source are shown apart:", "",
           "| fields | method | threshold [σ] | false sources per field | completeness | at the default threshold: "
           "false per field | completeness |", "|---|---|---|---|---|---|---|"]
    for fields, part in table.groupby("fields", sort=False):
        rows = part.set_index("method")
        label = f"{fields} ({int(part['n_fields'].iloc[0])})"
        for method in methods.ordered(rows.index):
            r = rows.loc[method]
            name = methods.label(method)
            out.append(f"| {label} | {f'**{name}**' if methods.role(method) == 'model' else name} | "
                       f"{r['threshold']:.1f} | {r['false_per_field']:.2f} | {r['completeness']:.2f} | "
                       f"{r['false_per_field_at_nsigma']:.2f} | {r['completeness_at_nsigma']:.2f} |")
    return out


ADVERSARIAL_METRICS = ("psnr_sqrt_vs_expected", "ssim_sqrt_vs_expected", "deviance_vs_expected", "completeness",
                       "n_false", "median_flux_ratio", "consistency_deviance")


def _adversarial(pixel_summary: Path, adversarial_summary: Path) -> list[str]:
    """The pixel-loss model beside its adversarial continuation (both evaluated on the test split)."""
    rows = []
    for name, path in (("pixel loss", pixel_summary), ("pixel loss + adversarial (ESRGAN)", adversarial_summary)):
        summary = tables.read_summary(path)
        for method, suffix in (("model", ""), ("model_gated", ", sources tested on the input")):
            values = [tables.median(summary, method, m) for m in ADVERSARIAL_METRICS]
            if any(np.isfinite(v) for v in values):
                rows.append(f"| {name}{suffix} | " + " | ".join(
                    "–" if not np.isfinite(v) else tables.METRICS[m].fmt.format(v)
                    for m, v in zip(ADVERSARIAL_METRICS, values)) + " |")
    return ["", "Adversarial loss: the simulation-trained pixel-loss model continued with ESRGAN's relativistic "
            "average GAN term (rule `train_adversarial`; not shipped, shown so that users can choose), both on the "
            "test split:", "", "| model | " + " | ".join(tables.METRICS[m].label for m in ADVERSARIAL_METRICS) + " |",
            "|---" * (len(ADVERSARIAL_METRICS) + 1) + "|", *rows]


def _deblending(path: Path, t_in: str) -> list[str]:
    """The de-blending table: fraction of close point-source pairs resolved, per method, brightness, flux
    ratio and separation."""
    table = tables.deblend_with_counts(pd.read_csv(path))
    seps = sorted(table["separation_fwhm"].unique())
    levels = sorted(table["counts"].unique())
    out = ["", f"De-blending: pairs of point sources at the aim point drawn at {t_in} "
           f"({int(table['trials'].max())} draws per cell; the truth is the noise-free 2x image; the PSF fit fits one "
           "and two PSFs to the input by maximum likelihood, as SAS emldetect does); fraction found as two sources, "
           "by separation in units of the 1x PSF FWHM"
           + (" (at 0, a lone source of the summed counts found as two: false pairs)" if 0.0 in seps else "")
           + ":", "",
           "| method | primary's counts | flux ratio | " + " | ".join(f"{s:g}" for s in seps) + " |",
           "|---|---|---|" + "---|" * len(seps)]
    for method in methods.ordered(table["method"].unique()):
        for level in levels:
            for ratio in sorted(table["flux_ratio"].unique()):
                part = table[(table["method"] == method) & (table["flux_ratio"] == ratio)
                             & ((table["counts"] == level) | (np.isnan(level) & table["counts"].isna()))]
                part = part.set_index("separation_fwhm")
                shown = "–" if np.isnan(level) else f"{level:g}"
                out.append(f"| {methods.label(method)} | {shown} | {ratio:g} | "
                           + " | ".join(f"{part.at[s, 'resolved_fraction']:.2f}" for s in seps) + " |")
    return out + [""]


def _validation_curve(history: list[dict[str, float]], t_out: str) -> list[str]:
    """The training's validation curve (five epochs of it) and where it was best."""
    out = [f"Validation curve (masked PSNR in normalised space, Poisson deviance against the {t_out} counts; "
           "the input's own scores beside them):", "",
           "| epoch | step | train loss | val loss | val PSNR [dB] | input PSNR [dB] | val deviance | "
           "input deviance |", "|---|---|---|---|---|---|---|---|"]
    shown = sorted({0, len(history) // 4, len(history) // 2, 3 * len(history) // 4, len(history) - 1})
    for i in shown:
        r = history[i]
        out.append(f"| {int(r['epoch'])} | {int(r['step'])} | {r['train_loss']:.4f} | {r['val_loss']:.4f} | "
                   f"{r['val_psnr']:.2f} | {r['val_psnr_input']:.2f} | {r['val_poisson_deviance']:.3f} | "
                   f"{r['val_poisson_deviance_input']:.3f} |")
    best = max(history, key=lambda r: r["val_psnr"])
    return out + ["", f"Best validation PSNR at epoch {int(best['epoch'])} of {len(history)}"
                  + (" (the last)." if best is history[-1] else
                     f"; the shipped weights are those of the last epoch ({history[-1]['val_psnr']:.2f} dB)."), ""]


def _finetuning(run: TaskRun, model: Any) -> list[str]:
    """What fine-tuned the model on real data, and how it scores on the held-out real images."""
    prov, ft = model.provenance, model.train_config.get("finetune", {})
    images = prov.get("finetune_real_images", {})
    train = [n for n, split in images.items() if split == "train"]
    watched = [n for n, split in images.items() if split == "val"]
    with open(run.finetune_history, newline="") as fh:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    scores = []
    if run.real_scores is not None:
        with open(run.real_scores, newline="") as fh:
            scores = list(csv.DictReader(fh))
    only_scored = sorted({r["image"] for r in scores if r["split"] == "test"})
    w = float(ft.get("real_weight", float("nan")))
    out = ["Fine-tuning on real pn observations:", "",
           f"- Continued from `{prov.get('finetuned_from')}` for {int(prov.get('finetune_steps', 0)):,} steps "
           f"({ft.get('epochs')} epochs of {ft.get('steps_per_epoch')}; batches of {ft.get('batch_size')} simulated "
           f"and {ft.get('batch_size')} real {ft.get('crop')}² crops; lr {float(ft.get('lr', float('nan'))):g}) on "
           f"the simulated pairs above (weight {1 - w:g}) and real observations thinned at every draw into an input "
           f"and the independent remainder (weight {w:g}; Poisson likelihood of the remainder's counts).",
           f"- Real training observations: {', '.join(train) or 'none'}; watched during fine-tuning: "
           f"{', '.join(watched) or 'none'}; only scored (never seen): {', '.join(only_scored) or 'none'}.", "",
           "| epoch | step | real loss | held-out real deviance |", "|---|---|---|---|"]
    if history:
        out.append(f"| start | 0 | – | {history[0]['val_real_deviance_start']:.4f} |")
    out += [f"| {int(r['epoch'])} | {int(r['step'])} | {r['train_real_loss']:.4f} | {r['val_real_deviance']:.4f} |"
            for r in history]
    if scores:
        label = {"gaussian": "best Gaussian smoothing", **{m: methods.label(m) for m in ("adaptive_smoothing", "wavelet")},
                 "model": f"`{prov.get('finetuned_from')}` (before)", "finetuned": "**this model**"}
        out += ["", "Held-out real observations: the input thinned from each image, scored against the independent "
                "remainder (Poisson deviance per 1x pixel, lower is better; PSNR in linear counts; each baseline's "
                "parameter chosen on the remainder; over the detector footprint: the chip gaps and dead pixels of "
                "the CCD layout get no exposure and are left out). Point sources: each method's sources at the "
                "evaluation's threshold, tested against the remainder; 'from nothing' is the upper estimate of "
                "those the remainder shows nothing of (each source without excess counts there weighted by "
                "1 / the chance that a source made from nothing has none, about 2):", "",
                "| image | split | method | deviance | PSNR [dB] | flux ratio | point sources | from nothing |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['image']} | {r['split']} | {label[r['method']]} | {float(r['deviance']):.4f} | "
                f"{float(r['psnr']):.2f} | {float(r['flux_ratio']):.3f} | {r.get('sources', '–')} | "
                f"{_number(r.get('from_nothing'), '.1f')} |" for r in scores if r["method"] in label]
    return out + [""]


def _number(value: str | None, spec: str) -> str:
    """A CSV field formatted, or a dash where the file has no such column (written before it existed)."""
    return "–" if value in (None, "") else format(float(value), spec)


def _calibration(path: Path | None) -> UncertaintyCalibration | None:
    """The evaluation's ``uncertainty_calibration.json`` (null when the uncertainty was not scored)."""
    if path is None:
        return None
    recorded = json.loads(Path(path).read_text())
    return None if recorded is None else UncertaintyCalibration.from_dict(recorded)


def write_release(runs: Sequence[TaskRun], dataset: Path, config_name: str, out_dir: str | Path) -> Path:
    """Copy the models of ``runs`` into ``out_dir`` as ``{task}.pt``/``{task}.onnx`` and write the card."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    released: dict[str, TrainedModel] = {}
    for run in runs:
        model = load_model(run.model)   # refuses a damaged model file (digest)
        check_onnx(run.onnx)
        calibration = _calibration(run.calibration)
        if calibration is None:
            with atomic_path(out_dir / f"{run.task}.pt") as tmp:
                shutil.copyfile(run.model, tmp)
        else:   # the same model with its uncertainty calibration (a new digest)
            model = replace(model, uncertainty_calibration=calibration)
            save_model(out_dir / f"{run.task}.pt", model)
        released[run.task] = model
        with atomic_path(out_dir / f"{run.task}.onnx") as tmp:
            shutil.copyfile(run.onnx, tmp)
    card = model_card(runs, released, dataset, config_name, out_dir)
    with atomic_path(out_dir / CARD_NAME) as tmp:
        tmp.write_text(card)
    manifest = {run.task: {"pt": f"{run.task}.pt", "onnx": f"{run.task}.onnx"} for run in runs}
    with atomic_path(out_dir / "release.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out_dir / CARD_NAME
