"""Evaluation metrics and classical baselines (src/xmmsr/evaluate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.signal import fftconvolve

from xmmsr.config import default_config
from xmmsr.evaluate import baselines as bl
from xmmsr.evaluate import methods
from xmmsr.evaluate.run import masked_mse
from xmmsr.metrics import (
    data_range,
    image_metrics,
    masked_l1,
    masked_psnr,
    masked_ssim,
    poisson_deviance,
    stretch,
    summarise,
)
from xmmsr.instrument.model import PnInstrument

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pn() -> PnInstrument:
    return PnInstrument.from_config(default_config()["instrument"], base_dir=REPO)


def half_mask(shape=(32, 32)) -> np.ndarray:
    mask = np.ones(shape, dtype=np.uint8)
    mask[:, : shape[1] // 4] = 0
    return mask


def second_moment(image: np.ndarray) -> float:
    y, x = np.indices(image.shape)
    s = image.sum()
    cy, cx = (image * y).sum() / s, (image * x).sum() / s
    return float((image * ((y - cy) ** 2 + (x - cx) ** 2)).sum() / s)


# ---------------------------------------------------------------- metrics

def test_psnr_known_value_and_mask():
    ref = np.ones((20, 20)) * 10.0
    pred = ref + 1.0  # MSE 1
    mask = half_mask((20, 20))
    assert masked_psnr(pred, ref, np.ones_like(mask), 5.0) == pytest.approx(20 * np.log10(5.0), abs=1e-12)
    bad = pred.copy()
    bad[mask == 0] += 1e6
    assert masked_psnr(bad, ref, mask, 5.0) == pytest.approx(20 * np.log10(5.0), abs=1e-12)
    assert masked_psnr(bad, ref, np.ones_like(mask), 5.0) < 0
    assert masked_psnr(ref, ref, mask, 5.0) == np.inf


def test_ssim_identical_noisy_and_masked():
    rng = np.random.default_rng(0)
    ref = rng.gamma(2.0, 3.0, (40, 40))
    mask = half_mask((40, 40))
    rng_ = data_range(ref, mask)
    assert masked_ssim(ref, ref, mask, rng_) == pytest.approx(1.0, abs=1e-9)
    noisy = ref + rng.normal(0, 2.0, ref.shape)
    s = masked_ssim(noisy, ref, mask, rng_)
    assert s < 0.99
    bad = noisy.copy()
    bad[mask == 0] = 1e6  # set to 0 before the SSIM map: no effect
    assert masked_ssim(bad, ref, mask, rng_) == pytest.approx(s, abs=1e-12)


def test_l1_deviance_stretch_range():
    ref = np.zeros((4, 4))
    pred = np.where(np.indices((4, 4)).sum(0) % 2 == 0, 2.0, -2.0)
    mask = np.ones((4, 4), dtype=bool)
    assert masked_l1(pred, ref, mask) == pytest.approx(2.0)
    mask[0, 0] = False
    pred[0, 0] = 100.0
    assert masked_l1(pred, ref, mask) == pytest.approx(2.0)

    k = np.array([[1.0, 3.0], [7.0, 0.5]])
    assert poisson_deviance(k, k, np.ones((2, 2))) == pytest.approx(0.0, abs=1e-12)
    # k = 0, mu = 1: 2 [0 - (0 - 1)] = 2;  k = 2, mu = 1: 2 [2 log 2 - 1]; mean 2 log 2
    assert poisson_deviance(np.array([[1.0, 1.0]]), np.array([[0.0, 2.0]]), np.ones((1, 2))) == pytest.approx(
        2 * np.log(2.0), rel=1e-12)
    # mu floored at 1e-8: k = 1 at mu = 0 is finite
    d = poisson_deviance(np.array([[0.0]]), np.array([[1.0]]), np.ones((1, 1)))
    assert d == pytest.approx(2 * (np.log(1e8) - 1 + 1e-8), rel=1e-9)

    x = np.array([[0.0, 2.0], [-2.0, 2.0 * np.sinh(3.0)]])
    np.testing.assert_allclose(stretch(x, "asinh", 2.0), [[0.0, np.arcsinh(1.0)], [-np.arcsinh(1.0), 3.0]],
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(stretch(x, "linear", 2.0), x)
    np.testing.assert_array_equal(stretch(x, "sqrt", 2.0), np.sqrt(np.maximum(x, 0.0)))
    with pytest.raises(ValueError):
        stretch(x, "log", 1.0)
    r = np.arange(16.0).reshape(4, 4)
    m = np.zeros((4, 4))
    m[1:3, 1:3] = 1
    assert data_range(r, m) == pytest.approx(10.0 - 5.0)
    assert data_range(np.ones((4, 4)), m) == 1e-12


def test_image_metrics_keys_and_values():
    rng = np.random.default_rng(1)
    yy, xx = np.indices((48, 48))
    expected = 0.2 + 30.0 * np.exp(-((yy - 24.0) ** 2 + (xx - 20.0) ** 2) / 8.0)
    target = rng.poisson(expected).astype(float)
    mask = half_mask((48, 48))
    pred = expected * rng.uniform(0.8, 1.2, expected.shape)
    out = image_metrics(pred, target, expected, mask, asinh_scale=0.5)
    keys = {f"{m}_{s}_vs_{r}" for m in ("psnr", "ssim") for s in ("linear", "sqrt", "asinh") for r in ("expected", "target")}
    keys |= {"l1_vs_expected", "l1_vs_target", "deviance_vs_target", "deviance_vs_expected", "flux_ratio"}
    assert set(out) == keys
    assert all(np.isfinite(v) for v in out.values())
    assert out["psnr_linear_vs_expected"] == pytest.approx(masked_psnr(pred, expected, mask, data_range(expected, mask)))
    sa = stretch(expected, "asinh", 0.5)
    assert out["ssim_asinh_vs_expected"] == pytest.approx(
        masked_ssim(stretch(pred, "asinh", 0.5), sa, mask, data_range(sa, mask)))
    assert out["deviance_vs_target"] == pytest.approx(poisson_deviance(pred, target, mask))
    same = image_metrics(expected, target, expected, mask, asinh_scale=0.5)
    assert same["flux_ratio"] == pytest.approx(1.0, rel=1e-12)
    assert same["psnr_linear_vs_expected"] == np.inf and same["ssim_asinh_vs_expected"] == pytest.approx(1.0)
    # the true mean scores better against the noisy target than a 20%-scattered one
    assert same["deviance_vs_target"] < out["deviance_vs_target"]
    assert same["deviance_vs_expected"] == pytest.approx(0.0, abs=1e-12)
    assert out["deviance_vs_expected"] > 1e-3
    assert out["psnr_sqrt_vs_expected"] == pytest.approx(
        masked_psnr(np.sqrt(pred), np.sqrt(expected), mask, data_range(np.sqrt(expected), mask)))


def test_summarise_statistics():
    df = pd.DataFrame({
        "kind": ["a"] * 5 + ["b"] * 3,
        "model": ["m"] * 8,
        "x": [1.0, 2.0, 3.0, 4.0, np.inf, 10.0, np.nan, 20.0],
        "y": [np.inf] * 5 + [1.0, 1.0, 1.0],
    })
    out = summarise(df, ["kind", "model"], ["x", "y"])
    assert list(out.columns) == ["kind", "model", "metric", "mean", "median", "p16", "p84", "n"]
    assert len(out) == 4
    a = out[(out.kind == "a") & (out.metric == "x")].iloc[0]
    assert (a["n"], a["mean"], a["median"]) == (4, 2.5, 2.5)
    assert a["p16"] == pytest.approx(1.48) and a["p84"] == pytest.approx(3.52)
    b = out[(out.kind == "b") & (out.metric == "x")].iloc[0]
    assert (b["n"], b["mean"], b["median"]) == (2, 15.0, 15.0)
    assert b["p16"] == pytest.approx(11.6)
    ay = out[(out.kind == "a") & (out.metric == "y")].iloc[0]
    assert ay["n"] == 0 and np.isnan(ay["mean"])
    whole = summarise(df, [], ["x"])
    assert list(whole.columns) == ["metric", "mean", "median", "p16", "p84", "n"]
    assert whole.iloc[0]["n"] == 6 and whole.iloc[0]["median"] == pytest.approx(3.5)


# ---------------------------------------------------------------- baselines

def test_psf_kernels(pn):
    k1, k12, k2 = bl.psf_kernel(pn, 1), bl.psf_kernel(pn, 1, grid_resolution=2), bl.psf_kernel(pn, 2)
    assert k1.shape == (31, 31) and k12.shape == (61, 61) and k2.shape == (61, 61)
    for k in (k1, k12, k2):
        assert k.sum() == pytest.approx(1.0, rel=1e-12)
        assert np.unravel_index(np.argmax(k), k.shape) == (k.shape[0] // 2, k.shape[1] // 2)
    assert second_moment(k2) < second_moment(k12)  # half-width PSF on the same grid


def test_scaled_and_bicubic_conserve_flux():
    rng = np.random.default_rng(2)
    counts = rng.poisson(3.0, (30, 40)).astype(float)
    s1 = bl.scaled_input(counts, 20e3, 100e3, 1)
    np.testing.assert_allclose(s1, 5.0 * counts)
    s2 = bl.scaled_input(counts, 20e3, 100e3, 2)
    assert s2.shape == (60, 80)
    assert s2.sum() == pytest.approx(5.0 * counts.sum(), rel=1e-6)
    np.testing.assert_allclose(s2[::2, ::2] * 4, 5.0 * counts)
    np.testing.assert_array_equal(bl.bicubic(counts, 20e3, 100e3, 1), s1)

    # a smooth image: 2" truth block-summed to 4" pixels
    yy, xx = np.indices((80, 80)) / 2.0
    truth = 0.25 + 12.0 * np.exp(-((yy - 19.5) ** 2 + (xx - 21.0) ** 2) / (2 * 3.0**2))
    smooth = truth.reshape(40, 2, 40, 2).sum(axis=(1, 3))
    for conserve in (True, False):
        b2 = bl.bicubic(smooth, 20e3, 100e3, 2, conserve=conserve)
        assert b2.shape == (80, 80) and b2.min() >= 0
        assert b2.sum() == pytest.approx(5.0 * smooth.sum(), rel=0.01)
        # closer to the fine truth than nearest-neighbour, and on the same pixel grid (same centroid)
        s2 = bl.scaled_input(smooth, 20e3, 100e3, 2)
        assert np.mean((b2 - 5 * truth) ** 2) < 0.5 * np.mean((s2 - 5 * truth) ** 2)
        cy = lambda im: (im * np.indices(im.shape)[0]).sum() / im.sum()  # noqa: E731
        assert cy(b2) == pytest.approx(cy(s2), abs=0.01)

    # sparse counts: clipping the negative lobes adds flux, unless blocks are renormalised
    sparse = rng.poisson(0.05, (60, 60)).astype(float)
    plain = bl.bicubic(sparse, 20e3, 100e3, 2, conserve=False)
    kept = bl.bicubic(sparse, 20e3, 100e3, 2)
    assert plain.sum() > 1.1 * 5.0 * sparse.sum()
    assert kept.min() >= 0 and kept.sum() == pytest.approx(5.0 * sparse.sum(), rel=1e-9)
    np.testing.assert_allclose(kept.reshape(60, 2, 60, 2).sum(axis=(1, 3)), 5.0 * sparse, atol=1e-9)


def test_gaussian_smoothing_denoises_flat_field():
    rng = np.random.default_rng(3)
    mean = 2.0
    counts = rng.poisson(mean, (64, 64)).astype(float)
    interior = np.zeros((64, 64), dtype=bool)
    interior[10:-10, 10:-10] = True
    truth = np.full((64, 64), mean * 5.0)
    mse_raw = np.mean((bl.gaussian(counts, 1.0, 5.0, 1, 0.0) - truth)[interior] ** 2)
    mse_smooth = np.mean((bl.gaussian(counts, 1.0, 5.0, 1, 2.0) - truth)[interior] ** 2)
    assert mse_smooth < 0.1 * mse_raw
    np.testing.assert_array_equal(bl.gaussian(counts, 1.0, 5.0, 1, 0), bl.scaled_input(counts, 1.0, 5.0, 1))
    assert bl.gaussian(counts, 1.0, 5.0, 2, 1.0).shape == (128, 128)


def test_best_gaussian_sigma_flat_vs_point_sources():
    rng = np.random.default_rng(4)
    shape = (48, 48)
    mask = np.zeros(shape, dtype=bool)
    mask[6:-6, 6:-6] = True
    flat_truth = np.full(shape, 1.5)
    flat = [(rng.poisson(flat_truth / 5.0).astype(float), 20e3, 100e3, flat_truth, mask) for _ in range(3)]

    points = []
    yy, xx = np.indices(shape)
    for _ in range(3):
        truth = np.full(shape, 0.01)
        for _ in range(8):
            y, x = rng.uniform(8, 40, 2)
            truth += 2000.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 0.6**2)) / (2 * np.pi * 0.6**2)
        points.append((rng.poisson(truth / 5.0).astype(float), 20e3, 100e3, truth, mask))
    def best_sigma(samples, sigmas=(0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)):
        settings = methods.tune("dn", methods.Settings(1.0, np.ones((1, 1))), {"gaussian_sigma_px": sigmas},
                                (((c, t_in, t_out, 1), (e, m)) for c, t_in, t_out, e, m in samples), masked_mse)
        return settings.gaussian_sigma_px

    s_flat = best_sigma(flat)
    s_points = best_sigma(points)
    assert s_flat >= 3.0
    assert s_points <= 1.0
    assert best_sigma(iter(flat), sigmas=(0.5, 1.0)) == 1.0


def _field(rng, shape=(96, 96)):
    """Poisson counts of a faint flat background, a bright compact source and a broad faint blob."""
    yy, xx = np.indices(shape)
    truth = np.full(shape, 0.05)
    truth += 40.0 * np.exp(-((yy - 48) ** 2 + (xx - 30) ** 2) / (2 * 1.5**2)) / (2 * np.pi * 1.5**2)
    truth += 1.5 * np.exp(-((yy - 40) ** 2 + (xx - 65) ** 2) / (2 * 12.0**2))
    return truth, rng.poisson(truth).astype(float)


@pytest.mark.parametrize("name", ["adaptive_smoothing", "wavelet"])
def test_new_baselines_denoise_conserve_flux_and_upsample(name):
    rng = np.random.default_rng(7)
    truth, counts = _field(rng)
    settings = methods.Settings(1.0, np.ones((1, 1)))
    method = methods.REGISTRY[name]
    pred = method.predict(counts, 20e3, 100e3, 1, settings)
    target = 5.0 * truth
    mse_input = np.mean((5.0 * counts - target) ** 2)
    assert np.mean((pred - target) ** 2) < 0.3 * mse_input
    assert pred.min() >= 0.0
    assert abs(pred.sum() / target.sum() - 1.0) < 0.05       # flux kept within 5 % (Poisson draw included)
    up = method.predict(counts, 20e3, 100e3, 2, settings)
    assert up.shape == (192, 192)
    np.testing.assert_allclose(up.reshape(96, 2, 96, 2).sum(axis=(1, 3)), pred, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(method.predict(np.zeros((32, 32)), 20e3, 100e3, 1, settings), 0.0, atol=1e-12)


def test_adaptive_smoothing_grows_the_kernel_where_counts_are_few():
    rng = np.random.default_rng(3)
    truth, counts = _field(rng)
    low, high = (bl.adaptive_smoothing(counts, 1.0, 1.0, 1, snr_min=s) for s in (2.0, 5.0))
    faint = (slice(80, 96), slice(0, 16))     # background only: the higher S/N smooths it more
    assert np.std(high[faint]) < np.std(low[faint])
    assert high[48, 30] > 0.5 * truth[48, 30]  # the bright source keeps a small kernel


def test_inverse_anscombe_is_unbiased_for_the_poisson_mean():
    rng = np.random.default_rng(11)
    for mean in (0.5, 2.0, 10.0, 100.0):
        expected_transform = bl.anscombe(rng.poisson(mean, 400_000)).mean()
        assert bl.inverse_anscombe(np.array(expected_transform)) == pytest.approx(mean, rel=0.03, abs=0.03)
    assert bl.inverse_anscombe(np.array(bl.ANSCOMBE_ZERO)) == pytest.approx(0.0, abs=1e-12)
    # the plain algebraic inverse is biased low at few counts
    assert ((bl.anscombe(rng.poisson(2.0, 400_000)).mean() / 2) ** 2 - 0.375) < 1.8


def test_tuning_picks_each_baselines_parameter_on_the_samples():
    rng = np.random.default_rng(5)
    truth, _ = _field(rng)
    samples = [((rng.poisson(truth).astype(float), 1.0, 1.0, 1), (truth, np.ones(truth.shape, bool))) for _ in range(2)]
    settings = methods.tune("dn", methods.Settings(1.0, np.ones((1, 1))),
                            {"adaptive_snr": [0.5, 5.0], "wavelet_threshold": [0.01, 0.5]}, samples, masked_mse)
    assert settings.adaptive_snr == 5.0 and settings.wavelet_threshold == 0.5 and settings.gaussian_sigma_px == 1.0
    assert methods.tuned_values("dn", settings) == {"gaussian": 1.0, "adaptive_smoothing": 5.0, "wavelet": 0.5}
    assert methods.describe_parameter("adaptive_smoothing", 5.0) == "S/N 5"
    assert methods.describe_parameter("input", 1.0) == ""
    assert methods.with_values(settings, {"wavelet": 0.75}).wavelet_threshold == 0.75


def test_richardson_lucy_sharpens_point_source(pn):
    k1 = bl.psf_kernel(pn, 1)
    n = 64
    sky = np.zeros((n, n))
    sky[32, 30] = 3000.0
    blurred = fftconvolve(sky, k1, mode="same")
    counts = np.random.default_rng(5).poisson(np.clip(blurred, 0, None) + 0.02).astype(float)
    base = bl.scaled_input(counts, 20e3, 100e3, 1)
    rl = bl.richardson_lucy(counts, 20e3, 100e3, 1, k1, iterations=20)
    assert rl.shape == base.shape and rl.min() >= 0
    assert rl.max() > 2.0 * base.max()
    box = np.s_[32 - 12: 32 + 13, 30 - 12: 30 + 13]  # +-48"
    assert second_moment(rl[box]) < 0.5 * second_moment(base[box])
    assert rl.sum() == pytest.approx(base.sum(), rel=0.01)
    assert rl[box].sum() == pytest.approx(base[box].sum(), rel=0.03)
    np.testing.assert_array_equal(bl.richardson_lucy(np.zeros((16, 16)), 1.0, 5.0, 2, k1), np.zeros((32, 32)))


def test_richardson_lucy_super_resolution(pn):
    k12, k2 = bl.psf_kernel(pn, 1, grid_resolution=2), bl.psf_kernel(pn, 2)
    n = 48
    sky2 = np.zeros((2 * n, 2 * n))
    sky2[48, 47] = 4000.0
    lr = fftconvolve(sky2, k12, mode="same").reshape(n, 2, n, 2).sum(axis=(1, 3))  # 1x-blurred, 4" pixels
    counts = np.random.default_rng(6).poisson(np.clip(lr, 0, None)).astype(float)
    target = fftconvolve(sky2, k2, mode="same") * 5.0
    near = bl.scaled_input(counts, 20e3, 100e3, 2)
    rl = bl.richardson_lucy(counts, 20e3, 100e3, 2, k12, iterations=20, reconvolve=k2)
    assert rl.shape == (2 * n, 2 * n)
    assert rl.sum() == pytest.approx(near.sum(), rel=0.01)
    assert near.max() < rl.max()
    full = np.ones(rl.shape, dtype=bool)
    assert np.mean((rl - target)[full] ** 2) < np.mean((near - target)[full] ** 2)


@pytest.mark.parametrize("name", ["gaussian", "adaptive_smoothing", "wavelet"])
def test_baselines_with_a_footprint_neither_leak_into_gaps_nor_darken_their_edges(name):
    """A flat field inside a border, with a chip gap and a dead block: with the footprint the smoothing
    baselines keep the level beside the gap and the counts (without it they spread counts into the gaps
    and lose them) and predict nothing outside."""
    rng = np.random.default_rng(21)
    shape, level = (80, 80), 4.0
    footprint = np.zeros(shape, dtype=bool)
    footprint[4:-4, 4:-4] = True         # the field's edge
    footprint[:, 38:41] = False          # a chip gap, 3 pixels wide
    footprint[10:30, 60:75] = False      # a dead block, wider than the first fill width
    counts = np.where(footprint, rng.poisson(level, shape), 0).astype(float)
    filled = bl.fill_outside(counts, footprint)
    np.testing.assert_array_equal(filled[footprint], counts[footprint])
    assert filled[~footprint].mean() == pytest.approx(level, rel=0.1)
    island = np.zeros((300, 300), dtype=bool)          # far beyond the widest fill: the nearest value
    island[140:160, 140:160] = True
    assert np.all(bl.fill_outside(np.where(island, 3.0, 0.0), island) == pytest.approx(3.0))
    settings = methods.Settings(3.0, np.ones((1, 1)), adaptive_snr=5.0, wavelet_threshold=0.5)
    method = methods.REGISTRY[name]
    edge = np.zeros(shape, dtype=bool)
    edge[8:-8, [36, 37, 41, 42]] = True
    target = level * 5.0
    plain = method.predict(counts, 20e3, 100e3, 1, settings)
    aware = methods.run(method, counts, 20e3, 100e3, 1, settings, footprint)
    assert plain[edge].mean() < 0.88 * target                      # the gap darkens its edges
    assert plain[footprint].sum() < 0.95 * 5.0 * counts.sum()      # and the counts spread into it are lost
    assert aware[edge].mean() == pytest.approx(target, rel=0.1)    # not with the footprint
    assert aware[footprint].sum() == pytest.approx(5.0 * counts.sum(), rel=0.03)
    assert np.all(aware[~footprint] == 0.0)
    up = methods.predict_baselines("sr", counts, 20e3, 100e3, 2, settings, names=[name], footprint=footprint)[name]
    assert up.shape == (160, 160) and np.all(up[:, 76:82] == 0.0) and up[:, 70:76].mean() > 0.9 * target / 4
    # tuning takes the footprint as the samples' fifth element
    tuned = methods.tune("dn", settings, {"gaussian_sigma_px": [0.5, 3.0]},
                         [((counts, 20e3, 100e3, 1, footprint), (np.full(shape, target), footprint))], masked_mse)
    assert tuned.gaussian_sigma_px == 3.0
