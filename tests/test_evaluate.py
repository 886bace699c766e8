"""Evaluation stage: metric files of the tiny end-to-end run, the PDF report, real-data pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from astropy.io import fits
from conftest import TINY, snakemake

from xmmsr.cli import main
from xmmsr.metrics import coverage_mask
from xmmsr.evaluate import methods, points
from xmmsr.learn.checkpoint import TrainedModel, save_model
from xmmsr.learn.model import Architecture, build_generator
from xmmsr.learn.normalise import Normalisation

BASELINES = {"dn": ("input", "gaussian", "adaptive_smoothing", "wavelet", "richardson_lucy", "model", "model_gated",
                    "truth"),
             "sr": ("input", "bicubic", "gaussian", "adaptive_smoothing", "wavelet", "richardson_lucy", "model",
                    "model_gated", "truth")}


def test_metric_files_hold_the_model_and_every_baseline(tiny_run):
    for task, expected_methods in BASELINES.items():
        out = tiny_run / "results" / "metrics" / task
        per_image = pd.read_csv(out / "per_image.csv")
        assert set(per_image["method"]) == set(expected_methods)
        assert per_image["sample"].nunique() == 1  # the one test source of the tiny config
        for column in ("psnr_asinh_vs_expected", "ssim_linear_vs_target", "deviance_vs_target", "completeness",
                       "n_false", "consistency_deviance", "flux_ratio"):
            assert column in per_image.columns
        finite = per_image[per_image["method"] != "truth"]
        assert np.isfinite(finite["psnr_asinh_vs_expected"]).all()
        truth = per_image[per_image["method"] == "truth"].iloc[0]
        assert truth["flux_ratio"] == pytest.approx(1.0) and truth["n_false"] == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["provenance"]["task"] == task and summary["provenance"]["dataset"]["n_test"] == 1
        assert summary["provenance"]["gaussian_sigma_px"] > 0
        tuned = summary["provenance"]["tuned_parameters"]   # chosen on val among the configured candidates
        assert tuned["adaptive_smoothing"] in (2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 14.0)
        assert tuned["wavelet"] in (0.125, 0.1875, 0.25, 0.375, 0.5, 0.75, 1.0) and tuned["gaussian"] == summary["provenance"][
            "gaussian_sigma_px"]
        table = pd.read_csv(out / "summary.csv")
        assert {"all", "kind", "brightness"} <= set(table["group"])
        sources = pd.read_csv(out / "sources.csv")   # every true source per method, and every false detection
        assert set(sources["source"]) <= {"true_source", "false_detection"} and "truth" not in set(sources["method"])
        false = sources["source"] == "false_detection"   # each false detection with its cause, no true source
        assert set(sources.loc[false, "cause"]) <= set(points.FALSE_CAUSES) and sources.loc[~false, "cause"].isna().all()
        for method, part in sources.groupby("method"):
            row = per_image[per_image["method"] == method].iloc[0]
            assert (part["source"] == "false_detection").sum() == row["n_false"]
            assert part["found"].sum() == row["n_matched"] and (part["source"] == "true_source").sum() == row["n_true"]
        assert sources["offaxis_arcmin"].between(0, 22).all()  # the image corners lie 20' from the axis
        # each true source is matched within one FWHM, on the 2x grid widened to its error circle in the input
        # but never beyond the 1x FWHM (twice the 2x one)
        fwhm_arcsec = summary["provenance"]["psf_fwhm_px"] * summary["provenance"]["pixel_arcsec"]
        true = sources["source"] == "true_source"
        radius = sources.loc[true, "match_radius_arcsec"]
        assert radius.between(fwhm_arcsec * (1 - 1e-5), fwhm_arcsec * (2.02 if task == "sr" else 1 + 1e-5)).all()   # 6 digits
        assert sources.loc[~true, "match_radius_arcsec"].isna().all()
        found = sources["found"].astype(bool)
        assert (sources.loc[found, "detected_significance"] >= 5.0).all()
        assert sources.loc[~found & (sources["source"] == "true_source"), "detected_significance"].isna().all()
        purity = pd.read_csv(out / "purity.csv")   # completeness at equal purity
        kinds = per_image.drop_duplicates("sample")["kind"]
        assert set(purity["fields"]) == ({"all"} | ({"without extended sources"} if (kinds != "extended").any()
                                                    else set()))
        purity = purity[purity["fields"] == "all"].set_index("method")
        assert set(purity.index) == set(expected_methods) - {"truth"}
        assert (purity["threshold"] >= 5.0).all() and (purity["false_per_field"] <= 0.1 + 1e-9).all()
        assert (purity["completeness"] <= purity["completeness_at_nsigma"] + 1e-9).all()
        for method, row in purity.iterrows():   # at the default threshold: the per-image figures (one image)
            image = per_image[per_image["method"] == method].iloc[0]
            assert row["false_per_field_at_nsigma"] == image["n_false"]
            assert row["completeness_at_nsigma"] == pytest.approx(image["completeness"], nan_ok=True)
        assert {"mean", "median", "p16", "p84", "n"} <= set(table.columns)


def test_report_pdf_has_every_page_and_names_models_and_baselines(tiny_run):
    pypdf = pytest.importorskip("pypdf")
    pdf = tiny_run / "results" / "report" / "evaluation.pdf"
    reader = pypdf.PdfReader(pdf)
    # provenance; per task: table, breakdown, points/consistency, sources, false causes, equal purity; curves;
    # one gallery page per task; de-blending
    assert len(reader.pages) == 1 + 2 * 6 + 1 + 2 + 1
    text = "\n".join(page.extract_text() for page in reader.pages)
    for needle in ("De-noising (DN)", "Super-resolution (SR)", "Training and validation curves",
                   "de-blending close point-source pairs", "point sources lost and invented",
                   "point sources and data consistency", "config hash", "why detections are false", "completeness at equal purity",
                   *[m.label for m in methods.REGISTRY.values() if m.name not in ("finetuned", "model_adversarial")]):
        assert needle in text, needle
    # the run's own exposures (2 ks -> 10 ks in the tiny config), never the default 20 ks -> 100 ks
    assert "2 ks → 10 ks" in text and "2 ks at 4\" → 10 ks at 2\"" in text
    assert "100 ks" not in text and "20 ks" not in text
    figures = sorted(p.name for p in (tiny_run / "results" / "report" / "figures").glob("*.png"))
    assert figures == ["deblending.png", "gallery_dn.png", "gallery_sr.png", "metrics_dn.png", "metrics_sr.png",
                       "training_curves.png"]


def test_report_is_reproducible(tiny_run, tmp_path):
    """Re-running the report rule gives the same bytes (no wall-clock time in the PDF)."""
    pdf = tiny_run / "results" / "report" / "evaluation.pdf"
    before = pdf.read_bytes()
    snakemake(tiny_run, "--cores", "1", "--configfile", str(TINY), "--forcerun", "report")
    assert pdf.read_bytes() == before


def test_html_report_builds(tiny_run, tmp_path):
    out = tmp_path / "report.zip"
    snakemake(tiny_run, "--configfile", str(TINY), "--report", str(out))
    assert out.stat().st_size > 10_000


# --- real pairs ---------------------------------------------------------------------------------------


def _tiny_dn_model(path: Path) -> Path:
    torch.manual_seed(0)
    arch = Architecture("dn", features=8, growth=8, blocks=1, dense_blocks=1)
    save_model(path, TrainedModel(build_generator(arch), arch, Normalisation(), 2e4, 1e5))
    return path


def _pair(tmp_path: Path, shape=(64, 72)) -> tuple[Path, Path]:
    """A flat field with a bright blob, observed twice with independent Poisson noise (10 and 40 ks)."""
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    rate = 2e-6 + 5e-4 * np.exp(-((yy - 30) ** 2 + (xx - 40) ** 2) / 20.0)  # counts/s/pixel
    rate[:, :4] = 0.0  # outside the field of view
    paths = []
    for name, exposure in (("short", 1e4), ("long", 4e4)):
        header = fits.Header({"EXPOSURE": exposure})
        path = tmp_path / f"{name}.fits"
        fits.PrimaryHDU(rng.poisson(rate * exposure).astype(np.int32), header=header).writeto(path)
        paths.append(path)
    return paths[0], paths[1]


def test_evaluate_real_scores_a_hand_made_pair(tmp_path, capsys):
    model = _tiny_dn_model(tmp_path / "dn.pt")
    short, long = _pair(tmp_path)
    out = tmp_path / "real.csv"
    assert main(["evaluate-real", "--model", str(model), "--short", str(short), "--long", str(long),
                 "--output", str(out)]) == 0
    table = pd.read_csv(out).set_index("method")
    assert list(table.index) == ["input", "gaussian", "adaptive_smoothing", "wavelet", "richardson_lucy", "model"]
    assert (table["exposure_long"] == 4e4).all() and (table["exposure_short"] == 1e4).all()
    # smoothing a flat field with a smooth blob beats the raw 10 ks counts against the independent 40 ks counts
    assert table.at["gaussian", "deviance_vs_long"] < table.at["input", "deviance_vs_long"]
    assert table.at["input", "flux_ratio"] == pytest.approx(1.0, abs=0.15)
    assert table.at["input", "psnr_gain_vs_input_percent"] == 0.0
    assert "PSNR vs the long exposure" in capsys.readouterr().out


def test_evaluate_real_rejects_mismatched_pairs(tmp_path, capsys):
    model = _tiny_dn_model(tmp_path / "dn.pt")
    short, long = _pair(tmp_path)
    other = tmp_path / "other.fits"
    fits.PrimaryHDU(np.zeros((10, 10), np.int32), header=fits.Header({"EXPOSURE": 4e4})).writeto(other)
    code = main(["evaluate-real", "--model", str(model), "--short", str(short), "--long", str(other),
                 "--output", str(tmp_path / "x.csv")])
    assert code == 2 and "NAXIS1/NAXIS2" in capsys.readouterr().err
    code = main(["evaluate-real", "--model", str(model), "--short", str(long), "--long", str(short),
                 "--output", str(tmp_path / "x.csv")])
    assert code == 2 and "EXPOSURE" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_coverage_mask_is_the_common_footprint():
    a = np.zeros((20, 20))
    b = np.zeros((20, 20))
    a[2:18, 2:18] = np.random.default_rng(1).poisson(2.0, (16, 16))
    b[5:20, 0:15] = 3.0
    mask = coverage_mask(a, b)
    assert mask[10, 10] and not mask[1, 1] and not mask[19, 19] and not mask[3, 3]


def test_real_pairs_in_the_config_add_the_rule(tmp_path):
    short, long = _pair(tmp_path)
    config = tmp_path / "real.yaml"
    config.write_text(TINY.read_text() + f"evaluate:\n  real_pairs: [{{name: t, short: {short}, long: {long}}}]\n")
    result = snakemake(tmp_path, "-n", "--configfile", str(config))
    assert "evaluate_real" in result.stdout + result.stderr


def test_one_registry_names_every_method_and_drops_none(tiny_run):
    """Every method the evaluation scores is registered (label, tasks, role), and a method outside the
    registry keeps its name instead of vanishing from tables."""
    for task in ("dn", "sr"):
        scored = set(pd.read_csv(tiny_run / f"results/metrics/{task}/per_image.csv")["method"])
        assert scored <= set(methods.REGISTRY), scored - set(methods.REGISTRY)
        assert {m.name for m in methods.baselines_for(task)} | {"model", "model_gated", "truth"} == scored
    assert methods.ordered(["model", "my_method", "input"]) == ["input", "model", "my_method"]
    assert methods.label("my_method") == "my_method" and methods.role("my_method") == "model"


def test_report_compares_the_adversarial_model_side_by_side(tiny_run, tmp_path):
    pypdf = pytest.importorskip("pypdf")
    from xmmsr.config import load_config
    from xmmsr.evaluate.report import write_report

    results = tiny_run / "results"
    dirs = {t: results / "metrics" / t for t in ("dn", "sr")}
    histories = {t: results / "models" / t / "history.csv" for t in ("dn", "sr")}
    # the pixel-loss metrics stand in for an adversarial model's: the page's layout is what is tested here
    deblend = results / "metrics" / "sr" / "deblend.csv"
    pngs = write_report(dirs, histories, load_config(TINY), tmp_path / "r.pdf", tmp_path / "figures",
                        deblend_csv=deblend, adversarial_dirs={"sr": dirs["sr"]}, deblend_adversarial_csv=deblend)
    assert "adversarial_sr.png" in [p.name for p in pngs]
    text = "\n".join(page.extract_text() for page in pypdf.PdfReader(tmp_path / "r.pdf").pages)
    assert "pixel loss against pixel + adversarial loss" in text and "adversarial model" in text
    assert "model + adversarial (ESRGAN)" in text   # its de-blending curve beside the pixel-loss model's


def test_deblending_tables_of_two_models_join_only_when_drawn_alike():
    from xmmsr.evaluate.tables import deblend_with_models

    rows = [(sep, method, frac) for sep in (1.0, 2.0) for method, frac in
            (("input", 0.2), ("richardson_lucy", 0.4), ("model", 0.1), ("truth", 1.0))]
    table = pd.DataFrame(rows, columns=["separation_fwhm", "method", "resolved_fraction"]).assign(flux_ratio=1.0)
    other = table.assign(resolved_fraction=np.where(table["method"] == "model", 0.7, table["resolved_fraction"]))
    joined = deblend_with_models(table, {"model_adversarial": other})
    assert len(joined) == len(table) + 2
    assert joined[joined["method"] == "model_adversarial"]["resolved_fraction"].tolist() == [0.7, 0.7]
    assert joined[joined["method"] == "model"]["resolved_fraction"].tolist() == [0.1, 0.1]
    redrawn = other.assign(resolved_fraction=other["resolved_fraction"] + (other["method"] == "input") * 0.05)
    with pytest.raises(ValueError, match="model_adversarial.*other draws"):
        deblend_with_models(table, {"model_adversarial": redrawn})


@pytest.mark.parametrize("s", [1, 2])
def test_off_axis_map_of_a_padded_frame_is_the_grids_where_the_grid_sits(instrument, s):
    """The training set's frames hold the image grid centred (1x offset rounded down, 2x twice it): the
    evaluation's off-axis and azimuth maps follow it, so listed sources get their own angle and PSF."""
    from xmmsr.evaluate.run import frame_direction
    from xmmsr.instrument.simulator import offaxis_arcmin

    g = instrument.geometry
    cx, cy = g.image_grid(s).centers()
    grid = offaxis_arcmin(instrument, cx[None, :], cy[:, None])
    azimuth = np.arctan2(cy[:, None] - g.axis_y_arcsec, cx[None, :] - g.axis_x_arcsec)
    frame, frame_azimuth = frame_direction(instrument, s, (416 * s, 416 * s))
    cx1, cy1 = g.image_grid(1).centers()
    y0, x0 = s * ((416 - cy1.size) // 2), s * ((416 - cx1.size) // 2)
    assert (y0, x0) != (0, 0)
    window = (slice(y0, y0 + grid.shape[0]), slice(x0, x0 + grid.shape[1]))
    np.testing.assert_allclose(frame[window], grid, rtol=1e-12)
    np.testing.assert_allclose(frame_azimuth[window], azimuth, atol=1e-12)
