"""Fine-tuning on real data: the workflow rules on the tiny config with two 'real' images made by the
simulator, and resume after a kill."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, TINY, beta_sky, make_instrument, snakemake, write_count_image
from test_learn import Kill, KillAtEpoch

from xmmsr.evaluate.consistency import degradation_kernel
from xmmsr.instrument.simulator import expected_image
from xmmsr.learn.checkpoint import load_model
from xmmsr.learn.finetune import FinetuneRun, RealPairs, finetune, pack_real
from xmmsr.thinning import ThinningPlan, real_images_from_config

FINETUNE = {"epochs": 2, "steps_per_epoch": 2, "batch_size": 2, "crop": 32, "lr": 1e-4, "warmup_steps": 1,
            "real_weight": 0.5, "start": "trained"}


@pytest.fixture(scope="module")
def real_config(tiny_run):
    """Two 'real' images (simulated 10 ks fields, one per split) and a config that fine-tunes on them."""
    instrument = make_instrument()
    grid = instrument.geometry.image_grid(1)
    folder = tiny_run / "real_images"
    folder.mkdir(exist_ok=True)
    paths = []
    for i, flux in enumerate((3e-3, 6e-3)):
        counts = np.random.default_rng(i).poisson(expected_image(beta_sky(total_flux=flux, npix=300), instrument,
                                                                 10_000.0, 1))
        path = folder / f"field{i}.fits"
        if not path.exists():
            write_count_image(path, counts, 10_000.0, grid=grid)
        paths.append(path)
    # one path relative to the workflow directory (the checkout), as users write them; one absolute
    relative = os.path.relpath(paths[0], REPO)
    real = {"images": [{"path": relative, "split": "train"}, {"path": str(paths[1]), "split": "val"}],
            "input_exposure_ks": 2.0, "max_input_fraction": 0.5, "finetune": FINETUNE}
    config = tiny_run / "real.yaml"
    config.write_text(yaml.safe_dump({"real": real}))
    return config, real


def test_finetune_and_real_scores_run_in_the_workflow(tiny_run, real_config):
    config, real = real_config
    target = "results/metrics/dn/real_thinned.csv"
    snakemake(tiny_run, target, "--cores", "2", "--configfile", str(TINY), str(config))
    table = pd.read_csv(tiny_run / target)
    assert list(table["method"]) == ["input", "gaussian", "adaptive_smoothing", "wavelet", "richardson_lucy", "model", "finetuned"]
    assert set(table["image"]) == {"field1"} and set(table["split"]) == {"val"}
    np.testing.assert_allclose(table["exposure_input"], 2000.0)
    assert table.set_index("method").at["input", "deviance"] > table.set_index("method").at["gaussian", "deviance"]
    model = load_model(tiny_run / "results/models/dn/finetuned.pt")
    assert model.provenance["finetuned_from"] == "model.pt"
    assert model.provenance["finetune_real_images"] == {"field0": "train", "field1": "val"}
    history = pd.read_csv(tiny_run / "results/models/dn/finetune_history.csv")
    assert len(history) == 2 and np.isfinite(history["val_real_deviance"]).all()
    # the trained model and the simulations are untouched: nothing else reruns
    nothing = snakemake(tiny_run, target, "-n", "--configfile", str(TINY), str(config))
    assert "Nothing to be done" in nothing.stdout + nothing.stderr


def test_real_pairs_are_thinned_afresh_per_draw_and_add_up(tiny_run, real_config, tmp_path):
    _, real = real_config
    packed = tmp_path / "real.h5"
    pack_real(real_images_from_config(real, REPO), packed)
    pairs = RealPairs(packed, "train", ThinningPlan(2000.0, 0.5), crop=32)
    a, b = pairs[(0, 1)], pairs[(0, 1)]
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = pairs[(0, 2)]
    assert not torch.equal(a["input"], c["input"])
    whole = RealPairs(packed, "train", ThinningPlan(2000.0, 0.5))[(0, 5)]
    assert float(whole["exposure_input"].max()) == pytest.approx(2000.0)
    assert float(whole["exposure_remainder"].max()) == pytest.approx(8000.0)
    total = whole["input"] + whole["remainder"]
    assert float(whole["input"].sum() / total.sum()) == pytest.approx(0.2, abs=0.02)
    # chip gaps and dead pixels (the CCD layout): outside the mask, zeros at the nominal exposure for the network
    outside = whole["mask"] == 0
    assert float(outside.float().mean()) > 0.05
    assert float(whole["input"][outside].abs().sum()) == 0.0
    gap_exposure = whole["exposure_input"][outside]
    assert float(gap_exposure.min()) == pytest.approx(2000.0) and float(gap_exposure.max()) == pytest.approx(2000.0)
    assert float(whole["exposure_remainder"][whole["exposure_remainder"] == 0].numel()) > 0   # the gaps
    assert bool(torch.all(whole["mask"][whole["exposure_remainder"] == 0] == 0))


def test_killed_finetune_resumes_to_the_uninterrupted_weights(tiny_run, real_config, tmp_path):
    _, real = real_config
    packed = tmp_path / "real.h5"
    pack_real(real_images_from_config(real, REPO), packed)
    cfg = yaml.safe_load(TINY.read_text())
    from xmmsr.config import load_config

    full_cfg = load_config(TINY)
    train_cfg = {**full_cfg["train"], "num_workers": 0}
    kernel = degradation_kernel(make_instrument(psf={"max_radius_arcsec": 60.0}), 2)
    ft = {**FINETUNE, "epochs": 3}

    def run(ckpt):
        return FinetuneRun("sr", tiny_run / "results/models/sr/model.pt", tiny_run / "results/dataset/xmmsr_dataset.h5",
                           packed, train_cfg, ft, ThinningPlan(2000.0, 0.5), 11, tmp_path / ckpt)

    assert cfg["model"]["features"] == 8
    full = finetune(run("full"), tmp_path / "full.pt", tmp_path / "full.csv", kernel, threads=1)
    with pytest.raises(Kill):
        finetune(run("ckpt"), tmp_path / "m.pt", tmp_path / "h.csv", kernel, threads=1, callbacks=[KillAtEpoch(2)])
    assert not (tmp_path / "m.pt").exists()
    resumed = finetune(run("ckpt"), tmp_path / "m.pt", tmp_path / "h.csv", kernel, threads=1)
    for (name, a), b in zip(full.generator.state_dict().items(), resumed.generator.state_dict().values()):
        assert torch.equal(a, b), name
    assert (tmp_path / "h.csv").read_text() == (tmp_path / "full.csv").read_text()
    start = load_model(tiny_run / "results/models/sr/model.pt")
    changed = any(not torch.equal(a, b) for a, b in zip(start.generator.state_dict().values(),
                                                         resumed.generator.state_dict().values()))
    assert changed


def test_report_has_a_real_data_page_per_task(tiny_run, real_config, tmp_path):
    import pypdf

    from xmmsr.config import load_config
    from xmmsr.evaluate.report import write_report

    scores = tiny_run / "results/metrics/dn/real_thinned.csv"
    if not scores.exists():  # made by the workflow test above
        config, _ = real_config
        snakemake(tiny_run, "results/metrics/dn/real_thinned.csv", "--cores", "2", "--configfile", str(TINY),
                  str(config))
    metrics_dir = tiny_run / "results/metrics/dn"
    write_report({"dn": metrics_dir}, {"dn": tiny_run / "results/models/dn/history.csv"}, load_config(TINY),
                 tmp_path / "report.pdf", tmp_path / "figures", real_thinned={"dn": scores})
    text = " ".join(page.extract_text() for page in pypdf.PdfReader(tmp_path / "report.pdf").pages)
    assert "DN on held-out real observations" in text and "finetuned" in text
    assert "unconfirmed" in text and "from nothing" in text
    held_out = set(pd.read_csv(scores)["image"])
    assert held_out and all(f"DN on the real image {name}" in text for name in held_out)
    with np.load(tiny_run / "results/metrics/dn/real_thinned_gallery.npz") as gallery:
        for name in held_out:
            remainder, mask = gallery[f"{name}/remainder"], gallery[f"{name}/mask"] > 0
            for method in ("input", "gaussian", "model", "finetuned"):
                # every prediction is of the remainder: same total to within the flux ratios in the table
                ratio = gallery[f"{name}/{method}"][mask].sum() / remainder[mask].sum()
                assert 0.5 < ratio < 2.0, (name, method, ratio)


def test_the_sr_forward_model_of_fine_tuning_is_the_consistency_checks():
    """Fine-tuning forward-models SR predictions to 1x exactly as evaluate-real and the consistency check
    do (the same kernel, a true convolution, 2x2 sums), with torch FFTs."""
    from xmmsr.evaluate.consistency import forward_model
    from xmmsr.learn.finetune import forward_to_1x

    kernel = degradation_kernel(make_instrument(), 2)
    pred = np.random.default_rng(3).gamma(0.5, 2.0, (96, 80))
    pred[40:44, 30:34] += 500.0   # a bright compact source near the middle
    expected = forward_model(pred, 2, kernel, 1.0, 1.0)
    got = forward_to_1x(torch.from_numpy(pred)[None, None], torch.from_numpy(kernel), 2)[0, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9 * pred.max())


def test_release_of_fine_tuned_models_names_the_real_data(tiny_run, real_config):
    """The fine-tuned models are released with ONNX exports and a card from the run's files: the real
    observations that trained them, the fine-tuning history and the held-out real scores."""
    from xmmsr.learn.predict import check_onnx

    config, _ = real_config
    snakemake(tiny_run, "release_finetuned", "--cores", "2", "--configfile", str(TINY), str(config))
    release = tiny_run / "results" / "release_finetuned"
    for task in ("dn", "sr"):
        assert load_model(release / f"{task}.pt").provenance["finetune_real_images"] == {"field0": "train",
                                                                                        "field1": "val"}
        check_onnx(release / f"{task}.onnx")
    card = (release / "MODEL_CARD.md").read_text()
    assert "Fine-tuning on real pn observations" in card and "Real training observations: field0" in card
    # this run trained the models it fine-tuned: the simulation training's validation curve is in the card
    assert card.count("Validation curve (masked PSNR") == 2 and "is in the card released with" not in card
    assert "| calibrated (shipped in the `.pt`; used by `--uncertainty`) |" in card
    assert card.count("Why detections are false") == 2   # from the fine-tuned models' own evaluation
    assert load_model(release / "dn.pt").uncertainty_calibration.split == "val"
    assert "fine-tuned on 1 real observation(s) (field0)" in card and "Trained on simulations only" not in card
    history = pd.read_csv(tiny_run / "results/models/dn/finetune_history.csv")
    assert f"{history['val_real_deviance'].iloc[-1]:.4f}" in card       # figures from the run's own files
    scores = pd.read_csv(tiny_run / "results/metrics/dn/real_thinned.csv").set_index("method")
    assert f"{scores.at['finetuned', 'deviance']:.4f}" in card and "**this model**" in card
    # the point sources of each method, tested on the remainder
    assert "| point sources | from nothing |" in card
    assert f"| {scores.at['finetuned', 'sources']} | {scores.at['finetuned', 'from_nothing']:.1f} |" in card
    assert np.all(scores["from_nothing"] >= scores["no_excess"]) and np.all(scores["unconfirmed"] <= scores["sources"])


def test_a_finished_finetune_is_not_resumed_on_other_real_data(tiny_run, real_config, tmp_path, capsys):
    """The checkpoints of a fine-tuning are resumed only for the same real data: repacked images with other
    exposures (here: the CCD layout without its dead pixels) start afresh instead of returning the old
    weights."""
    from dataclasses import replace

    from xmmsr.config import load_config
    from xmmsr.instrument.exposure import default_geometry
    from xmmsr.learn.finetune import real_data_digest

    _, real = real_config
    images = real_images_from_config(real, REPO)
    packed, other = tmp_path / "real.h5", tmp_path / "other.h5"
    pack_real(images, packed)
    pack_real(images, other, replace(default_geometry(), dead_pixels=()))
    assert real_data_digest(packed) != real_data_digest(other)
    pack_real(images, tmp_path / "again.h5")
    assert real_data_digest(tmp_path / "again.h5") == real_data_digest(packed)
    train_cfg = {**load_config(TINY)["train"], "num_workers": 0}
    ft = {**FINETUNE, "epochs": 1}

    def run(data):
        return FinetuneRun("dn", tiny_run / "results/models/dn/model.pt", tiny_run / "results/dataset/xmmsr_dataset.h5",
                           data, train_cfg, ft, ThinningPlan(2000.0, 0.5), 3, tmp_path / "ckpt")

    finetune(run(packed), tmp_path / "a.pt", tmp_path / "a.csv", threads=1)
    capsys.readouterr()
    finetune(run(packed), tmp_path / "b.pt", tmp_path / "b.csv", threads=1)
    assert "resuming from" in capsys.readouterr().out
    finetune(run(other), tmp_path / "c.pt", tmp_path / "c.csv", threads=1)
    out = capsys.readouterr().out
    assert "belong to another configuration" in out and "resuming from" not in out
