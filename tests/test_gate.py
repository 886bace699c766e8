"""The source gate: a predicted source is kept only where the input counts support it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.signal import fftconvolve

from xmmsr import detection
from xmmsr.learn.gate import SourceGate, default_gate, gate_sources, poisson_significance

EXP_INPUT, EXP_TARGET = 20e3, 100e3
SHAPE = (80, 80)
LEVEL = 0.5           # background counts per pixel at the target exposure
REAL = (24.0, 30.0)   # a source the input shows
FAKE = (56.0, 50.0)   # a bump the input does not show


def _psf_image(instrument, sources: list[tuple[float, float, float]]) -> np.ndarray:
    sky = np.zeros(SHAPE)
    for x, y, f in sources:
        sky[int(y), int(x)] += f
    kernel = instrument.psf.kernel(4.0, instrument.aim_offaxis_arcmin, resolution=1)
    return fftconvolve(sky, kernel, mode="same")


def test_poisson_significance_matches_the_poisson_tail():
    n = np.array([0.0, 3.0, 8.0, 20.0, 5.0])
    b = np.array([1.0, 1.0, 2.0, 5.0, 6.0])
    z = poisson_significance(n, b)
    want = stats.norm.isf(stats.poisson.sf(n - 1, b))
    above = n > b
    np.testing.assert_allclose(z[above], want[above], rtol=1e-6)
    assert np.all(z[~above] == 0.0)
    assert poisson_significance(np.array([30.0]), np.array([5.0]))[0] > poisson_significance(
        np.array([12.0]), np.array([5.0]))[0] > 2.0


def test_gate_removes_the_unsupported_source_and_keeps_the_real_one(instrument):
    gate = default_gate(1, 4.0, instrument)
    prediction = LEVEL + _psf_image(instrument, [(*REAL, 400.0), (*FAKE, 400.0)])
    # the input: background and only the real source, at the input exposure (its expectation: no noise,
    # so the test's verdicts do not depend on a draw)
    counts = (LEVEL + _psf_image(instrument, [(*REAL, 400.0)])) * EXP_INPUT / EXP_TARGET
    gated, table = gate_sources(prediction, counts, EXP_INPUT, EXP_TARGET, 1, gate)
    assert len(table) == 2
    real = table.loc[(table["x"] - REAL[0]).abs() < 1.5]
    fake = table.loc[(table["x"] - FAKE[0]).abs() < 1.5]
    assert bool(real["kept"].iloc[0]) and not bool(fake["kept"].iloc[0])
    assert float(real["input_sigma"].iloc[0]) > 5.0 and float(fake["input_sigma"].iloc[0]) < 1.0
    assert gated.dtype == np.float32 and np.all(gated <= prediction.astype(np.float32) + 1e-6)  # never raised
    y, x = int(REAL[1]), int(REAL[0])
    np.testing.assert_allclose(gated[y - 5:y + 6, x - 5:x + 6], prediction[y - 5:y + 6, x - 5:x + 6], rtol=1e-6)
    y, x = int(FAKE[1]), int(FAKE[0])
    # the bump is clipped at its surroundings (a surface fitted to the annulus: the background and the PSF
    # wings there), not dug into a hole
    assert LEVEL <= gated[y, x] < 0.1 * prediction[y, x]
    again = detection.detect_point_sources(gated, np.ones(SHAPE, bool), LEVEL, gate.fwhm_out_px, 5.0)
    assert len(again) == 1 and abs(again["x"].iloc[0] - REAL[0]) < 1.0


def test_gate_sigma_zero_keeps_everything_and_footprint_limits_candidates(instrument):
    prediction = LEVEL + _psf_image(instrument, [(*REAL, 400.0), (*FAKE, 400.0)])
    counts = np.full(SHAPE, LEVEL * EXP_INPUT / EXP_TARGET)
    gated, table = gate_sources(prediction, counts, EXP_INPUT, EXP_TARGET, 1, default_gate(1, 0.0, instrument))
    assert len(table) == 2 and table["kept"].all()
    np.testing.assert_array_equal(gated, prediction.astype(np.float32))
    footprint = np.ones(SHAPE, bool)
    footprint[:, 40:] = False   # the fake source's side has no data
    _, table = gate_sources(prediction, counts, EXP_INPUT, EXP_TARGET, 1, default_gate(1, 0.0, instrument), footprint)
    assert len(table) == 1


def test_gate_on_the_2x_grid_tests_the_1x_input(instrument):
    gate = default_gate(2, 4.0, instrument)
    assert gate.fwhm_out_px > 0 and gate.fwhm_1x_px > 0
    fine = np.kron(LEVEL + _psf_image(instrument, [(*REAL, 400.0), (*FAKE, 400.0)]), np.ones((2, 2))) / 4.0
    counts = (LEVEL + _psf_image(instrument, [(*REAL, 400.0)])) * EXP_INPUT / EXP_TARGET
    gated, table = gate_sources(fine, counts, EXP_INPUT, EXP_TARGET, 2, gate)
    kept = table.loc[table["kept"]]
    assert len(kept) == 1 and abs(kept["x"].iloc[0] / 2 - REAL[0]) < 1.0
    assert (~table["kept"]).sum() == 1


def test_gate_settings_are_checked():
    with pytest.raises(ValueError, match="source gate"):
        SourceGate(-1.0, 1.7, 1.7)
    with pytest.raises(ValueError, match="source gate"):
        SourceGate(3.0, 0.0, 1.7)


def test_a_ripple_on_a_bright_core_is_removed_and_a_source_on_it_kept(instrument):
    """A bump on the curved core of a bright cluster stands out from the annulus mean below it; the gate
    measures it against the core's own surface, so only a bump the input shows survives."""
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    core = LEVEL + 40.0 * (1 + ((xx - 40.0) ** 2 + (yy - 40.0) ** 2) / 15.0 ** 2) ** -1.5
    ripple, source = (46.0, 40.0), (34.0, 40.0)   # both on the core's slope, 6 pixels from its centre
    prediction = core + _psf_image(instrument, [(*ripple, 1000.0), (*source, 1000.0)])
    counts = (core + _psf_image(instrument, [(*source, 1000.0)])) * EXP_INPUT / EXP_TARGET
    gated, table = gate_sources(prediction, counts, EXP_INPUT, EXP_TARGET, 1, default_gate(1, 3.0, instrument))
    at = {name: table.loc[np.hypot(table["x"] - p[0], table["y"] - p[1]) < 1.5] for name, p in
          (("ripple", ripple), ("source", source))}
    assert len(at["ripple"]) == 1 and len(at["source"]) == 1
    assert not bool(at["ripple"]["kept"].iloc[0]) and bool(at["source"]["kept"].iloc[0])
    y, x = int(ripple[1]), int(ripple[0])
    assert abs(gated[y, x] - core[y, x]) < 0.05 * core[y, x]   # clipped back to the core, no hole


@pytest.mark.parametrize("task", ["dn", "sr"])
def test_evaluation_scores_what_predict_gives_with_and_without_the_gate(task, monkeypatch):
    """The evaluation's `model` and `model_gated` are predict_counts without and with the gate (which acts
    before the flux conservation), from one run of the network."""
    import torch

    from xmmsr.evaluate import methods, run
    from xmmsr.learn.checkpoint import TrainedModel
    from xmmsr.learn.model import Architecture, build_generator
    from xmmsr.learn.normalise import Normalisation
    from xmmsr.learn.predict import predict_counts

    torch.manual_seed(3)
    arch = Architecture(task, features=8, growth=8, blocks=1, dense_blocks=1)
    model = TrainedModel(build_generator(arch).eval(), arch, Normalisation("asinh", 5e-5), EXP_INPUT, EXP_TARGET)
    rng = np.random.default_rng(4)
    counts = rng.poisson(np.full(SHAPE, 0.2)).astype(float)
    counts[30:33, 20:23] += 6.0
    mask = np.ones(SHAPE, dtype=bool)
    mask[:, :6] = False
    counts[~mask] = 0.0
    frame = {"input": counts, "exposure_input": EXP_INPUT, "exposure_target": EXP_TARGET, "mask_input": mask,
             "expected": np.zeros((SHAPE[0] * arch.upscale, SHAPE[1] * arch.upscale))}
    monkeypatch.setattr(methods, "predict_baselines", lambda *args, **kwargs: {})
    gate = default_gate(arch.upscale, 3.0)
    preds = run.predictions(model, frame, None, gate)
    np.testing.assert_array_equal(preds["model"], predict_counts(model, counts, EXP_INPUT, footprint=mask))
    np.testing.assert_array_equal(preds["model_gated"],
                                  predict_counts(model, counts, EXP_INPUT, footprint=mask, gate=gate))
    assert preds["model"].dtype == preds["model_gated"].dtype == np.float64
