"""The evaluation report: one PDF (matplotlib) readable without the code, and PNG figures for
``snakemake --report``.

Pages: provenance and configuration; per task the metric table (model and every baseline side by
side, best in bold), breakdowns by source kind and brightness, point sources and data consistency;
training and validation curves; galleries of test images with a shared, stated stretch; real-data
scores when real pairs were given.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from .. import __version__  # noqa: E402
from ..instrument.psf import describe_psf  # noqa: E402
from ..io import atomic_path  # noqa: E402
from . import methods, points, tables  # noqa: E402
from .real import SUPPORT_SIGMA  # noqa: E402

TASK_TITLES = {"dn": "De-noising (DN): {t_in} → {t_out}, 4\" pixels",
               "sr": "Super-resolution (SR): {t_in} at 4\" → {t_out} at 2\""}
PAGE = (11.69, 8.27)  # A4 landscape, inches


@dataclass(frozen=True)
class Exposures:
    """The run's input and target exposures (s), as the report words them."""

    input_s: float
    target_s: float

    @classmethod
    def of(cls, config: dict[str, Any]) -> "Exposures":
        return cls(1000.0 * float(config["pack"]["input_exposure_ks"]), 1000.0 * float(config["pack"]["target_exposure_ks"]))

    @property
    def t_in(self) -> str:
        return f"{self.input_s / 1000:g} ks"

    @property
    def t_out(self) -> str:
        return f"{self.target_s / 1000:g} ks"

    def title(self, task: str) -> str:
        return TASK_TITLES[task].format(t_in=self.t_in, t_out=self.t_out)


def _caption(fig: plt.Figure, text: str) -> None:
    fig.text(0.04, 0.02, "\n".join(textwrap.wrap(text, 190)), fontsize=7.5, va="bottom", ha="left", style="italic")


def _title(fig: plt.Figure, text: str) -> None:
    fig.suptitle(text, fontsize=14, x=0.04, ha="left", y=0.97)


def _provenance_page(pdf: PdfPages, summaries: dict[str, dict[str, Any]], config: dict[str, Any]) -> None:
    exp = Exposures.of(config)
    fig = plt.figure(figsize=PAGE)
    _title(fig, "xmmsr evaluation report: XMM-Newton EPIC-pn de-noising and 2x super-resolution")
    lines = [f"Software: xmmsr {__version__}.   Seed: {config.get('seed')}.   Evaluation split: "
             f"{config['evaluate']['split']} (sources never seen in training; splits are by source)."]
    for task, summary in summaries.items():
        p = summary["provenance"]
        mp, ds = p["model_provenance"], p["dataset"]
        arch = p["architecture"]
        lines += ["", exp.title(task),
                  f"    dataset: {ds['n_samples']} images (train {ds['n_train']}, val {ds['n_val']}, test "
                  f"{ds['n_test']}), config hash {ds['config_hash'][:16]}…, written by {ds['software']}",
                  f"    model: RRDB, {arch['features']} features, growth {arch['growth']}, {arch['blocks']} RRDB(s) × "
                  f"{arch['dense_blocks']} dense blocks; normalisation {p['normalisation']['method']} (scale "
                  f"{p['normalisation']['scale']:g} counts/s per 1x pixel)",
                  f"    training: {mp.get('epochs')} epochs, {mp.get('steps')} optimizer steps, "
                  f"{mp.get('samples_seen', 'n/a')} crops seen, on {mp.get('accelerator', 'n/a')} × "
                  f"{mp.get('devices', 'n/a')} ({mp.get('precision', 'n/a')}); seed {mp.get('seed')}",
                  f"    scored on {p['n_images']} images; baseline parameters (best on val): "
                  + ", ".join(f"{name} {methods.describe_parameter(name, v)}"
                              for name, v in p.get("tuned_parameters", {"gaussian": p["gaussian_sigma_px"]}).items())
                  + f"; PSF FWHM {p['psf_fwhm_px']:.2f} px of {p['pixel_arcsec']:g}\""]
    sim = config["simulate"]
    lines += ["", f"Simulation: exposures {sim['exposures_ks']} ks, resolutions {sim['resolutions']}x; sources: "
              f"{config['sources']['extended']['n']} extended, {config['sources']['agn']['n']} AGN fields, "
              f"{config['sources']['background']['n']} blank fields;",
              f"PSF: {describe_psf(config['instrument']['psf'])}.",
              "Wall-clock training time is not part of this report (outputs are reproducible); it is in the "
              "training logs (logs/train/*.log)."]
    fig.text(0.04, 0.9, "\n".join(lines), fontsize=9, va="top", family="monospace")
    _caption(fig, "All metrics are computed over the detector mask only (chip gaps, field edges and padding "
             "excluded). 'truth' is the noise-free expected image at the target exposure; 'vs target data' compares "
             f"with an independent noisy {exp.t_out} realization. Predictions are expected counts per output pixel at "
             f"{exp.t_out}. The asinh stretch is asinh(counts / a) with a = "
             f"{config['evaluate']['asinh_scale_counts']:g} counts per output pixel; the data range of PSNR/SSIM "
             "is that of the truth image over the mask, identical for every method.")
    pdf.savefig(fig)
    plt.close(fig)


def _best(values: pd.Series, better: str, reference: float = 1.0) -> set[str]:
    """Methods with the best value: highest, lowest, or closest to ``reference`` (the nominal value, or the
    truth's)."""
    finite = values[np.isfinite(values.astype(float))]
    if finite.empty:
        return set()
    if better == "high":
        target = finite.max()
    elif better == "low":
        target = finite.min()
    else:
        target = finite.iloc[(finite - reference).abs().argmin()]
    return set(finite.index[np.isclose(finite, target)])


def metric_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Median of every column of the report's table per method (overall), methods in registry order."""
    return tables.median_table(summary, tables.REPORT_OVERALL)


def _table_page(pdf: PdfPages, task: str, summary: pd.DataFrame, provenance: dict[str, Any],
                exp: Exposures) -> plt.Figure:
    table = metric_table(summary)
    fig = plt.figure(figsize=PAGE)
    _title(fig, f"{exp.title(task)}: metrics on {provenance['n_images']} test images (median)")
    ax = fig.add_axes([0.17, 0.25, 0.81, 0.6])
    ax.axis("off")
    cells = [[_fmt(table.at[m, c]) for c in table.columns] for m in table.index]
    tab = ax.table(cellText=cells, rowLabels=[methods.label(m) for m in table.index],
                   colLabels=[textwrap.fill(tables.METRICS[c].label, 14) for c in table.columns], loc="center",
                   cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(8.5)
    tab.scale(1.0, 2.4)
    candidates = [m for m in table.index if m != "truth"]
    for j, column in enumerate(table.columns):
        better = tables.METRICS[column].better
        for i, method in enumerate(table.index):
            reference = (table.at["truth", column] if better == "truth" and "truth" in table.index
                         else tables.METRICS[column].nominal)
            if method in _best(table.loc[candidates, column], better, reference):
                tab[i + 1, j].get_text().set_fontweight("bold")
        tab[0, j].get_text().set_fontsize(7.5)
    for i, method in enumerate(table.index):
        if method == "truth":
            for j in range(-1, len(table.columns)):
                tab[i + 1, j].set_facecolor("#eeeeee")
    _caption(fig, "Median over the test images of each metric; the best method per column is in bold (the grey "
             "'truth' row is the noise-free image itself, shown as the reference: it is not a competitor). "
             "PSNR/SSIM compare with the noise-free truth in linear counts and after the asinh stretch; L1 in "
             f"expected counts per pixel; Poisson deviance of the prediction as the mean of the independent {exp.t_out} "
             "counts (lower is better; the truth sets the floor); flux ratio = total predicted / true counts "
             "(1 is best); point sources are detected with the same settings in prediction and truth "
             "(completeness = fraction of true sources recovered, false = detections with no true source within "
             f"one PSF FWHM: hallucinated sources); consistency deviance = Poisson deviance of the {exp.t_in} input "
             "counts given the prediction forward-modelled back to the input (PSF and 2x2 binning for SR): the "
             "truth's value is the level of Poisson noise; well above it, the prediction contradicts the data it "
             "came from (invented or lost signal); well below it, the prediction copies the input's noise (the "
             "scaled input itself scores near 0). Best = closest to the truth.")
    pdf.savefig(fig)
    return fig


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if np.isinf(value):
        return "∞"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _breakdown_page(pdf: PdfPages, task: str, summary: pd.DataFrame, exp: Exposures) -> None:
    fig, axes = plt.subplots(1, 3, figsize=PAGE)
    _title(fig, f"{exp.title(task)}: by source kind and brightness")
    panels = (("kind", "psnr_asinh_vs_expected", "PSNR asinh vs truth [dB]"),
              ("brightness", "psnr_asinh_vs_expected", "PSNR asinh vs truth [dB]"),
              ("kind", "consistency_deviance", "consistency deviance"))
    for ax, (group, metric, label) in zip(axes, panels):
        part = summary[(summary["group"] == group) & (summary["metric"] == metric)]
        values = sorted(part["value"].unique())
        names = methods.ordered(part["method"])
        width = 0.8 / max(len(names), 1)
        for k, method in enumerate(names):
            sel = part[part["method"] == method].set_index("value").reindex(values)
            x = np.arange(len(values)) + k * width
            err = [np.clip(sel["median"] - sel["p16"], 0, None), np.clip(sel["p84"] - sel["median"], 0, None)]
            ax.bar(x, sel["median"], width, yerr=err, label=methods.label(method), capsize=2)
        ax.set_xticks(np.arange(len(values)) + 0.4 - width / 2, values, rotation=15)
        ax.set_ylabel(label)
        ax.set_title(f"{label} by {group}", fontsize=10)
    axes[0].legend(fontsize=7)
    fig.subplots_adjust(bottom=0.22, top=0.86, wspace=0.3)
    _caption(fig, "Bars: median over the test images of each group; error bars: 16th–84th percentiles. Kinds: "
             "extended sources (clusters, SNR shells, filaments, with AGN), AGN-dominated fields and "
             "background-dominated blank fields. Brightness: terciles of the true source counts (truth minus "
             "background) over the test set.")
    pdf.savefig(fig)
    plt.close(fig)


def curves_figure(histories: dict[str, pd.DataFrame], exp: Exposures) -> plt.Figure:
    """Training and validation loss, and validation PSNR beside the input's, per task."""
    fig, axes = plt.subplots(len(histories), 2, figsize=PAGE, squeeze=False)
    _title(fig, "Training and validation curves")
    for row, (task, h) in zip(axes, histories.items()):
        row[0].plot(h["step"], h["train_loss"], "o-", label="training loss (mean over the epoch)")
        row[0].plot(h["step"], h["val_loss"], "s-", label="validation loss (full frames)")
        row[0].set_xlabel("optimizer step")
        row[0].set_ylabel("loss")
        row[0].set_title(exp.title(task), fontsize=10)
        row[0].legend(fontsize=8)
        row[1].plot(h["step"], h["val_psnr"], "o-", label="model")
        row[1].plot(h["step"], h["val_psnr_input"], "--", label="input (scaled, nearest-upsampled for SR)")
        row[1].set_xlabel("optimizer step")
        row[1].set_ylabel("validation PSNR [dB] (normalised space)")
        row[1].legend(fontsize=8)
    fig.subplots_adjust(bottom=0.14, top=0.9, hspace=0.45)
    _caption(fig, "Loss: the configured weighted sum (L1 in normalised space, Poisson NLL on counts without the "
             "constant log k! term, so it can be negative, …) over the "
             f"detector mask. Validation PSNR is measured against the noisy {exp.t_out} target in the network's "
             "normalised (asinh) space, one point per epoch.")
    return fig


def gallery_figure(task: str, gallery: Any, index: int, stretch_a: float, exp: Exposures) -> plt.Figure | None:
    """Input, every baseline, the model, the noisy target, the truth and the model residual for one image."""
    key = f"{index}/info"
    if key not in gallery:
        return None
    info = json.loads(str(gallery[key]))
    mask = gallery[f"{index}/mask_target_data"] > 0
    s = 2 if task == "sr" else 1
    panels = [("input (scaled)", gallery[f"{index}/input"])]
    panels += [(methods.label(m), gallery[f"{index}/{m}"]) for m in methods.ordered(
        [*(b.name for b in methods.baselines_for(task)), "model"]) if m != "input" and f"{index}/{m}" in gallery]
    panels += [(f"{exp.t_out} target (noisy)", gallery[f"{index}/target_data"]), ("truth (noise-free)", gallery[f"{index}/truth"])]
    truth = gallery[f"{index}/truth"]
    ys, xs = np.nonzero(mask)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)) if ys.size else (slice(None), slice(None))
    vmax = float(np.arcsinh(np.percentile(truth[mask], 99.9) / stretch_a)) if mask.any() else 1.0
    fig, axes = plt.subplots(2, 4, figsize=PAGE)
    fig.subplots_adjust(left=0.04, right=0.86, bottom=0.14, top=0.88, wspace=0.08, hspace=0.18)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, (label, image) in zip(axes.flat, panels):
        im = ax.imshow(np.arcsinh(np.where(mask, image, 0.0)[box] / stretch_a), origin="lower", cmap="magma",
                       vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(label, fontsize=9)
    for ax in axes.flat[len(panels):-1]:
        ax.axis("off")
    fig.colorbar(im, cax=fig.add_axes([0.88, 0.53, 0.012, 0.35]),
                 label=f"asinh(counts per pixel / {stretch_a:g}) at {exp.t_out}")
    resid = (gallery[f"{index}/model"] - truth) / np.sqrt(np.maximum(truth, 1e-3))
    ax = axes.flat[-1]
    r = ax.imshow(np.where(mask, resid, 0.0)[box], origin="lower", cmap="coolwarm", vmin=-3, vmax=3,
                  interpolation="nearest")
    ax.set_title("model − truth", fontsize=9)
    fig.colorbar(r, cax=fig.add_axes([0.88, 0.14, 0.012, 0.33]), label="(model − truth) / √truth")
    _title(fig, f"{exp.title(task)}: test image {index + 1} ({info['kind']}, {info['model_kind']}, source "
                f"{info['source_id']})")
    _caption(fig, f"All panels share one stretch: asinh(counts / {stretch_a:g}), from 0 to the 99.9th percentile of the "
             f"truth, in expected counts per {'2' if s == 2 else '4'}\" pixel at {exp.t_out}, over the detector area "
             "(outside the mask set to 0). The input is the "
             f"{info['exposure_input'] / 1000:g} ks image scaled to {exp.t_out}{' and nearest-upsampled' if s == 2 else ''}. "
             f"The last panel is the model residual in units of the {exp.t_out} Poisson noise of the truth: structure "
             "there is signal the model lost or invented.")
    return fig


def _points_consistency_page(pdf: PdfPages, task: str, summary: pd.DataFrame, gallery: Any, exp: Exposures) -> None:
    fig, axes = plt.subplots(1, 4, figsize=PAGE)
    _title(fig, f"{exp.title(task)}: point sources and data consistency")
    overall = summary[summary["group"] == "all"]
    names = methods.ordered(overall["method"])
    for ax, (metric, label) in zip(axes[:2], (("completeness", "completeness"),
                                              ("n_false", "false (hallucinated) sources per field"))):
        sel = overall[overall["metric"] == metric].set_index("method").reindex(names)
        ax.bar(range(len(names)), sel["mean"])
        ax.set_xticks(range(len(names)), [methods.label(m) for m in names], rotation=60, fontsize=7)
        ax.set_title(label, fontsize=10)
    for ax, method in zip(axes[2:], ("model", "truth")):
        key = f"0/{method}/consistency"
        if key in gallery:
            mask = gallery["0/mask_input_data"] > 0
            im = ax.imshow(np.where(mask, gallery[key], 0.0), origin="lower", cmap="coolwarm", vmin=-5, vmax=5)
            fig.colorbar(im, ax=ax, shrink=0.6, label="signed deviance residual")
            ax.set_title(f"consistency map: {methods.label(method)}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.subplots_adjust(bottom=0.3, top=0.85, wspace=0.35)
    _caption(fig, "Left: mean completeness and mean number of false detections per test field (point sources "
             "detected with identical settings in the prediction and in the noise-free truth; a detection with no "
             "true source within one PSF FWHM is false). Right: the first test image's consistency map: the "
             f"prediction forward-modelled to the {exp.t_in} input (PSF ratio and 2x2 binning for SR, exposure) and "
             "compared with the input counts, as signed Poisson-deviance residuals; the truth's map shows the "
             "level expected from noise alone. Regions red or blue beyond it are where the prediction is "
             "inconsistent with the data.")
    pdf.savefig(fig)
    plt.close(fig)


def _frame_table(fig: plt.Figure, rect: list[float], frame: pd.DataFrame, fontsize: float, row_height: float) -> None:
    """A table of ``frame`` (its columns as headers, floats formatted) in the axes box ``rect`` of ``fig``."""
    ax = fig.add_axes(rect)
    ax.axis("off")
    tab = ax.table(cellText=[[_fmt(v) if isinstance(v, float) else str(v) for v in row] for row in frame.values],
                   colLabels=list(frame.columns), loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(fontsize)
    tab.scale(1.0, row_height)


def _real_page(pdf: PdfPages, real: pd.DataFrame) -> None:
    fig = plt.figure(figsize=PAGE)
    _title(fig, "Real observations: DN on the short exposure scored against an independent long exposure")
    _frame_table(fig, [0.05, 0.25, 0.9, 0.6], real[[c for c in real.columns if c != "pair"]], 8, 1.8)
    _caption(fig, "Each method's prediction, rescaled to the long exposure, against the long image's counts over "
             "the area both images cover. Only the noisy long image is available as a reference, so these numbers "
             "include its Poisson noise.")
    pdf.savefig(fig)
    plt.close(fig)


def _real_thinned_page(pdf: PdfPages, task: str, scores: pd.DataFrame) -> None:
    fig = plt.figure(figsize=PAGE)
    _title(fig, f"{task.upper()} on held-out real observations: thinned input against the independent remainder")
    cols = [c for c in ("image", "split", "method", "deviance", "psnr", "psnr_asinh", "flux_ratio", "parameter",
                        "sources", "unconfirmed", "from_nothing", "exposure_input", "exposure_remainder")
            if c in scores.columns]
    _frame_table(fig, [0.05, 0.2, 0.9, 0.65], scores[cols], 7, 1.5)
    _caption(fig, "Each held-out real image is thinned binomially into an input and the independent remainder "
             "(same seed for every method); predictions from the input, turned into the remainder's expected "
             "counts with its per-pixel exposure (SR forward-modelled to 1x), are scored against the remainder's "
             "counts: Poisson deviance per pixel (lower is better), PSNR and flux ratio. Each baseline's parameter "
             "(Gaussian width, adaptive-smoothing S/N, wavelet threshold) is the one with the lowest deviance on "
             "that image, which favours the baselines. 'finetuned' is the model after fine-tuning on "
             "the real training images. Point sources: each method's sources at the evaluation's threshold, each "
             "tested against the remainder's counts in its aperture over what its surroundings give there; "
             f"'unconfirmed': below {SUPPORT_SIGMA:g} sigma; 'from nothing': an upper estimate of those made from nothing (each "
             "source without any excess weighted by 1 / the chance, about one half, that one made from nothing "
             "has none).")
    pdf.savefig(fig)
    plt.close(fig)


def _purity_page(pdf: PdfPages, task: str, purity: pd.DataFrame, exp: Exposures) -> None:
    """Completeness of every method at the same purity (:func:`xmmsr.evaluate.points.purity_table`)."""
    fig = plt.figure(figsize=PAGE)
    goal = float(purity["false_per_field_goal"].iloc[0])
    _title(fig, f"{task.upper()}: point-source completeness at equal purity (at most {goal:g} false per field)")
    frame = pd.DataFrame({"fields": [f"{f} ({n})" for f, n in zip(purity["fields"], purity["n_fields"])],
                          "method": [methods.label(m) for m in purity["method"]],
                          "threshold [sigma]": purity["threshold"], "false per field": purity["false_per_field"],
                          "completeness": purity["completeness"],
                          "false per field (default threshold)": purity["false_per_field_at_nsigma"],
                          "completeness (default threshold)": purity["completeness_at_nsigma"]})
    order = {label: i for i, label in enumerate(methods.label(m) for m in methods.ordered(purity["method"]))}
    frame = frame.sort_values(["fields", "method"], key=lambda c: c.map(order) if c.name == "method" else c,
                              kind="stable")
    _frame_table(fig, [0.05, 0.25, 0.9, 0.6], frame, 8, 1.5)
    _caption(fig, "Over the test images (all, and those without an extended source), each method's detection "
             f"threshold (Poisson significance at {exp.t_out}, "
             f"never below the default) is raised until it has at most {goal:g} false (hallucinated) sources per "
             "field; completeness is then the fraction of the truth's sources it still finds. A method that invents "
             "sources must raise its threshold and loses faint true sources with them, so this compares methods, "
             "the scaled input included, on equal terms; in bright extended emission every method's peaks fall on "
             "substructure that the truth's peaks miss by more than the match radius, hence the second group. "
             "'sources tested on the input': the model's compact sources "
             "kept only where the input's counts show them (xmmsr predict --source-gate).")
    pdf.savefig(fig)
    plt.close(fig)


def _false_causes_page(pdf: PdfPages, task: str, sources: pd.DataFrame) -> None:
    """False detections per field of every method by why they are false (:func:`xmmsr.evaluate.points.false_causes`)."""
    fig = plt.figure(figsize=PAGE)
    _title(fig, f"{task.upper()}: why detections are false (false detections per field)")
    fields = max(int(sources["sample"].nunique()), 1)
    frame = points.false_cause_table(sources).reindex(methods.ordered(sources["method"].unique()))
    frame.insert(0, "method", [methods.label(m) for m in frame.index])
    _frame_table(fig, [0.05, 0.3, 0.9, 0.55], frame.reset_index(drop=True), 8, 1.5)
    _caption(fig, f"Over the {fields} test images, each false detection (no true source within the match radius) "
             f"is put in the first class that applies: {points.describe_false_causes()}.")
    pdf.savefig(fig)
    plt.close(fig)


REAL_GALLERY_NAME = "real_thinned_gallery.npz"   # beside real_thinned.csv (evaluate.real.score_real_images)


def real_gallery_figure(task: str, gallery: Any, image: str) -> plt.Figure | None:
    """One held-out real image: every method's prediction of the remainder, and the remainder itself."""
    if f"{image}/remainder" not in gallery:
        return None
    mask = gallery[f"{image}/mask"] > 0
    remainder = gallery[f"{image}/remainder"]
    names = methods.ordered(k.split("/", 1)[1] for k in gallery.files if k.startswith(f"{image}/")
                            and k.split("/", 1)[1] not in ("remainder", "mask"))
    panels = [(methods.label(m), gallery[f"{image}/{m}"]) for m in names] + [("remainder (counts)", remainder)]
    ys, xs = np.nonzero(mask)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)) if ys.size else (slice(None), slice(None))
    a = max(float(np.median(gallery[f"{image}/gaussian"][mask])) if mask.any() else 1.0, 1e-3)
    vmax = float(np.arcsinh(np.percentile(gallery[f"{image}/gaussian"][mask], 99.9) / a)) if mask.any() else 1.0
    cols = 4
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=PAGE, squeeze=False)
    fig.subplots_adjust(left=0.04, right=0.88, bottom=0.12, top=0.88, wspace=0.06, hspace=0.16)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for ax, (label, values) in zip(axes.flat, panels):
        ax.axis("on")
        im = ax.imshow(np.arcsinh(np.where(mask, values, 0.0)[box] / a), origin="lower", cmap="magma", vmin=0,
                       vmax=vmax, interpolation="nearest")
        ax.set_title(label, fontsize=9)
    fig.colorbar(im, cax=fig.add_axes([0.90, 0.2, 0.012, 0.6]), label=f"asinh(counts per 4\" pixel / {a:.3g})")
    _title(fig, f"{task.upper()} on the real image {image}: predictions of the independent remainder")
    _caption(fig, "Every panel is in the remainder's counts per 4\" pixel (its exposure, per pixel), on one stretch: "
             f"asinh(counts / {a:.3g}, the median of the Gaussian-smoothed prediction), from 0 to the 99.9th percentile "
             "of that prediction. The predictions are made from the thinned input alone; the remainder is the "
             "independent rest of the observation's counts, with its full Poisson noise (no method can or should "
             "reproduce that noise). SR predictions are forward-modelled to 1x.")
    return fig


ADVERSARIAL_METRICS = ("psnr_asinh_vs_expected", "ssim_asinh_vs_expected", "deviance_vs_expected", "flux_ratio",
                       "completeness", "n_false", "consistency_deviance")


def adversarial_figure(task: str, pixel: pd.DataFrame, adversarial: pd.DataFrame, pixel_gallery: Any,
                       adversarial_gallery: Any, stretch_a: float, exp: Exposures) -> plt.Figure:
    """The pixel-loss and the adversarial model side by side: the metric medians (sharpness against
    hallucination) and the first test image of both with the truth."""
    fig = plt.figure(figsize=PAGE)
    _title(fig, f"{task.upper()}: pixel loss against pixel + adversarial loss (ESRGAN relativistic GAN)")
    rows = {"pixel-loss model": pixel, "adversarial model": adversarial}
    table = pd.DataFrame({name: [tables.median(summary, "model", m) for m in ADVERSARIAL_METRICS]
                          for name, summary in rows.items()}, index=[tables.METRICS[m].label for m in ADVERSARIAL_METRICS]).T
    cells = [[tables.METRICS[m].fmt.format(v) if np.isfinite(v) else "–" for m, v in zip(ADVERSARIAL_METRICS, row)]
             for row in table.to_numpy()]
    ax = fig.add_axes([0.04, 0.62, 0.92, 0.22])
    ax.axis("off")
    tab = ax.table(cellText=cells, rowLabels=list(table.index), colLabels=list(table.columns), loc="center",
                   cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)
    tab.scale(1.0, 2.0)
    if "0/info" in pixel_gallery and "0/info" in adversarial_gallery:
        mask = pixel_gallery["0/mask_target_data"] > 0
        truth = pixel_gallery["0/truth"]
        ys, xs = np.nonzero(mask)
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)) if ys.size else (slice(None),) * 2
        vmax = float(np.arcsinh(np.percentile(truth[mask], 99.9) / stretch_a)) if mask.any() else 1.0
        panels = [("pixel-loss model", pixel_gallery["0/model"]), ("adversarial model", adversarial_gallery["0/model"]),
                  ("truth (noise-free)", truth)]
        for i, (label, image) in enumerate(panels):
            axi = fig.add_axes([0.06 + 0.3 * i, 0.1, 0.27, 0.45])
            axi.imshow(np.arcsinh(np.where(mask, image, 0.0)[box] / stretch_a), origin="lower", cmap="magma", vmin=0,
                       vmax=vmax, interpolation="nearest")
            axi.set_title(label, fontsize=9)
            axi.set_xticks([])
            axi.set_yticks([])
    _caption(fig, "Medians over the test split of the two models of this task: the adversarial one continues the "
             "pixel-loss one with the relativistic average GAN term (train.loss.adversarial). Sharper images show as "
             "higher SSIM and completeness, invented sources as more false detections per field. Images: the first "
             f"test image in one asinh stretch (counts / {stretch_a:g} at {exp.t_out}).")
    return fig


FLUX_BINS = np.geomspace(10.0, 1.0e5, 13)       # true-source counts at the target exposure
OFFAXIS_BINS = np.arange(0.0, 21.0 + 1e-9, 3.0)  # arcmin (the image corners lie 20' from the axis)


def sources_figure(task: str, sources: pd.DataFrame, exp: Exposures) -> plt.Figure:
    """Where point sources are lost and invented: completeness against the true source's counts, and
    false detections per field against the off-axis angle, per method."""
    fig, (left, right) = plt.subplots(1, 2, figsize=PAGE)
    _title(fig, f"{task.upper()}: point sources lost and invented, by flux and off-axis angle")
    fields = max(int(sources["sample"].nunique()), 1)
    centres = np.sqrt(FLUX_BINS[1:] * FLUX_BINS[:-1])
    for method in methods.ordered(sources["method"].unique()):
        part = sources[sources["method"] == method]
        true = part[part["source"] == "true_source"]
        total, _ = np.histogram(true["flux"], FLUX_BINS)
        found, _ = np.histogram(true.loc[true["found"].astype(bool), "flux"], FLUX_BINS)
        with np.errstate(invalid="ignore", divide="ignore"):
            left.plot(centres, np.where(total > 0, found / total, np.nan), marker="o", label=methods.label(method))
        false, _ = np.histogram(part.loc[part["source"] == "false_detection", "offaxis_arcmin"], OFFAXIS_BINS)
        right.step(OFFAXIS_BINS, np.append(false / fields, false[-1] / fields), where="post",
                   label=methods.label(method))
    left.set_xscale("log")
    left.set_xlabel(f"true source counts at {exp.t_out} (aperture, background subtracted)")
    left.set_ylabel("completeness")
    left.set_ylim(-0.03, 1.03)
    right.set_yscale("symlog", linthresh=0.1)
    right.set_xlabel("off-axis angle [arcmin]")
    right.set_ylabel("false detections per field")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.subplots_adjust(top=0.85, bottom=0.25, wspace=0.25)
    _caption(fig, f"Over the {fields} test images: the true sources are those detected in the noise-free truth "
             "(same finder and threshold as every prediction); completeness is the fraction matched within one PSF "
             "FWHM or, where wider, the source's 99 % error circle in the input (its Cramér-Rao position error, at "
             "most the 1x FWHM), per bin of the true source's counts; false detections are those with no true source "
             f"within that radius, per field, by their angle from the optical axis. metrics/{task}/sources.csv lists "
             "every source and its match radius.")
    return fig


def deblend_figure(table: pd.DataFrame, exp: Exposures) -> plt.Figure:
    """Fraction of close point-source pairs resolved against their separation, one panel per flux ratio
    and one line style per brightness of the primary."""
    table = tables.deblend_with_counts(table)
    ratios = sorted(table["flux_ratio"].unique())
    levels = sorted(table["counts"].unique())
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ("-", "--", ":", "-.")
    fig, axes = plt.subplots(1, len(ratios), figsize=PAGE, sharey=True, squeeze=False)
    _title(fig, "SR: de-blending close point-source pairs")
    for ax, ratio in zip(axes[0], ratios):
        part = table[table["flux_ratio"] == ratio]
        for i, method in enumerate(methods.ordered(part["method"].unique())):
            for j, level in enumerate(levels):
                rows = part[(part["method"] == method) & ((part["counts"] == level) | part["counts"].isna())]
                name = methods.label(method) + (f", {level:g} counts" if len(levels) > 1 else "")
                rows = rows.sort_values("separation_fwhm")
                ax.plot(rows["separation_fwhm"], rows["resolved_fraction"], marker="o", ms=3,
                        ls=styles[j % len(styles)], color=colours[i % len(colours)], label=name)
        ax.set_xlabel("separation / 1x PSF FWHM")
        ax.set_title(f"flux ratio {ratio:g}")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction resolved")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2 if len(levels) > 1 else 3, fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0.155))
    fig.subplots_adjust(top=0.84, bottom=0.42, wspace=0.08)
    trials = int(table["trials"].max())
    brightness = "the configured" if np.isnan(levels[0]) else " and ".join(f"{level:g}" for level in levels)
    _caption(fig, f"Pairs of point sources at the aim point (a primary of {brightness} counts at {exp.t_in}, the "
             f"secondary fainter by the flux ratio), drawn at the input exposure {trials} times per separation and "
             "ratio; a pair is resolved when two detections lie within half the separation of the true positions "
             "(the point-source finder with a peak box of half a FWHM, on the known background without an annulus "
             "level); at separation 0 the 'pair' is a lone source of the summed counts, and the fraction is that "
             "found as two within one FWHM (false pairs). The PSF fit (emldetect-like) fits one and two PSFs to the "
             "input counts by maximum likelihood and keeps the second source at the detection threshold: what the "
             "input itself supports. The 2x truth is the noise-free image at "
             f"{exp.t_out}, scored once. Richardson-Lucy deconvolves the input onto the 2x grid.")
    return fig


def write_report(metric_dirs: dict[str, Path], histories: dict[str, Path], config: dict[str, Any],
                 pdf_path: str | Path, figure_dir: str | Path, real_csv: Path | None = None,
                 real_thinned: dict[str, Path] | None = None, deblend_csv: Path | None = None,
                 adversarial_dirs: dict[str, Path] | None = None,
                 deblend_adversarial_csv: Path | None = None) -> list[Path]:
    """Write the PDF report and the PNG figures for ``snakemake --report``; returns the PNG paths (the
    adversarial SR model's de-blending, when given, on the same page as the pixel-loss model's)."""
    summaries = {t: json.loads((d / "summary.json").read_text()) for t, d in metric_dirs.items()}
    task_tables = {t: pd.read_csv(d / "summary.csv") for t, d in metric_dirs.items()}
    galleries = {t: np.load(d / "gallery.npz") for t, d in metric_dirs.items()}
    history = {t: pd.read_csv(p) for t, p in histories.items()}
    stretch_a = config["evaluate"]["asinh_scale_counts"]
    exp = Exposures.of(config)
    figure_dir = Path(figure_dir)
    figure_dir.mkdir(parents=True, exist_ok=True)
    pngs: list[Path] = []
    with atomic_path(pdf_path) as tmp:
        with PdfPages(tmp, metadata={"Title": "xmmsr evaluation report", "Creator": f"xmmsr {__version__}",
                                     "CreationDate": None, "ModDate": None}) as pdf:
            _provenance_page(pdf, summaries, config)
            for task in metric_dirs:
                fig = _table_page(pdf, task, task_tables[task], summaries[task]["provenance"], exp)
                pngs.append(_save_png(fig, figure_dir / f"metrics_{task}.png"))
                _breakdown_page(pdf, task, task_tables[task], exp)
                _points_consistency_page(pdf, task, task_tables[task], galleries[task], exp)
                if (metric_dirs[task] / "sources.csv").exists():
                    sources = pd.read_csv(metric_dirs[task] / "sources.csv")
                    fig = sources_figure(task, sources, exp)
                    pdf.savefig(fig)
                    plt.close(fig)
                    if "cause" in sources.columns:
                        _false_causes_page(pdf, task, sources)
                if (metric_dirs[task] / "purity.csv").exists():
                    _purity_page(pdf, task, pd.read_csv(metric_dirs[task] / "purity.csv"), exp)
            fig = curves_figure(history, exp)
            pdf.savefig(fig)
            pngs.append(_save_png(fig, figure_dir / "training_curves.png"))
            for task in metric_dirs:
                for index in range(config["evaluate"]["gallery"]):
                    fig = gallery_figure(task, galleries[task], index, stretch_a, exp)
                    if fig is None:
                        break
                    pdf.savefig(fig)
                    if index == 0:
                        pngs.append(_save_png(fig, figure_dir / f"gallery_{task}.png"))
                    else:
                        plt.close(fig)
            for task, directory in (adversarial_dirs or {}).items():
                with np.load(directory / "gallery.npz") as adversarial_gallery:
                    fig = adversarial_figure(task, task_tables[task], tables.read_summary(directory / "summary.csv"),
                                             galleries[task], adversarial_gallery, stretch_a, exp)
                pdf.savefig(fig)
                pngs.append(_save_png(fig, figure_dir / f"adversarial_{task}.png"))
            if deblend_csv is not None:
                table = pd.read_csv(deblend_csv)
                if deblend_adversarial_csv is not None:
                    table = tables.deblend_with_models(table, {"model_adversarial": pd.read_csv(deblend_adversarial_csv)})
                fig = deblend_figure(table, exp)
                pdf.savefig(fig)
                pngs.append(_save_png(fig, figure_dir / "deblending.png"))
            if real_csv is not None:
                _real_page(pdf, pd.read_csv(real_csv))
            for task, path in (real_thinned or {}).items():
                _real_thinned_page(pdf, task, pd.read_csv(path))
                gallery_path = path.with_name(REAL_GALLERY_NAME)
                if gallery_path.exists():
                    with np.load(gallery_path) as real_gallery:
                        for image in pd.read_csv(path)["image"].unique():
                            fig = real_gallery_figure(task, real_gallery, str(image))
                            if fig is not None:
                                pdf.savefig(fig)
                                plt.close(fig)
    return pngs


def _save_png(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path
