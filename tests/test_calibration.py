"""Calibration of the per-pixel uncertainty (xmmsr.learn.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from xmmsr.learn.calibration import ONE_SIGMA, UncertaintyCalibration, fit_calibration
from xmmsr.metrics import interval_coverage


def images(seed: int, n: int = 4, shape: tuple[int, int] = (64, 64)):
    """Predictions whose error is Gaussian with 1x the stated sigma in faint pixels (< 10 counts) and 3x
    in bright ones: the bootstrap sigma is right for the faint, too small for the bright."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        pred = rng.uniform(0.0, 20.0, shape)
        sigma = np.sqrt(pred + 1.0)
        true_error = np.where(pred < 10.0, 1.0, 3.0) * sigma
        truth = pred + rng.normal(size=shape) * true_error
        mask = np.ones(shape, dtype=bool)
        mask[:, :4] = False
        yield pred, sigma, truth, mask


def test_scales_recover_the_missing_error_per_brightness_bin():
    cal = fit_calibration(images(1), bins=4)
    assert len(cal.edges) == 3 and cal.edges == pytest.approx([5.0, 10.0, 15.0], abs=0.3)
    assert cal.scales == pytest.approx([1.0, 1.0, 3.0, 3.0], rel=0.06)
    assert cal.pixels == 4 * 64 * 60 and cal.split == "val" and cal.level == ONE_SIGMA
    # on independent images the calibrated sigma covers the truth 68 % of the time, the raw one does not
    for pred, sigma, truth, mask in images(2, n=2):
        assert interval_coverage(pred, sigma, truth, mask) < 0.55
        assert interval_coverage(pred, cal.apply(pred, sigma), truth, mask) == pytest.approx(ONE_SIGMA, abs=0.02)
        assert interval_coverage(pred, cal.apply(pred, sigma), truth, mask, 2.0) == pytest.approx(0.954, abs=0.02)


def test_apply_uses_the_bin_of_each_pixel_and_round_trips():
    cal = UncertaintyCalibration(edges=(1.0, 10.0), scales=(2.0, 3.0, 4.0), pixels=100)
    pred = np.array([[0.5, 1.0, 9.0], [10.0, 50.0, 0.0]])
    got = cal.apply(pred, np.ones_like(pred))
    np.testing.assert_array_equal(got, [[2.0, 3.0, 3.0], [4.0, 4.0, 2.0]])
    assert got.dtype == np.float32
    assert UncertaintyCalibration.from_dict(cal.to_dict()) == cal


def test_pixels_without_spread_are_left_out_and_bad_settings_refused():
    pred, sigma, truth, mask = next(images(3))
    sigma[:, 30:] = 0.0      # no bootstrap spread: not fitted on (a scale cannot fix a zero)
    cal = fit_calibration([(pred, sigma, truth, mask)], bins=2)
    assert cal.pixels == 64 * 26
    with pytest.raises(ValueError, match="bins"):
        fit_calibration(images(4), bins=0)
    with pytest.raises(ValueError, match="level"):
        fit_calibration(images(4), level=1.0)
    with pytest.raises(ValueError, match="too few"):
        fit_calibration([(pred[:2, :5], sigma[:2, :5], truth[:2, :5], mask[:2, :5])], bins=8)
    with pytest.raises(ValueError, match="one more scale"):
        UncertaintyCalibration(edges=(1.0,), scales=(1.0,))
    with pytest.raises(ValueError, match="positive"):
        UncertaintyCalibration(edges=(1.0,), scales=(1.0, 0.0))
