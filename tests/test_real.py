"""Real data in the loop: binomial thinning, per-pixel exposure in predict, evaluate-real on a thinned image."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from conftest import REPO, beta_sky, write_count_image
from scipy import ndimage

from xmmsr.cli import main
from xmmsr.config import default_config
from xmmsr.errors import InputError
from xmmsr import metrics
from xmmsr.evaluate.real import score_thinned, thinned_predictions
from xmmsr.instrument.binning import physical_keywords
from xmmsr.instrument.exposure import (MIN_ACCEPTANCE, REAL_EDGE_MARGINS, ccd_number_image, detector_grid,
                                      image_exposure)
from xmmsr.instrument.simulator import expected_background, expected_image
from xmmsr.learn.checkpoint import load_model
from xmmsr.learn.predict import predict_file, read_count_image
from xmmsr.thinning import binomial_split

DN_MODEL = REPO / "resources" / "models" / "dn.pt"
REAL_ABELL496 = REPO.parent / "shared" / "data" / "real" / "0506260401_pn_cleaned_20.0ks_detxy_500_2000_80.fits.gz"


count_image = write_count_image


def test_binomial_split_is_exact_binomial_and_independent():
    rng = np.random.default_rng(0)
    lam = np.full(200_000, 40.0)
    image = rng.poisson(lam)
    a, b = binomial_split(image, 0.3, np.random.default_rng(1))
    np.testing.assert_array_equal(a + b, image)
    assert a.mean() == pytest.approx(0.3 * 40, rel=0.01) and a.var() == pytest.approx(0.3 * 40, rel=0.03)
    assert b.mean() == pytest.approx(0.7 * 40, rel=0.01) and b.var() == pytest.approx(0.7 * 40, rel=0.03)
    # A and B are independent Poisson images: their residuals about the means are uncorrelated
    r = np.corrcoef(a - 0.3 * lam, b - 0.7 * lam)[0, 1]
    assert abs(r) < 4 / np.sqrt(lam.size)
    # given the image they are anti-correlated (a binomial split of fixed totals): the test can tell
    fixed = np.full(200_000, 40)
    a2, b2 = binomial_split(fixed, 0.3, np.random.default_rng(2))
    assert np.corrcoef(a2, b2)[0, 1] < -0.99
    with pytest.raises(ValueError, match="integer"):
        binomial_split(np.array([1.5, 2.0]), 0.5, rng)


def test_thin_cli_splits_counts_and_exposures_and_never_overwrites(tmp_path, capsys):
    image = np.random.default_rng(4).poisson(3.0, (64, 80))
    src = tmp_path / "deep.fits"
    count_image(src, image, 50_000.0, ontimes={5: 25_000.0})
    a, b = tmp_path / "a.fits", tmp_path / "b.fits"
    assert main(["thin", str(src), "--fraction", "0.4", "--seed", "7", "--output-a", str(a), "--output-b", str(b)]) == 0
    with fits.open(a) as ha, fits.open(b) as hb:
        np.testing.assert_array_equal(ha[0].data.astype(np.int64) + hb[0].data, image)
        assert ha[0].header["EXPOSURE"] == pytest.approx(20_000.0) and hb[0].header["EXPOSURE"] == pytest.approx(30_000.0)
        assert ha[0].header["ONTIME05"] == pytest.approx(10_000.0) and hb[0].header["ONTIME01"] == pytest.approx(30_000.0)
        assert (ha[0].header["THINFRAC"], hb[0].header["THINFRAC"]) == (pytest.approx(0.4), pytest.approx(0.6))
        assert ha["STDGTI01"].data["STOP"][0] == 50_000.0  # time intervals are kept
    again = main(["thin", str(src), "--fraction", "0.4", "--seed", "7", "--output-a", str(tmp_path / "a2.fits"),
                  "--output-b", str(tmp_path / "b2.fits")])
    assert again == 0 and fits.getdata(tmp_path / "a2.fits").tolist() == fits.getdata(a).tolist()
    capsys.readouterr()
    assert main(["thin", str(src), "--fraction", "0.4", "--seed", "7", "--output-a", str(a),
                 "--output-b", str(tmp_path / "c.fits")]) == 2
    err = capsys.readouterr().err.strip()
    assert "exists" in err and len(err.splitlines()) == 1 and not (tmp_path / "c.fits").exists()
    assert main(["thin", str(src), "--fraction", "1.5", "--seed", "7", "--output-a", str(tmp_path / "d.fits"),
                 "--output-b", str(tmp_path / "e.fits")]) == 2
    smooth = tmp_path / "smooth.fits"
    fits.PrimaryHDU(np.full((8, 8), 0.5), header=fits.Header({"EXPOSURE": 1.0})).writeto(smooth)
    assert main(["thin", str(smooth), "--fraction", "0.5", "--seed", "1", "--output-a", str(tmp_path / "f.fits"),
                 "--output-b", str(tmp_path / "g.fits")]) == 2
    assert "integer" in capsys.readouterr().err


def test_per_ccd_exposure_follows_the_detector_layout(instrument):
    grid = instrument.geometry.image_grid(1)
    header = fits.Header({k: v[0] for k, v in physical_keywords(grid).items()})
    ccd = ccd_number_image(header, grid.shape, instrument.geometry)
    assert set(np.unique(ccd)) == set(range(1, 13))
    for k in range(1, 13):
        header[f"ONTIME{k:02d}"] = 10_000.0 if k != 5 else 5_000.0
    exposure = image_exposure(header, grid.shape, 10_000.0, geometry=instrument.geometry)
    assert exposure.source == "per-CCD ONTIMEnn x CCD layout"
    # the on-time of each pixel's CCD times the CCD area that covers it: none in gaps and on dead pixels,
    # nor on the strips along the CCD edges that real event lists lose
    acceptance = np.array(instrument.geometry.acceptance(grid, margins=REAL_EDGE_MARGINS))
    acceptance[acceptance < MIN_ACCEPTANCE] = 0.0
    assert 0.05 < np.mean(acceptance == 0) < 0.3 and np.all(instrument.geometry.dead_map()[acceptance > 0] == 0)
    np.testing.assert_array_equal(exposure.seconds, np.where(ccd == 5, 5_000.0, 10_000.0) * acceptance)
    header["ONTIME05"] = 9_995.0  # within 1 %: one exposure
    uniform = image_exposure(header, grid.shape, 10_000.0, geometry=instrument.geometry)
    assert uniform.source == "EXPOSURE x CCD layout"
    np.testing.assert_array_equal(uniform.seconds, 10_000.0 * acceptance)
    # DETX running the other way (negative CDELT1L): the same layout, mirrored
    flipped = header.copy()
    flipped["CRVAL1L"] = header["CRVAL1L"] + (grid.nx - 1) * header["CDELT1L"]
    flipped["CDELT1L"] = -header["CDELT1L"]
    np.testing.assert_array_equal(image_exposure(flipped, grid.shape, 10_000.0, geometry=instrument.geometry).seconds,
                                  uniform.seconds[:, ::-1])
    # an image of simulated events follows the simulated layout: no edge strips, more area
    simulated = header.copy()
    simulated["SIMULATR"] = "xmmsr builtin"
    layout = image_exposure(simulated, grid.shape, 10_000.0, geometry=instrument.geometry).seconds
    np.testing.assert_array_equal(layout, 10_000.0 * np.asarray(instrument.geometry.acceptance(grid)))
    assert 1.02 < layout.sum() / uniform.seconds.sum() < 1.15
    # the default layout is the default configuration's (its dead pixels too)
    np.testing.assert_array_equal(image_exposure(header, grid.shape, 10_000.0).seconds, uniform.seconds)
    # without DETX/DETY keywords (e.g. sky X/Y) the layout is unknown: EXPOSURE everywhere
    sky = fits.Header({"CTYPE1L": "X", "CTYPE2L": "Y", "CRVAL1L": 1.0, "CRVAL2L": 1.0, "CDELT1L": 80.0,
                       "CDELT2L": 80.0})
    plain = image_exposure(sky, grid.shape, 10_000.0, geometry=instrument.geometry)
    assert plain.source == "EXPOSURE" and np.all(plain.seconds == 10_000.0)
    # an image wholly off the CCDs is refused by name
    off = header.copy()
    off["CRVAL1L"] = 1.0e7
    with pytest.raises(InputError, match="CRVAL1L"):
        image_exposure(off, grid.shape, 10_000.0, geometry=instrument.geometry)


@pytest.mark.skipif(not REAL_ABELL496.is_file(), reason="the real pn images of ../shared/data/real are absent")
def test_ccd_layout_matches_the_gaps_edges_and_dead_pixels_of_a_real_image(instrument):
    """Pixels the layout gives no area hold (almost) no counts in a real SAS image; those it gives full
    area hold the counts of their surroundings, and those along the CCD edges the fraction of them that
    their area, the real edge strips left out, predicts (about half without the strips)."""
    counts, header, seconds = read_count_image(REAL_ABELL496)
    exposure = image_exposure(header, counts.shape, seconds, geometry=instrument.geometry, path=REAL_ABELL496)
    grid, flip_x, flip_y = detector_grid(header, counts.shape)
    flip = (slice(None, None, -1 if flip_y else 1), slice(None, None, -1 if flip_x else 1))
    area = np.asarray(instrument.geometry.acceptance(grid, margins=REAL_EDGE_MARGINS))[flip]
    layout = np.asarray(instrument.geometry.acceptance(grid))[flip]
    full = exposure.seconds == exposure.reference_s
    level = ndimage.uniform_filter(np.where(full, counts, 0.0), 9) / np.maximum(
        ndimage.uniform_filter(full.astype(float), 9), 1e-9)
    near = ndimage.uniform_filter(full.astype(float), 9) > 0.3
    empty = (area == 0) & near
    assert empty.sum() > 4000                                   # chip gaps and dead columns inside the field
    assert counts[empty].sum() < 0.02 * level[empty].sum()      # they hold < 2 % of what full pixels there would
    assert counts[full & near].sum() == pytest.approx(level[full & near].sum(), rel=0.01)
    edge = (area > 0) & (area < 1) & near
    assert edge.sum() > 3000
    assert counts[edge].sum() == pytest.approx((area * level)[edge].sum(), rel=0.1)
    assert counts[edge].sum() < 0.75 * (layout * level)[edge].sum()   # the layout alone: far too much


@pytest.mark.skipif(not DN_MODEL.is_file(), reason="the shipped DN model is not installed")
def test_predict_with_one_ccd_at_half_exposure_is_unbiased_there(instrument, tmp_path):
    grid = instrument.geometry.image_grid(1)
    live = np.ones(12)
    live[4] = 0.5  # CCD 5
    t = 20_000.0
    expected = expected_background(instrument, t, 1, ccd_live=live) + 0.0
    image = np.random.default_rng(9).poisson(expected)
    src = tmp_path / "half.fits"
    count_image(src, image, t, ontimes={5: 0.5 * t}, grid=grid)
    header = fits.getheader(src)
    ccd = ccd_number_image(header, grid.shape, instrument.geometry)
    full_rate = expected_background(instrument, t, 1) / t  # the sky rate, independent of exposure
    model = load_model(DN_MODEL)
    out = predict_file(DN_MODEL, src, tmp_path / "pred.fits")
    pred = fits.getdata(out).astype(np.float64) / model.target_exposure_s
    inner = (ccd == 5) & (full_rate > 0.5 * np.median(full_rate[full_rate > 0]))
    other = (ccd == 4) & (full_rate > 0.5 * np.median(full_rate[full_rate > 0]))
    ratio5 = pred[inner].sum() / full_rate[inner].sum()
    ratio4 = pred[other].sum() / full_rate[other].sum()
    assert ratio5 == pytest.approx(ratio4, rel=0.1)
    assert fits.getheader(out)["EXPSRC"] == "per-CCD ONTIMEnn x CCD layout"
    # nothing is predicted where the CCD layout gives no exposure (chip gaps, dead pixels)
    dead = instrument.geometry.acceptance(grid) == 0
    assert dead.any() and np.all(fits.getdata(out)[dead] == 0)
    # the header's EXPOSURE alone halves the rate on that CCD: what the per-CCD exposure corrects
    no_ontime = tmp_path / "plain.fits"
    count_image(no_ontime, image, t, grid=grid)
    plain = fits.getdata(predict_file(DN_MODEL, no_ontime, tmp_path / "pred2.fits")).astype(np.float64)
    assert plain[inner].sum() / model.target_exposure_s / full_rate[inner].sum() < 0.85 * ratio4


@pytest.mark.skipif(not DN_MODEL.is_file(), reason="the shipped DN model is not installed")
def test_evaluate_real_on_a_simulated_deep_image_ranks_methods_as_the_truth_does(instrument, tmp_path, capsys):
    """With the truth known, the deviance against the thinned remainder orders the methods as the
    deviance against the remainder's true mean does (the two differ by a method-independent term)."""
    deep_t, input_t = 100_000.0, 20_000.0
    truth = expected_image(beta_sky(total_flux=4e-3), instrument, deep_t, 1)
    counts = np.random.default_rng(5).poisson(truth)
    src = tmp_path / "deep.fits"
    count_image(src, counts, deep_t, grid=instrument.geometry.image_grid(1))
    cfg = default_config()
    table = score_thinned(DN_MODEL, src, input_t, 3, cfg["instrument"], cfg["evaluate"]).set_index("method")
    assert list(table.index) == ["input", "gaussian", "adaptive_smoothing", "wavelet", "richardson_lucy", "model"]
    np.testing.assert_allclose(table["exposure_input"], input_t)
    assert np.all(table["flux_ratio"].between(0.9, 1.1))
    # the same predictions scored against the remainder's true mean
    t = thinned_predictions({"model": load_model(DN_MODEL)}, src, input_t, 3, instrument, cfg["evaluate"])
    remainder_truth = truth * (1 - input_t / deep_t)
    by_data = {m: metrics.poisson_deviance(mu, t.remainder, t.mask) for m, mu in t.remainder_mean.items()}
    by_truth = {m: metrics.poisson_deviance(mu, remainder_truth, t.mask) for m, mu in t.remainder_mean.items()}
    assert by_data == pytest.approx(table["deviance"].to_dict(), rel=1e-9)
    assert sorted(by_data, key=by_data.get) == sorted(by_truth, key=by_truth.get)
    assert by_truth["model"] < by_truth["input"]
    out = tmp_path / "scores.csv"
    assert main(["evaluate-real", "--model", str(DN_MODEL), "--image", str(src), "--input-exposure", "20000",
                 "--seed", "3", "--output", str(out)]) == 0
    assert "deviance per pixel" in capsys.readouterr().out
    csv = pd.read_csv(out).set_index("method")
    np.testing.assert_allclose(csv["deviance"], table["deviance"], rtol=1e-5)


def test_remainder_support_confirms_true_sources_and_not_invented_ones(instrument):
    """Of a prediction's sources, those in the sky are confirmed by independent counts, and those made from
    nothing show no excess about as often as ``null_no_excess`` says (about half the time)."""
    from xmmsr import detection
    from xmmsr.evaluate.real import SUPPORT_COLUMNS, remainder_support, support_summary

    fwhm = detection.psf_fwhm_px(instrument, 1)
    yy, xx = np.mgrid[:128, :128]
    background = np.full((128, 128), 2.0)      # counts per pixel at 100 ks

    def source(x: float, y: float, counts: float) -> np.ndarray:
        g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (fwhm / 2.3548) ** 2))
        return counts * g / g.sum()

    sky = background + source(30.3, 40.6, 400.0) + source(90.2, 35.1, 400.0)
    invented = source(40.7, 95.4, 400.0) + source(95.3, 90.2, 400.0)
    prediction = sky + invented                  # the method's claim: four sources, two of them from nothing
    mask = np.ones(sky.shape, bool)
    rng = np.random.default_rng(11)
    real, fake = [], []
    for _ in range(60):                          # remainders as deep as a 20 ks input
        remainder = rng.poisson(0.2 * sky).astype(np.float64)
        table = remainder_support(prediction, remainder, 20_000.0, 100_000.0, mask, instrument, 5.0)
        assert list(table.columns) == SUPPORT_COLUMNS and len(table) == 4
        made_up = invented[np.round(table["y"]).astype(int), np.round(table["x"]).astype(int)] > 1.0
        real.append(table[~made_up])
        fake.append(table[made_up])
    real, fake = pd.concat(real), pd.concat(fake)
    assert np.all(real["remainder_sigma"] > 3.0) and not real["no_excess"].any()
    assert np.mean(fake["remainder_sigma"] < 2.0) > 0.9
    assert fake["null_no_excess"].mean() == pytest.approx(fake["no_excess"].mean(), abs=0.12)
    # the claim is what the prediction holds there, and the surroundings are the sky without the source
    np.testing.assert_allclose(fake["predicted_counts"] - fake["remainder_expected"],
                               0.2 * 400 * 0.998, rtol=0.01)   # 99.8 % of a Gaussian within 1.5 FWHM
    summary = support_summary(pd.concat([real.iloc[:2], fake.iloc[:2]]))
    assert summary["sources"] == 4 and summary["unconfirmed"] >= 1
    assert summary["from_nothing"] == pytest.approx(
        np.sum(1 / fake.iloc[:2]["null_no_excess"][fake.iloc[:2]["no_excess"]]))
