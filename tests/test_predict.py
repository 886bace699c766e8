"""Inference: `xmmsr predict` on SAS-like and simulated images, tiling, WCS on the 2x grid, bad inputs, ONNX."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS
from conftest import beta_sky

import xmmsr
from xmmsr.learn.gate import default_gate
from xmmsr import __version__
from xmmsr.cli import main
from xmmsr.errors import InputError
from xmmsr.learn.checkpoint import TrainedModel, content_digest, load_model, save_model, write_torch_file
from xmmsr.learn.model import Architecture, build_generator
from xmmsr.learn.normalise import Normalisation
from xmmsr.instrument.exposure import image_exposure
from xmmsr.learn.predict import export_onnx, predict_counts, predict_file, receptive_radius
from xmmsr.sky.model import write_sky_model

INPUT_EXPOSURE, TARGET_EXPOSURE = 20_000.0, 100_000.0
SAS_SHAPE = (411, 403)  # numpy (rows, columns) of a pn evselect image binned by 80 DETX/DETY units
LTM, CRVAL_PHYS = 1 / 80, (24841.0, 25441.0)  # physical (sky X/Y, 0.05") of image pixel 1 = CRVAL1L/2L


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot when another process holds the CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model(task: str, seed: int = 0) -> TrainedModel:
    torch.manual_seed(seed)
    arch = Architecture(task, features=8, growth=8, blocks=1, dense_blocks=1)
    return TrainedModel(build_generator(arch).eval(), arch, Normalisation("asinh", 5e-5), INPUT_EXPOSURE,
                        TARGET_EXPOSURE)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    paths = {task: root / f"{task}.pt" for task in ("dn", "sr")}
    for task, path in paths.items():
        save_model(path, tiny_model(task))
    return paths


def sas_header(exposure: float | None = INPUT_EXPOSURE, pixel_arcsec: float = 4.0) -> fits.Header:
    """A header as SAS evselect writes it for an image binned on sky X/Y: TAN WCS, LTM/LTV, physical WCS 'L'."""
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = 150.1, 2.2
    h["CRPIX1"], h["CRPIX2"] = 180.37, 230.81
    h["CDELT1"], h["CDELT2"] = -pixel_arcsec / 3600, pixel_arcsec / 3600
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["RADESYS"], h["EQUINOX"] = "FK5", 2000.0
    h["LTM1_1"], h["LTM2_2"] = LTM, LTM
    h["LTV1"], h["LTV2"] = 1 - LTM * CRVAL_PHYS[0], 1 - LTM * CRVAL_PHYS[1]
    h["WCSNAMEL"], h["WCSAXESL"] = "PHYSICAL", 2
    h["CTYPE1L"], h["CTYPE2L"] = "X", "Y"
    h["CRPIX1L"], h["CRPIX2L"] = 1.0, 1.0
    h["CRVAL1L"], h["CRVAL2L"] = CRVAL_PHYS
    h["CDELT1L"], h["CDELT2L"] = 1 / LTM, 1 / LTM
    h["TELESCOP"], h["INSTRUME"], h["OBS_ID"] = "XMM", "EPN", "0123456789"
    if exposure is not None:
        h["EXPOSURE"] = (exposure, "[s]")
    return h


def sas_counts(shape: tuple[int, int] = SAS_SHAPE, seed: int = 1) -> np.ndarray:
    """Poisson counts with a bright blob off-centre (asymmetric, so flips and transposes show)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    mean = 0.05 + 40 * np.exp(-((xx - 0.3 * shape[1]) ** 2 + (yy - 0.6 * shape[0]) ** 2) / (2 * 6.0 ** 2))
    return rng.poisson(mean).astype(np.int32)


def write_image(path: Path, data: np.ndarray, header: fits.Header) -> Path:
    fits.PrimaryHDU(data, header=header).writeto(path)
    return path


def run(args: list) -> int:
    return main([str(a) for a in args])


def assert_same_sky(h_in: fits.Header, h_out: fits.Header, s: int, x: np.ndarray, y: np.ndarray,
                    key: str = " ", atol: float = 1e-6) -> None:
    """World coordinates of input pixel (x, y) (0-based) equal those of output pixel (s x + (s-1)/2, ...)."""
    shift = (s - 1) / 2
    w_in, w_out = WCS(h_in, key=key), WCS(h_out, key=key)
    for a, b in zip(w_in.pixel_to_world_values(x, y), w_out.pixel_to_world_values(s * x + shift, s * y + shift),
                    strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=atol)


def reference(model: TrainedModel, counts: np.ndarray, exposure: float) -> np.ndarray:
    """The whole image through the generator, no padding nor tiling."""
    norm, s = model.normalisation, model.upscale
    with torch.no_grad():
        y = model.generator(norm.forward(torch.as_tensor(counts, dtype=torch.float32), exposure)[None, None])[0, 0]
    return norm.inverse(y, model.target_exposure_s, upscale=s).clamp(min=0).numpy()


@pytest.mark.parametrize("task", ["dn", "sr"])
def test_predict_sas_image_through_the_cli(task, model_files, tmp_path, capsys):
    counts, header = sas_counts(), sas_header()
    image = write_image(tmp_path / "in.fits", counts, header)
    out = tmp_path / "out.fits"
    # the network's output as it is (the source gate off): compared with the generator below
    assert run(["predict", "--model", model_files[task], "--input", image, "--output", out, "--source-gate", 0]) == 0
    assert f"{task} prediction" in capsys.readouterr().out
    s = 2 if task == "sr" else 1
    with fits.open(out) as hdul:
        data, h = hdul[0].data, hdul[0].header
    assert data.shape == (SAS_SHAPE[0] * s, SAS_SHAPE[1] * s) and data.dtype.kind == "f"
    assert np.isfinite(data).all() and data.min() >= 0 and data.max() > 0
    assert (h["EXPOSURE"], h["BUNIT"], h["RESMULT"], h["MODTASK"]) == (TARGET_EXPOSURE, "count", s, task)
    assert h["INEXPOS"] == INPUT_EXPOSURE and h["MODINEXP"] == INPUT_EXPOSURE and h["NORMMETH"] == "asinh"
    assert h["CREATOR"] == f"xmmsr {__version__}" and "predict" in str(h["HISTORY"])
    assert (h["TELESCOP"], h["OBS_ID"]) == ("XMM", "0123456789") and h["GATESIG"] == 0.0

    # values and orientation: the generator applied to the whole image, away from the padded edges
    model = load_model(model_files[task])
    ref = reference(model, counts, INPUT_EXPOSURE)
    margin = s * (receptive_radius(model.architecture) + 3)
    # flux conservation: the total is the input's counts at the target exposure; the shape is the network's
    conserved = counts.sum() * TARGET_EXPOSURE / INPUT_EXPOSURE
    assert data.sum(dtype=np.float64) == pytest.approx(conserved, rel=1e-4)
    np.testing.assert_allclose(data[:-margin, :-margin], (ref * conserved / ref.sum())[:-margin, :-margin],
                               rtol=1e-3, atol=1e-6)  # the padded edges differ, and so the totals slightly
    np.testing.assert_allclose(predict_counts(model, counts, INPUT_EXPOSURE, conserve_flux=False)[:-margin, :-margin],
                               ref[:-margin, :-margin], rtol=1e-4, atol=1e-6)

    # WCS: the same sky at the same place of the image, on the finer grid for SR
    x = np.array([0.0, 17.0, 201.3, 402.0])
    y = np.array([0.0, 300.0, 99.7, 410.0])
    assert_same_sky(header, h, s, x, y)
    assert_same_sky(header, h, s, x, y, key="L", atol=1e-9)  # the physical (sky X/Y) alternate WCS
    np.testing.assert_allclose(WCS(h).proj_plane_pixel_scales()[0].to_value("arcsec"), 4.0 / s)
    # IRAF physical coordinates: image = LTM phys + LTV (1-based image pixels)
    shift = (s - 1) / 2
    phys_in = [(v + 1 - header[f"LTV{i}"]) / header[f"LTM{i}_{i}"] for i, v in ((1, x), (2, y))]
    phys_out = [(s * v + shift + 1 - h[f"LTV{i}"]) / h[f"LTM{i}_{i}"] for i, v in ((1, x), (2, y))]
    np.testing.assert_allclose(phys_out, phys_in, rtol=1e-12)
    assert phys_in[0][0] == pytest.approx(CRVAL_PHYS[0]) and phys_in[1][0] == pytest.approx(CRVAL_PHYS[1])
    if s == 2:
        assert h["CRPIX1"] == pytest.approx(2 * header["CRPIX1"] - 0.5)
        assert h["CDELT2"] == pytest.approx(header["CDELT2"] / 2) and h["CDELT1L"] == pytest.approx(40.0)
        assert h["LTV1"] == pytest.approx(2 * header["LTV1"] - 0.5) and h["LTM2_2"] == pytest.approx(2 * LTM)
        assert h["CRPIX1L"] == 1.5


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
def test_predict_simulated_image(model_files, tmp_path):
    sky, events, image = tmp_path / "sky.fits", tmp_path / "ev.fits", tmp_path / "img.fits"
    write_sky_model(beta_sky(npix=300), sky)
    assert run(["simulate", "--sky", sky, "--exposure", 20000, "--resolution", 1, "--seed", 3,
                "--output", events]) == 0
    assert run(["bin", events, "--output", image]) == 0
    with fits.open(image) as hdul:
        counts, header = hdul[0].data, hdul[0].header
    assert "PC1_1" in header  # the simulated WCS is PC + CDELT: the SR output must scale CDELT
    # the binned DETX/DETY image gets the CCD layout: no exposure in the gaps and on dead pixels
    exposure = image_exposure(header, counts.shape, 20000.0)
    assert exposure.source == "EXPOSURE x CCD layout"
    footprint = exposure.seconds > 0.01 * exposure.reference_s
    for task, s in (("dn", 1), ("sr", 2)):
        out = predict_file(model_files[task], image, tmp_path / f"{task}.fits", device="cpu")
        with fits.open(out) as hdul:
            data, h = hdul[0].data, hdul[0].header
        assert data.shape == (counts.shape[0] * s, counts.shape[1] * s) and h["EXPOSURE"] == TARGET_EXPOSURE
        assert np.isfinite(data).all() and data.min() >= 0
        assert h["GATESIG"] == 0.0   # the network's output unless --source-gate asks for the gate
        assert h["EXPSRC"] == "EXPOSURE x CCD layout"
        assert not data[~np.kron(footprint, np.ones((s, s), dtype=bool))].any()
        np.testing.assert_allclose(data, predict_counts(load_model(model_files[task]), counts, exposure.seconds,
                                                        footprint=footprint), rtol=1e-6)
        gated = predict_file(model_files[task], image, tmp_path / f"{task}_gated.fits", device="cpu", source_gate=3.0)
        with fits.open(gated) as hdul:
            assert hdul[0].header["GATESIG"] == 3.0
            np.testing.assert_allclose(hdul[0].data, predict_counts(load_model(model_files[task]), counts,
                                                                    exposure.seconds, footprint=footprint,
                                                                    gate=default_gate(s, 3.0)), rtol=1e-6)
        px = np.array([10.0, 200.0, 390.0])
        assert_same_sky(header, h, s, px, px[::-1])


def test_flux_conservation_uses_the_per_pixel_exposure():
    model = tiny_model("sr", seed=1)
    counts = np.random.default_rng(3).poisson(0.4, (40, 44)).astype(float)
    seconds = np.full(counts.shape, INPUT_EXPOSURE)
    seconds[:, 22:] /= 2  # a CCD with half the exposure: its counts stand for twice the rate
    out = predict_counts(model, counts, seconds)
    expected = (counts[:, :22].sum() + 2 * counts[:, 22:].sum()) * TARGET_EXPOSURE / INPUT_EXPOSURE
    assert out.sum(dtype=np.float64) == pytest.approx(expected, rel=1e-5)
    assert not predict_counts(model, np.zeros((40, 44)), INPUT_EXPOSURE).any()  # no counts, no flux
    # a footprint: nothing predicted outside it, and the input's counts conserved within it
    footprint = np.ones(counts.shape, dtype=bool)
    footprint[:, :5] = footprint[30:, :] = False
    inside = np.where(footprint, counts, 0.0)
    out = predict_counts(model, inside, INPUT_EXPOSURE, footprint=footprint)
    big = np.repeat(np.repeat(footprint, 2, axis=0), 2, axis=1)
    assert not out[~big].any() and out[big].sum(dtype=np.float64) == pytest.approx(5 * inside.sum(), rel=1e-5)
    with pytest.raises(ValueError, match="footprint shape"):
        predict_counts(model, counts, INPUT_EXPOSURE, footprint=footprint[:, 1:])


def test_bootstrap_uncertainty_is_calibrated_for_an_unbiased_estimator(monkeypatch):
    """With a 'model' that is the scaled input itself (unbiased, its error the input's Poisson noise), the
    bootstrap spread is that noise: the truth lies within +-1 sigma in 68 % of the pixels."""
    import xmmsr.learn.predict as predict_module
    from xmmsr.learn.predict import predict_uncertainty
    from xmmsr.metrics import interval_coverage

    monkeypatch.setattr(predict_module, "predict_counts", lambda m, c, e, **k: np.asarray(c) * (1e5 / np.asarray(e)))
    model = tiny_model("dn")
    rng = np.random.default_rng(8)
    rate = rng.uniform(20.0, 200.0, (64, 64))    # expected input counts
    counts = rng.poisson(rate).astype(float)
    sigma = predict_uncertainty(model, counts, INPUT_EXPOSURE, draws=40, seed=2)
    truth = rate * TARGET_EXPOSURE / INPUT_EXPOSURE
    pred = counts * TARGET_EXPOSURE / INPUT_EXPOSURE
    assert interval_coverage(pred, sigma, truth, np.ones(rate.shape, bool)) == pytest.approx(0.683, abs=0.04)
    assert interval_coverage(pred, sigma, truth, np.ones(rate.shape, bool), 2.0) == pytest.approx(0.954, abs=0.03)
    np.testing.assert_array_equal(sigma, predict_uncertainty(model, counts, INPUT_EXPOSURE, draws=40, seed=2))
    with pytest.raises(ValueError, match="draws"):
        predict_uncertainty(model, counts, INPUT_EXPOSURE, draws=1)


@pytest.mark.parametrize("task", ["dn", "sr"])
def test_predict_writes_the_uncertainty_beside_the_prediction(task, model_files, tmp_path, capsys):
    image = write_image(tmp_path / "in.fits", sas_counts(), sas_header())
    out, sigma = tmp_path / "out.fits", tmp_path / "out_sigma.fits"
    assert run(["predict", "--model", model_files[task], "--input", image, "--output", out, "--uncertainty", sigma,
                "--draws", 3, "--seed", 5]) == 0
    assert "1-sigma uncertainty (3 bootstrap draws)" in capsys.readouterr().out
    data, s_data, s_head = fits.getdata(out), fits.getdata(sigma), fits.getheader(sigma)
    assert s_data.shape == data.shape and np.isfinite(s_data).all() and s_data.min() >= 0 and s_data.max() > 0
    assert (s_head["UNCDRAWS"], s_head["UNCSEED"], s_head["PREDFILE"]) == (3, 5, "out.fits")
    assert s_head["RESMULT"] == fits.getheader(out)["RESMULT"]
    assert run(["predict", "--model", model_files[task], "--input", image, "--output", tmp_path / "b.fits",
                "--uncertainty", tmp_path / "b.fits"]) == 2
    assert "is also given as --output" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(["predict", "--model", model_files[task], "--input", image, "--output", tmp_path / "c.fits",
             "--uncertainty", tmp_path / "c_sigma.fits", "--draws", 1])
    assert "needs at least 2 draws" in capsys.readouterr().err


def test_a_calibrated_model_scales_its_uncertainty(model_files, tmp_path):
    """A model file with an uncertainty calibration (as the release writes it) keeps it through save and load,
    and --uncertainty writes the bootstrap sigma times the factor of each pixel's bin, said in the header."""
    from dataclasses import replace

    from xmmsr.learn.calibration import UncertaintyCalibration

    cal = UncertaintyCalibration(edges=(0.5,), scales=(1.5, 2.5), pixels=1000)
    calibrated = tmp_path / "calibrated.pt"
    save_model(calibrated, replace(load_model(model_files["dn"]), uncertainty_calibration=cal))
    assert load_model(calibrated).uncertainty_calibration == cal
    assert load_model(model_files["dn"]).uncertainty_calibration is None
    image = write_image(tmp_path / "in.fits", sas_counts(), sas_header())
    for model, name in ((model_files["dn"], "raw"), (calibrated, "cal")):
        assert run(["predict", "--model", model, "--input", image, "--output", tmp_path / f"{name}.fits",
                    "--uncertainty", tmp_path / f"{name}_sigma.fits", "--draws", 3]) == 0
    raw, got = fits.getdata(tmp_path / "raw_sigma.fits"), fits.getdata(tmp_path / "cal_sigma.fits")
    pred = fits.getdata(tmp_path / "cal.fits")
    np.testing.assert_array_equal(fits.getdata(tmp_path / "raw.fits"), pred)
    np.testing.assert_allclose(got, raw * np.where(pred >= 0.5, 2.5, 1.5), rtol=1e-6)
    assert fits.getheader(tmp_path / "cal_sigma.fits")["UNCCAL"] is True
    assert fits.getheader(tmp_path / "raw_sigma.fits")["UNCCAL"] is False
    # a damaged entry (digest recomputed, so only the entry is wrong) is refused by name
    payload = torch.load(calibrated, weights_only=True)
    payload["uncertainty_calibration"]["scales"] = [1.0]
    payload["digest"] = content_digest(payload)
    write_torch_file(payload, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="uncertainty_calibration"):
        load_model(tmp_path / "bad.pt")


def test_receptive_radius_is_what_the_generator_sees():
    """Perturb one pixel of a float64 copy: outputs change exactly up to receptive_radius pixels away."""
    for task in ("dn", "sr"):
        model = tiny_model(task)
        g = copy.deepcopy(model.generator).double()
        x = torch.rand(1, 1, 48, 48, dtype=torch.float64)
        bumped = x.clone()
        bumped[0, 0, 24, 24] += 1.0
        with torch.no_grad():
            changed = np.argwhere((g(bumped) - g(x))[0, 0].numpy() != 0) // model.upscale
        assert np.abs(changed - 24).max() == receptive_radius(model.architecture) == 9


@pytest.mark.parametrize("task", ["dn", "sr"])
def test_tiling_equals_whole_image(task):
    # The tiny generator is 9 chained 3x3 convolutions (head, 5 in the dense block, trunk, 2 output
    # convolutions; for SR the last two act on the 2x grid, half a pixel each): an output pixel depends on
    # input pixels at most 9 away, so stitched tile centres with overlap >= 9 see exactly what the whole
    # image sees.
    model = tiny_model(task)
    counts = sas_counts((97, 83), seed=5)
    whole = predict_counts(model, counts, INPUT_EXPOSURE)
    tiled = predict_counts(model, counts, INPUT_EXPOSURE, tile=48, overlap=10)  # 3 x 3 tiles
    s = model.upscale
    assert whole.shape == tiled.shape == (97 * s, 83 * s)
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5 * whole.max())
    seams = predict_counts(model, counts, INPUT_EXPOSURE, tile=48, overlap=2)  # too small: seams show
    assert np.abs(seams - whole).max() > 1e-3 * whole.max()


def test_exposure_mismatch_warns_but_writes(model_files, tmp_path, capsys):
    import dataclasses
    import warnings

    from xmmsr.learn.predict import shallowest_trained_input_s

    image = write_image(tmp_path / "in.fits", sas_counts(), sas_header(exposure=5000.0))
    out = tmp_path / "out.fits"
    with pytest.warns(UserWarning, match="shallower than the 20000 s inputs"):
        predict_file(model_files["dn"], image, out)
    assert fits.getheader(out)["INEXPOS"] == 5000.0
    deep = write_image(tmp_path / "deep.fits", sas_counts(), sas_header(exposure=50000.0))
    with pytest.warns(UserWarning, match="factor 2"):
        predict_file(model_files["dn"], deep, tmp_path / "deep_out.fits")
    near = write_image(tmp_path / "near.fits", sas_counts(), sas_header(exposure=17000.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # within the tolerance: no warning
        predict_file(model_files["dn"], near, tmp_path / "near_out.fits")
    # a model trained on thinned inputs down to a quarter of the set's exposure knows 5 ks inputs
    model = load_model(model_files["dn"])
    assert shallowest_trained_input_s(model) == model.input_exposure_s == 20000.0
    thinned = dataclasses.replace(model, train_config={**model.train_config, "train": {
        **model.train_config.get("train", {}), "thin_inputs": {"fraction": 0.5, "min_exposure_fraction": 0.25}}})
    assert shallowest_trained_input_s(thinned) == 5000.0
    out.unlink()
    assert run(["predict", "--model", model_files["dn"], "--input", image, "--output", out]) == 0
    assert "xmmsr predict: warning: " in capsys.readouterr().err and out.exists()


def _assert_clean_failure(args: list, output: Path, capsys, *fragments: str) -> None:
    assert run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("xmmsr predict: error: ") and err.count("\n") == 1
    for fragment in fragments:
        assert fragment in err
    assert not output.exists()
    assert not list(output.parent.glob(f".{output.name}*"))


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, tuple[str, ...]]]:
    counts = sas_counts()
    cases = {}
    cases["no_exposure"] = (write_image(tmp_path / "noexp.fits", counts, sas_header(exposure=None)),
                            ("noexp.fits", "EXPOSURE", "evselect"))
    cases["cube"] = (write_image(tmp_path / "cube.fits", np.stack([counts, counts]), sas_header()),
                     ("cube.fits", "NAXIS", "3-D"))
    table = fits.BinTableHDU.from_columns([fits.Column("DETX", "J", array=np.arange(5))], name="EVENTS")
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "events.fits")
    cases["table"] = (tmp_path / "events.fits", ("events.fits", "HDU", "only tables (EVENTS)", "bin"))
    cases["grid_2x"] = (write_image(tmp_path / "x2.fits", counts, sas_header(pixel_arcsec=2.0)),
                        ("x2.fits", "CDELT1/CDELT2", '2.00" x 2.00"'))
    cases["resmult_2"] = (write_image(tmp_path / "res2.fits", counts, fits.Header({"EXPOSURE": 2e4, "RESMULT": 2})),
                          ("res2.fits", "RESMULT", "1x pn grid"))
    cases["empty"] = (tmp_path / "empty.fits", ("empty.fits", "data", "no image"))
    fits.PrimaryHDU().writeto(cases["empty"][0])
    negative = counts.astype(np.float32) - 1
    cases["negative"] = (write_image(tmp_path / "neg.fits", negative, sas_header()), ("neg.fits", "pixel values"))
    nan = counts.astype(np.float32)
    nan[3, 4] = np.nan
    cases["nan"] = (write_image(tmp_path / "nan.fits", nan, sas_header()), ("nan.fits", "pixel values", "NaN"))
    return cases


@pytest.mark.parametrize("case", ["no_exposure", "cube", "table", "grid_2x", "resmult_2", "empty", "negative", "nan"])
def test_bad_input_images(case, model_files, tmp_path, capsys):
    path, fragments = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out.fits"
    _assert_clean_failure(["predict", "--model", model_files["sr"], "--input", path, "--output", out], out, capsys,
                          *fragments, "Fix:")
    with pytest.raises(InputError) as exc:
        predict_file(model_files["sr"], path, out)
    assert exc.value.field == fragments[1]


def test_bad_model_files(tmp_path, capsys):
    image = write_image(tmp_path / "in.fits", sas_counts(), sas_header())
    out = tmp_path / "out.fits"
    _assert_clean_failure(["predict", "--model", tmp_path / "nope.pt", "--input", image, "--output", out], out,
                          capsys, "nope.pt", "file", "does not exist")
    _assert_clean_failure(["predict", "--model", image, "--input", image, "--output", out], out, capsys,
                          "in.fits", "file", "cannot be read as an xmmsr model")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    _assert_clean_failure(["predict", "--model", tmp_path / "other.pt", "--input", image, "--output", out], out,
                          capsys, "other.pt", "format", "not an xmmsr model")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device(model_files, tmp_path, capsys):
    image = write_image(tmp_path / "in.fits", sas_counts(), sas_header())
    out = tmp_path / "out.fits"
    _assert_clean_failure(["predict", "--model", model_files["dn"], "--input", image, "--output", out,
                           "--device", "cuda"], out, capsys, "--device", "cuda is not available")


@pytest.mark.parametrize("task", ["dn", "sr"])
def test_onnx_export_runs_at_any_size(task, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tiny_model(task, seed=4)
    path = export_onnx(model, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # self-contained, no temporaries
    assert str(Path(xmmsr.__file__).parent).encode() not in path.read_bytes()  # no stack traces with our paths
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["xmmsr.task"] == task and json.loads(meta["xmmsr.normalisation"])["method"] == "asinh"
    assert float(meta["xmmsr.target_exposure_s"]) == TARGET_EXPOSURE
    rng = np.random.default_rng(2)
    for shape in ((1, 1, 40, 48), (2, 1, 33, 71)):
        counts = torch.as_tensor(rng.poisson(2.0, shape), dtype=torch.float32)
        x = model.normalisation.forward(counts, INPUT_EXPOSURE)
        with torch.no_grad():
            expected = model.generator(x).numpy()
        (y,) = session.run(None, {"x": x.numpy()})
        assert y.shape == (shape[0], 1, shape[2] * model.upscale, shape[3] * model.upscale)
        np.testing.assert_allclose(y, expected, atol=1e-4, rtol=0)
