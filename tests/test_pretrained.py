"""The pretrained models shipped in resources/models: they load with the current code, say what they
are, give the right shapes, and the DN model improves on its input on a field simulated here."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from astropy.io import fits
from conftest import REPO, TINY, beta_sky

from xmmsr.cli import main
from xmmsr.errors import InputError
from xmmsr.evaluate import points
from xmmsr.metrics import poisson_deviance
from xmmsr.instrument.simulator import expected_image
from xmmsr.learn import TASKS, UPSCALE
from xmmsr.learn.checkpoint import load_model
from xmmsr.learn.predict import check_onnx, predict_counts
from xmmsr.evaluate.release import CARD_NAME
from xmmsr.learn.checkpoint import shipped_model
from xmmsr.sky.model import write_sky_model

SHIPPED = REPO / "resources" / "models"


@pytest.mark.parametrize("task", TASKS)
def test_shipped_models_load_and_say_what_they_are(task):
    path = shipped_model(task)
    assert path.resolve() == (SHIPPED / f"{task}.pt").resolve() and path.stat().st_size < 10_000_000
    raw = torch.load(path, map_location="cpu", weights_only=True)  # a plain dict, no pickled code
    assert raw["task"] == task and raw["software"].startswith("xmmsr ")
    assert raw["input_exposure_s"] == 20_000 and raw["target_exposure_s"] == 100_000
    assert raw["provenance"]["dataset_config_hash"] and raw["normalisation"]["method"]
    model = load_model(path)  # strict: an architecture change in the code that breaks the weights fails here
    assert model.task == task and model.normalisation.to_dict() == raw["normalisation"]
    counts = np.random.default_rng(0).poisson(0.2, (40, 52)).astype(np.float32)
    out = predict_counts(model, counts, 20_000.0)
    assert out.shape == (40 * UPSCALE[task], 52 * UPSCALE[task]) and np.isfinite(out).all() and out.min() >= 0
    onnx_model = onnx.load(str(SHIPPED / f"{task}.onnx"))
    assert {p.key: p.value for p in onnx_model.metadata_props}.get("xmmsr.task") == task
    assert not [p for n in onnx_model.graph.node for p in n.metadata_props if "stack_trace" in p.key]
    assert str(REPO).encode() not in (SHIPPED / f"{task}.onnx").read_bytes()  # no machine paths shipped
    check_onnx(SHIPPED / f"{task}.onnx")  # the graph matches its stored digest
    assert raw["digest"].startswith("sha256:")  # and load_model checked the weights against theirs
    card = (SHIPPED / CARD_NAME).read_text()
    assert f"`{task}.pt`" in card and "Known limits" in card
    for suffix in ("pt", "onnx"):  # the card's checksums are those of the shipped files
        assert f"`{hashlib.sha256((SHIPPED / f'{task}.{suffix}').read_bytes()).hexdigest()[:16]}…`" in card


def test_predict_uses_the_shipped_model_by_default(tmp_path, capsys):
    image = tmp_path / "in.fits"
    header = fits.Header({"EXPOSURE": 20_000.0})
    gti = fits.BinTableHDU.from_columns([fits.Column("START", "D", array=[0.0]),
                                         fits.Column("STOP", "D", array=[20_000.0])], name="STDGTI04")
    fits.HDUList([fits.PrimaryHDU(np.random.default_rng(1).poisson(0.3, (48, 40)).astype(np.int32), header),
                  gti]).writeto(image)
    assert main(["predict", "--task", "sr", "--input", str(image), "--output", str(tmp_path / "sr.fits")]) == 0
    assert fits.getdata(tmp_path / "sr.fits").shape == (96, 80)
    with fits.open(tmp_path / "sr.fits") as hdul:       # the input's good-time tables travel with it
        assert hdul["STDGTI04"].data["STOP"][0] == 20_000.0
    assert main(["predict", "--input", str(image), "--output", str(tmp_path / "x.fits")]) != 0
    assert "--task dn or --task sr" in capsys.readouterr().err
    with pytest.raises(InputError, match="no pretrained"):
        shipped_model("dn", root=tmp_path)


def test_shipped_dn_lowers_the_deviance_against_the_truth(instrument, tmp_path):
    """A cluster with an AGN, simulated here at 20 ks: the DN prediction is closer (Poisson deviance) to the
    noise-free 100 ks truth than the input scaled to 100 ks."""
    sky_path, events, image = tmp_path / "sky.fits", tmp_path / "ev.fits", tmp_path / "img.fits"
    sky = beta_sky(total_flux=1e-3, npix=600)
    write_sky_model(sky, sky_path)
    assert main(["simulate", "--sky", str(sky_path), "--exposure", "20000", "--resolution", "1", "--seed", "11",
                 "--output", str(events)]) == 0
    assert main(["bin", str(events), "--output", str(image)]) == 0
    counts = fits.getdata(image).astype(np.float32)
    truth = expected_image(sky, instrument, 100_000.0, 1)
    mask = instrument.geometry.detector_mask(1) > 0
    assert mask.shape == truth.shape == counts.shape
    pred = predict_counts(load_model(shipped_model("dn")), counts, 20_000.0)
    model_deviance = poisson_deviance(pred, truth, mask)
    input_deviance = poisson_deviance(np.maximum(counts * 5.0, 1e-8), truth, mask)
    assert model_deviance < 0.5 * input_deviance, (model_deviance, input_deviance)
    # the shipped-model contract: total counts within 5 % of the 20 ks counts x 5, and of the truth's
    for task in TASKS:
        total = float(predict_counts(load_model(shipped_model(task)), counts, 20_000.0).sum(dtype=np.float64))
        assert total == pytest.approx(5.0 * counts.sum(dtype=np.float64), rel=0.05), task
        assert total == pytest.approx(truth.sum(), rel=0.05), task


def test_release_of_a_run_copies_its_models_and_writes_the_card(tiny_run, tmp_path):
    from xmmsr.evaluate.release import TaskRun, write_release

    results = tiny_run / "results"
    # the pixel-loss summary stands in for an adversarial model's: the card's layout is what is tested here
    runs = [TaskRun(task, results / f"models/{task}/model.pt", results / f"models/{task}/model.onnx",
                    results / f"models/{task}/history.csv", results / f"metrics/{task}/summary.csv",
                    tiny_run / f"results/logs/train/{task}.log", purity=results / f"metrics/{task}/purity.csv",
                    adversarial=(results / f"metrics/{task}/summary.csv",) * 2,
                    calibration=results / f"metrics/{task}/uncertainty_calibration.json",
                    sources=results / f"metrics/{task}/sources.csv") for task in TASKS]
    card = write_release(runs, results / "dataset/xmmsr_dataset.h5", "config.yaml + tests/data/tiny.yaml",
                         tmp_path / "release")
    for task in TASKS:   # the run's model with the calibration its evaluation fitted on the val split
        released, trained = load_model(tmp_path / "release" / f"{task}.pt"), load_model(results / f"models/{task}/model.pt")
        assert released.task == task and trained.uncertainty_calibration is None
        for name, weights in trained.generator.state_dict().items():
            assert torch.equal(weights, released.generator.state_dict()[name]), name
        recorded = json.loads((results / f"metrics/{task}/uncertainty_calibration.json").read_text())
        assert released.uncertainty_calibration.to_dict() == recorded and recorded["split"] == "val"
        assert (tmp_path / "release" / f"{task}.onnx").read_bytes() == (results / f"models/{task}/model.onnx").read_bytes()
    text = card.read_text()
    assert text.count("| calibrated (shipped in the `.pt`; used by `--uncertainty`) |") == 2
    for fragment in ("| **model (RRDB)** |", "Gaussian smoothing (best width)", "false sources per field",
                     "Validation curve",
                     "Known limits", "train samples", "PSNR sqrt vs truth [dB]"):
        assert fragment in text, fragment
    assert str(tiny_run) not in text  # no machine paths in a shipped file
    assert text.count("Completeness at equal purity") == 2 and text.count("Adversarial loss:") == 2
    purity = pd.read_csv(results / "metrics/dn/purity.csv")
    row = purity[(purity["fields"] == "all") & (purity["method"] == "model_gated")].iloc[0]
    assert (f"| all ({row['n_fields']}) | **model, sources tested on the input** | {row['threshold']:.1f} | "
            f"{row['false_per_field']:.2f} | {row['completeness']:.2f} |") in text
    assert "| pixel loss + adversarial (ESRGAN), sources tested on the input |" in text
    assert text.count("Why detections are false") == 2   # per task, every method by cause
    assert text.count(points.describe_false_causes("`")) == 2   # the classes in the report's words
    causes = pd.read_csv(results / "metrics/sr/sources.csv")
    false = causes[(causes["method"] == "model") & (causes["source"] == "false_detection")]
    assert "| **model (RRDB)** | " + " | ".join(
        f"{(false['cause'] == c).sum() / causes['sample'].nunique():.2f}" for c in points.FALSE_CAUSES) in text
    assert text.count("With the source gate (`xmmsr predict --source-gate`") == 2
    # facts of this run, not of the shipped one: its exposures, its sources' brightness range, its PSF
    assert "Inputs (2 ks) and targets (10 ks)" in text and "20 ks" not in text.split("## Intended use")[0]
    from xmmsr.config import load_config

    sigma_b_max = load_config(TINY)["sources"]["extended"]["sigma_b"][1]
    assert f"up to {sigma_b_max:g}× the background" in text and "ELLBETA-like" in text
