"""Physics of the built-in EPIC-pn simulator: photon statistics, PSF, vignetting, geometry, seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from conftest import beta_sky, make_instrument, point_sky

from xmmsr.errors import InputError
from xmmsr.instrument.binning import bin_counts, select_good
from xmmsr.instrument.events import write_events
from xmmsr.instrument.geometry import DET_UNIT_ARCSEC
from xmmsr.instrument import simulator
from xmmsr.instrument.simulator import expected_background, expected_image, simulate_events
from xmmsr.sky.model import SkyModel


def binned(events, instrument, resolution):
    c = events.columns
    good = select_good(c["PATTERN"], c["FLAG"], c["PI"])
    return bin_counts(c["DETX"][good], c["DETY"][good], instrument.geometry.image_grid(resolution))


def block_sums(image, block):
    ny, nx = (s // block * block for s in image.shape)
    return image[:ny, :nx].reshape(ny // block, block, nx // block, block).sum(axis=(1, 3))


@pytest.mark.parametrize("resolution", [1, 2])
def test_counts_agree_with_expected_image(instrument, resolution):
    sky = beta_sky()
    events = simulate_events(sky, instrument, 20_000, resolution, seed=11)
    counts = binned(events, instrument, resolution)
    expected = expected_image(sky, instrument, 20_000, resolution)
    total = expected.sum()
    assert abs(counts.sum() - total) < 4 * np.sqrt(total)
    # Spatially: in 64" blocks the normalised residuals are standard-normal-like.
    obs, exp = block_sums(counts, 16 * resolution), block_sums(expected, 16 * resolution)
    ok = exp > 25
    z = (obs[ok] - exp[ok]) / np.sqrt(exp[ok])
    assert ok.sum() > 200
    assert abs(z.mean()) < 4 / np.sqrt(ok.sum()) + 0.05
    assert 0.85 < z.std() < 1.2


def _radii(events, instrument, source_det):
    c = events.columns
    dx = c["DETX"] * DET_UNIT_ARCSEC - source_det[0]
    dy = c["DETY"] * DET_UNIT_ARCSEC - source_det[1]
    return np.hypot(dx, dy)


def test_point_source_profile_is_the_king_profile():
    # the round King model: one profile for every energy, so the radii follow its CDF exactly
    instrument = make_instrument(psf={"model": "king"}, out_of_time_fraction=0.0)
    events = simulate_events(point_sky(1.5e-3), instrument, 20_000, 1, seed=5, background=False)
    g = instrument.geometry
    r = _radii(events, instrument, (g.aim_x_arcsec, g.aim_y_arcsec))
    r_cut = 50.0  # the nearest dead column is 80" from the aim point
    inner = np.sort(r[r < r_cut])
    assert inner.size > 10_000
    theta = instrument.aim_offaxis_arcmin
    model_cdf = instrument.psf.enclosed_fraction(inner, theta) / instrument.psf.enclosed_fraction(r_cut, theta)
    empirical = np.arange(1, inner.size + 1) / inner.size
    assert np.max(np.abs(empirical - model_cdf)) < 1.63 / np.sqrt(inner.size)  # KS test at 1 %


def test_psf_widths_match_real_pn_numbers(instrument):
    psf = instrument.psf
    theta = instrument.aim_offaxis_arcmin
    # real pn images: HEW 18" within 6' of the axis; the ELLBETA core of the 1.5 keV psfgen image is a King
    # profile with r_c = 4.5", alpha = 1.49 (HEW 16")
    for e in (0.5, 1.0, 1.5, 2.0):
        assert 16.2 < psf.half_energy_width(theta, e) < 19.8
        assert 6.0 < psf.fwhm_arcsec(theta, e) < 8.0
    assert psf.half_energy_width(theta, 0.5) > psf.half_energy_width(theta, 2.0)      # sharper at high energy
    rc, alpha, q = (float(v) for v in psf.parameters(theta, 1.5, 1))
    assert rc == pytest.approx(4.5, abs=0.4) and alpha == pytest.approx(1.49, abs=0.05) and q == 1.0
    # the tangential elongation of real off-axis PSFs: 1.16, 1.35, 1.9 at 6-10', 10-12.5', > 12.5'
    for lo, hi, real in ((6.0, 10.0, 1.16), (10.0, 12.5, 1.35), (12.5, 15.0, 1.9)):
        mean_q = float(np.mean(psf.parameters(np.linspace(lo, hi, 50), 1.0, 1)[2]))
        assert abs(mean_q - real) < 0.15


def test_off_axis_point_sources_are_elongated_tangentially(instrument):
    g = instrument.geometry
    inst = make_instrument(out_of_time_fraction=0.0)
    offset = (0.0, -720.0)   # 12.3' from the optical axis, almost straight below it
    events = simulate_events(point_sky(3e-3, offset_arcsec=offset), inst, 20_000, 1, seed=15, background=False)
    c = events.columns
    sx, sy = g.aim_x_arcsec, g.aim_y_arcsec + offset[1]
    dx, dy = c["DETX"] * DET_UNIT_ARCSEC - sx, c["DETY"] * DET_UNIT_ARCSEC - sy
    near = np.hypot(dx, dy) < 20.0
    radial = np.array([sx - g.axis_x_arcsec, sy - g.axis_y_arcsec])
    radial /= np.hypot(*radial)
    along = dx[near] * radial[0] + dy[near] * radial[1]
    across = -dx[near] * radial[1] + dy[near] * radial[0]
    theta = np.hypot(sx - g.axis_x_arcsec, sy - g.axis_y_arcsec) / 60.0
    q = float(inst.psf.parameters(theta, 1.0, 1)[2])
    assert q > 1.3
    ratio = across.std() / along.std()
    assert ratio > 1.2 and near.sum() > 2000
    # the model's kernel, measured the same way (within 20")
    kernel = inst.psf.kernel(0.5, theta, float(np.arctan2(radial[1], radial[0])), 1.0, 1)
    h = kernel.shape[0] // 2
    ky, kx = (np.mgrid[-h:h + 1, -h:h + 1] * 0.5)
    kw = kernel * (np.hypot(kx, ky) < 20.0)
    k_along, k_across = kx * radial[0] + ky * radial[1], -kx * radial[1] + ky * radial[0]
    k_ratio = np.sqrt((kw * k_across**2).sum() / (kw * k_along**2).sum())
    assert ratio == pytest.approx(k_ratio, rel=0.06)
    # and the expected image agrees: the same elongation in its second moments
    expected = expected_image(point_sky(3e-3, offset_arcsec=offset), inst, 20_000, 2, background=False)
    cx, cy = g.image_grid(2).centers()
    x, y = np.meshgrid(cx - sx, cy - sy)
    w = expected * (np.hypot(x, y) < 20.0)
    e_along, e_across = x * radial[0] + y * radial[1], -x * radial[1] + y * radial[0]
    e_ratio = np.sqrt((w * e_across**2).sum() / (w * e_along**2).sum())
    assert e_ratio == pytest.approx(ratio, rel=0.08)


def test_2x_psf_has_half_the_half_energy_width():
    instrument = make_instrument(out_of_time_fraction=0.0)  # readout streaks would bias the median radius
    g = instrument.geometry
    hew = {}
    for resolution in (1, 2):
        events = simulate_events(point_sky(1e-3), instrument, 20_000, resolution, seed=9, background=False)
        r = _radii(events, instrument, (g.aim_x_arcsec, g.aim_y_arcsec))
        hew[resolution] = 2 * np.median(r)
    assert hew[2] / hew[1] == pytest.approx(0.5, abs=0.03)
    mean_energy = instrument.require_response().spectral("powerlaw", 1.9, 3e20).mean_energy_kev
    assert hew[1] == pytest.approx(instrument.psf.half_energy_width(instrument.aim_offaxis_arcmin, mean_energy), rel=0.08)


def test_vignetting_thins_counts_off_axis():
    # A nearly delta-like PSF isolates the vignetting (the XRT3_XAREAEF CCF, about the optical axis).
    inst = make_instrument(psf={"model": "king", "max_radius_arcsec": 0.5,
                                "king": {"core_radius_arcsec": 0.02, "alpha": 1.45, "offaxis_growth": 0.0}},
                           out_of_time_fraction=0.0)
    g = inst.geometry
    offset = (0.0, -600.0)   # 10.5' south of the pointing: on a CCD, clear of dead columns, inside the field
    on = len(simulate_events(point_sky(2e-3), inst, 20_000, 1, seed=1, background=False))
    off = len(simulate_events(point_sky(2e-3, offset_arcsec=offset), inst, 20_000, 1, seed=2, background=False))
    theta_on = np.hypot(g.aim_x_arcsec - g.axis_x_arcsec, g.aim_y_arcsec - g.axis_y_arcsec) / 60
    theta_off = np.hypot(g.aim_x_arcsec - g.axis_x_arcsec, g.aim_y_arcsec + offset[1] - g.axis_y_arcsec) / 60
    ratio = off / on
    sigma = ratio * np.sqrt(1 / on + 1 / off)
    model = float(inst.vignetting(theta_off, 1.0) / inst.vignetting(theta_on, 1.0))
    assert abs(ratio - model) < 4 * sigma
    # the CCF values at 6, 9 and 12' (1 keV), and an energy dependence below 0.3 % in 0.5-2 keV
    np.testing.assert_allclose(inst.vignetting(np.array([6.0, 9.0, 12.0]), 1.0), [0.756, 0.5765, 0.4347], atol=1e-3)
    assert abs(float(inst.vignetting(12.0, 0.5)) - float(inst.vignetting(12.0, 2.0))) < 0.003


def test_no_events_in_chip_gaps(instrument):
    events = simulate_events(beta_sky(), instrument, 20_000, 1, seed=3)
    g = instrument.geometry
    x = events.columns["DETX"] * DET_UNIT_ARCSEC
    y = events.columns["DETY"] * DET_UNIT_ARCSEC
    tol = DET_UNIT_ARCSEC
    for k in range(1, g.ccds_x):
        left = g.ccd_origin(k, 0)[0] - g.gap_x_arcsec
        assert not np.any((x > left + tol) & (x < left + g.gap_x_arcsec - tol))
    bottom = g.ccd_origin(0, 1)[1] - g.gap_y_arcsec
    assert not np.any((y > bottom + tol) & (y < bottom + g.gap_y_arcsec - tol))
    assert np.all(np.abs(x - g.array_center_x_arcsec) <= g.array_width / 2 + tol)
    assert np.all(np.abs(y - g.array_center_y_arcsec) <= g.array_height / 2 + tol)
    counts = binned(events, instrument, 1)
    dead = g.acceptance(g.image_grid(1)) == 0
    assert dead.sum() > 1000 and counts[dead].sum() == 0


def test_long_exposure_has_five_times_the_counts(instrument):
    sky = beta_sky()
    short = binned(simulate_events(sky, instrument, 20_000, 1, seed=21), instrument, 1)
    long = binned(simulate_events(sky, instrument, 100_000, 1, seed=22), instrument, 1)
    ratio = long.sum() / short.sum()
    assert abs(ratio - 5.0) < 4 * ratio * np.sqrt(1 / long.sum() + 1 / short.sum())


def test_background_level_matches_real_pn_images(instrument):
    blank = SkyModel(np.zeros((8, 8), np.float32), point_sky(1.0).wcs, 150.0, 2.0, "background")
    counts = binned(simulate_events(blank, instrument, 20_000, 1, seed=4), instrument, 1)
    expected = expected_background(instrument, 20_000, 1)
    assert abs(counts.sum() - expected.sum()) < 4 * np.sqrt(expected.sum())
    g = instrument.geometry
    cx, cy = g.image_grid(1).centers()
    x, y = np.meshgrid(cx, cy)
    live = g.detector_mask(1) > 0
    from_aim = np.hypot(x - g.aim_x_arcsec, y - g.aim_y_arcsec) / 60
    from_fov = np.hypot(x - g.fov_center_x_arcsec, y - g.fov_center_y_arcsec) / 60
    annulus = live & (from_aim >= 10) & (from_aim < 12) & (from_fov < 14.5)
    corners = live & (from_fov > 15.5)
    # real blank pn fields: 0.010-0.013 counts / 4" pixel / ks at 10-12', 0.0087-0.0093 in the corners
    assert 0.010 < expected[annulus].mean() / 20 < 0.013
    assert 0.0075 < expected[corners].mean() / 20 < 0.0095
    assert abs(counts[corners].mean() - expected[corners].mean()) < 4 * np.sqrt(expected[corners].mean() / corners.sum())


CALIB = Path(__file__).resolve().parents[2] / "shared" / "data" / "calib"
RMF = CALIB / "epn_e3_ff20_sdY9_v19.0.rmf.gz"


def rmf_band_pi(energy_kev: float) -> tuple[float, np.ndarray]:
    """From the real RMF: P(PI in 500-2000 | E) and the in-band PI probabilities per 5 eV channel."""
    from astropy.io import fits

    with fits.open(RMF) as hdul:
        m = hdul["MATRIX"].data
        i = int(np.searchsorted(m["ENERG_HI"], energy_kev))
        row, k = np.zeros(int(hdul["MATRIX"].header["DETCHANS"])), 0
        for g in range(int(m["N_GRP"][i])):
            f, n = int(m["F_CHAN"][i][g]), int(m["N_CHAN"][i][g])
            row[f:f + n] = m["MATRIX"][i][k:k + n]
            k += n
    band = row[100:400].sum() + row[400] / 5
    return band / row.sum(), row[100:400] / row.sum()


def test_redistribution_follows_the_real_response_matrix(instrument):
    response = instrument.require_response()
    rng = np.random.default_rng(3)
    for energy in (0.55, 1.0, 1.5, 2.2):
        pi = response.to_pi(rng, np.full(400_000, energy, np.float32))
        assert pi.min() >= 500 and pi.max() <= 2000
        if not RMF.is_file():
            continue
        band, per_channel = rmf_band_pi(energy)
        assert response.pi_fraction(np.array([energy]))[0] == pytest.approx(band, rel=0.02, abs=2e-4)
        # in-band PI in 50 eV bins against the matrix row (10 channels per bin)
        sim = np.bincount((pi[pi < 2000] - 500) // 50, minlength=30)[:30] / pi.size
        ref = per_channel.reshape(30, 10).sum(axis=1)
        ref /= ref.sum()
        assert np.abs(sim - ref).sum() < 0.04, (energy, np.round(sim, 3), np.round(ref, 3))
    # the peak sits below the true energy at low energies (charge loss), as in the matrix
    assert np.median(response.to_pi(rng, np.full(100_000, 0.6, np.float32))) < 590


def test_gaussian_redistribution_and_patterns():
    gaussian = make_instrument(redistribution_file=None, energy_resolution_fwhm_ev=80.0)
    events = simulate_events(beta_sky(), gaussian, 20_000, 1, seed=8)
    c = events.columns
    near_1kev = (c["ENERGY"] > 950) & (c["ENERGY"] < 1050)
    spread = (c["PI"][near_1kev] - c["ENERGY"][near_1kev]).std()
    assert spread == pytest.approx(80.0 / 2.3548, rel=0.08)
    assert np.all((c["PI"] >= 500) & (c["PI"] <= 2000))
    assert np.mean(c["PATTERN"] == 0) == pytest.approx(gaussian.patterns.single, abs=0.01)
    assert np.mean(c["PATTERN"] <= 4) == pytest.approx(gaussian.patterns.good, abs=0.005)
    assert np.all(np.diff(c["TIME"]) >= 0)
    assert c["TIME"].min() >= events.header["TSTART"][0] and c["TIME"].max() <= events.header["TSTOP"][0]


def test_counts_come_from_true_energies_around_the_band(instrument):
    """With the real redistribution some counts come from photons outside 0.5-2 keV and the count
    rate per band photon is below one; the expected image agrees with the events."""
    sky = point_sky(3e-3)
    events = simulate_events(sky, instrument, 20_000, 1, seed=5)
    energy = events.columns["ENERGY"] / 1000.0
    outside = np.mean((energy < 0.5) | (energy > 2.0))
    assert 0.005 < outside < 0.08
    spec = instrument.require_response().spectral("powerlaw", 1.9, 3e20)
    assert 0.8 < spec.pi_fraction < 0.97
    counts = binned(events, instrument, 1).sum()
    expected = expected_image(sky, instrument, 20_000, 1).sum()
    assert abs(counts - expected) < 4 * np.sqrt(expected)


def test_medium_filter_absorbs_more_at_low_energies():
    thin, medium = make_instrument(filter="thin"), make_instrument(filter="medium")
    soft = [i.require_response().spectral("bremss", 0.2, 0.0).band_area_cm2 for i in (thin, medium)]
    hard = [i.require_response().spectral("powerlaw", 1.4, 3e20).band_area_cm2 for i in (thin, medium)]
    # 40 nm more aluminium: a few per cent at 0.5-0.7 keV, about one per cent above 1 keV
    assert 0.93 < soft[1] / soft[0] < 0.98
    assert soft[1] / soft[0] < hard[1] / hard[0] < 0.995


def test_same_seed_same_bytes_different_seed_different_events(instrument, tmp_path):
    sky = beta_sky(npix=300)
    paths = []
    for i, seed in enumerate((42, 42, 43)):
        paths.append(tmp_path / f"ev{i}.fits")
        write_events(simulate_events(sky, instrument, 5_000, 2, seed=seed), paths[-1])
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_bad_exposure_and_resolution_are_rejected(instrument):
    with pytest.raises(InputError, match="exposure"):
        simulate_events(point_sky(1e-3), instrument, -5.0, 1, seed=1)
    with pytest.raises(InputError, match="resolution"):
        expected_image(point_sky(1e-3), instrument, 1000.0, 3)


def test_bad_columns_and_ccd_borders_are_flagged_and_masked():
    inst = make_instrument(geometry={"bad_columns": [[3, 20]], "flag_ccd_border": True, "dead_pixels_file": None})
    g = inst.geometry
    events = simulate_events(beta_sky(), inst, 20_000, 1, seed=6)
    c = events.columns
    x = c["DETX"] * DET_UNIT_ARCSEC
    x0, _ = g.ccd_origin(2, 0)  # CCD 3 is column 2 of the lower row
    column_1x = np.floor((x - x0) / g.pixel_arcsec)
    within = (x - x0) - column_1x * g.pixel_arcsec
    clear = (within > DET_UNIT_ARCSEC) & (within < g.pixel_arcsec - DET_UNIT_ARCSEC)  # DETX is rounded to 0.05"
    on_ccd3 = (c["CCDNR"] == 3) & clear
    bad = on_ccd3 & (column_1x == 20)
    assert bad.sum() > 20 and np.all(c["FLAG"][bad] & 0x2)
    assert not np.any(c["FLAG"][on_ccd3 & (column_1x > 1) & (column_1x < 19)])
    border = (column_1x == 0) | (column_1x == g.ccd_columns - 1)
    assert np.all(c["FLAG"][on_ccd3 & border] & 0x1)
    # the expected image knows: the acceptance drops where the bad column lies
    plain = make_instrument(geometry={"dead_pixels_file": None})
    assert g.acceptance(g.image_grid(1)).sum() < plain.geometry.acceptance(g.image_grid(1)).sum()


def test_dead_pixels_are_flagged_and_masked(instrument):
    g = instrument.geometry
    events = simulate_events(beta_sky(), instrument, 20_000, 1, seed=6)
    c = events.columns
    dead = g.dead_at(c["DETX"] * np.float32(DET_UNIT_ARCSEC), c["DETY"] * np.float32(DET_UNIT_ARCSEC))
    assert dead.sum() > 100 and np.all(c["FLAG"][dead] & 0x4) and not np.any(c["FLAG"][~dead] & 0x4)
    counts = binned(events, instrument, 1)
    assert counts[g.dead_map() > 0].sum() == 0
    assert expected_image(beta_sky(), instrument, 20_000, 1)[g.dead_map() > 0].sum() == 0


def test_out_of_time_events_form_a_readout_streak(instrument):
    sky = point_sky(5e-3)
    events = simulate_events(sky, instrument, 20_000, 1, seed=12, background=False)
    counts = binned(events, instrument, 1)
    expected = expected_image(sky, instrument, 20_000, 1, background=False)
    no_streak = expected_image(sky, make_instrument(out_of_time_fraction=0.0), 20_000, 1, background=False)
    row, col = np.unravel_index(np.argmax(expected), expected.shape)
    strip = (slice(row + 40, None), slice(col - 1, col + 2))  # the source's columns on its CCD, far above it
    obs, exp = counts[strip].sum(), expected[strip].sum()
    assert abs(obs - exp) < 4 * np.sqrt(exp)
    assert exp > 0.3 * instrument.out_of_time_fraction * expected.sum()
    assert no_streak[strip].sum() < 0.1 * exp
    assert counts.sum() == pytest.approx(expected.sum(), abs=4 * np.sqrt(expected.sum()))


def test_field_background_scales_reach_events_and_expected_image_alike(instrument):
    from xmmsr.sky.model import FieldBackground

    field = FieldBackground(particle=1.2, cxb=0.8, galactic=1.9, soft_protons=0.7)
    blank = SkyModel(np.zeros((8, 8), np.float32), point_sky(1.0).wcs, 150.0, 2.0, "background",
                     meta=field.as_meta())
    counts = binned(simulate_events(blank, instrument, 20_000, 1, seed=14), instrument, 1)
    expected = expected_image(blank, instrument, 20_000, 1)
    np.testing.assert_allclose(expected, expected_background(instrument, 20_000, 1, field))
    nominal = expected_background(instrument, 20_000, 1)
    assert expected.sum() > 1.3 * nominal.sum()                      # soft protons and a bright foreground
    assert abs(counts.sum() - expected.sum()) < 4 * np.sqrt(expected.sum())
    obs, exp = block_sums(counts, 32), block_sums(expected, 32)
    ok = exp > 50
    z = (obs[ok] - exp[ok]) / np.sqrt(exp[ok])
    assert ok.sum() > 80 and abs(z.mean()) < 0.35 and 0.75 < z.std() < 1.3
    # the corners (particles, plus the out-of-time share of the sky) scale with the particle factor
    g = instrument.geometry
    cx, cy = g.image_grid(1).centers()
    x, y = np.meshgrid(cx, cy)
    corners = (g.detector_mask(1) > 0) & (np.hypot(x - g.fov_center_x_arcsec, y - g.fov_center_y_arcsec) > 960)
    assert expected[corners].sum() / nominal[corners].sum() == pytest.approx(1.2, rel=0.015)


def test_a_ccd_with_less_exposure_has_fewer_events_its_ontime_and_the_expected_image_agree(instrument):
    live = np.ones(12)
    live[3] = 0.4                                               # CCD 4
    sky = beta_sky()
    sky.meta["CCDLIVE"] = ",".join(f"{v:g}" for v in live)
    events = simulate_events(sky, instrument, 20_000, 1, seed=16)
    assert events.header["ONTIME04"][0] == pytest.approx(8_000.0) and events.header["ONTIME03"][0] == 20_000.0
    c = events.columns
    full = simulate_events(beta_sky(), instrument, 20_000, 1, seed=16).columns
    n4, n4_full = np.sum(c["CCDNR"] == 4), np.sum(full["CCDNR"] == 4)
    assert n4 == pytest.approx(0.4 * n4_full, rel=0.1)
    counts = binned(events, instrument, 1)
    expected = expected_image(sky, instrument, 20_000, 1)
    assert abs(counts.sum() - expected.sum()) < 4 * np.sqrt(expected.sum())
    ratio = expected / np.maximum(expected_image(beta_sky(), instrument, 20_000, 1), 1e-12)
    assert set(np.round(np.unique(ratio[ratio > 0]), 6)) <= {0.4, 1.0}


def test_submode_sets_frame_time_and_out_of_time_fraction():
    full = make_instrument()
    extended = make_instrument(submode="PrimeFullWindowExtended")
    assert (full.frame_time_s, full.out_of_time_fraction) == (0.0734, 0.063)
    assert (extended.frame_time_s, extended.out_of_time_fraction) == (0.1991, 0.023)
    assert make_instrument(submode="PrimeFullWindowExtended", out_of_time_fraction=0.0).out_of_time_fraction == 0.0
    header = simulate_events(point_sky(1e-4), extended, 1000.0, 1, seed=1).header
    assert header["SUBMODE"][0] == "PrimeFullWindowExtended" and header["FRMTIME"][0] == pytest.approx(199.1)


@pytest.mark.parametrize("per_slot", [None, 2_000])
def test_a_time_split_gives_two_independent_poisson_images(instrument, monkeypatch, per_slot):
    """TIME is uniform and independent of position and component (the photons are drawn component by
    component, each given a random time slot, then put in a random order within it): the first and second
    halves of the exposure are two independent Poisson images of the same mean, for the source and the
    background alike; with this sky's two time slots and with ~70 of them."""
    if per_slot is not None:
        monkeypatch.setattr(simulator, "PHOTONS_PER_SLOT", per_slot)
    sky = beta_sky(total_flux=2e-3, npix=600)
    events = simulate_events(sky, instrument, 40_000.0, 1, seed=5)
    n_slots = simulator.time_slot_count(events.header["NSKYPHOT"][0])
    assert n_slots == 2 if per_slot is None else n_slots > 60
    c = events.columns
    assert np.all(np.diff(c["TIME"]) >= 0)
    t0, t1 = events.header["TSTART"][0], events.header["TSTOP"][0]
    assert t0 <= c["TIME"][0] and c["TIME"][-1] <= t1
    early = c["TIME"] < 0.5 * (t0 + t1)
    grid = instrument.geometry.image_grid(1)
    good = select_good(c["PATTERN"], c["FLAG"], c["PI"])
    a = bin_counts(c["DETX"][good & early], c["DETY"][good & early], grid).astype(float)
    b = bin_counts(c["DETX"][good & ~early], c["DETY"][good & ~early], grid).astype(float)
    # the cluster (drawn first) and the background (drawn last) each split evenly
    centre = np.hypot(*np.meshgrid(np.arange(grid.nx) - grid.nx / 2, np.arange(grid.ny) - grid.ny / 2)) < 20
    for region in (centre, ~centre):
        na, nb = a[region].sum(), b[region].sum()
        assert abs(na - nb) < 4 * np.sqrt(na + nb), (na, nb)
    # pixel by pixel: (A - B)^2 / (A + B) averages 1 for independent Poisson halves of one mean
    both = (a + b) > 0
    stat = np.mean((a[both] - b[both]) ** 2 / (a[both] + b[both]))
    assert abs(stat - 1.0) < 0.03, stat
    # arrival times uniform over the exposure (Kolmogorov-Smirnov), also within each tenth of it
    assert stats.kstest((c["TIME"] - t0) / (t1 - t0), "uniform").pvalue > 1e-3
    fine = np.floor(10 * (c["TIME"] - t0) / (t1 - t0) % 1.0 * 10).astype(int)
    assert stats.chisquare(np.bincount(fine, minlength=10)).pvalue > 1e-3


def test_time_slots_hand_out_every_event_once_in_a_random_order():
    """Each event added lands in exactly one slot; slot sizes are multinomial; within a slot the order does
    not follow the order of arrival."""
    rng = np.random.default_rng(0)
    slots = simulator.TimeSlots(rng, 50)
    values = np.arange(200_000, dtype=np.float32)
    for a in range(0, values.size, 30_000):   # pieces, as detect_photons hands them over
        v = values[a:a + 30_000]
        slots.add(v, -v, v + 0.5)
    sizes, seen = [], []
    for k, x, y, energy in slots.slots():
        assert np.array_equal(y, -x) and np.array_equal(energy, x + 0.5)
        sizes.append(x.size)
        seen.append(x)
        if x.size > 2:   # a random order: its rank correlation with the arrival order is ~0
            assert abs(stats.spearmanr(np.arange(x.size), x)[0]) < 5 / np.sqrt(x.size)
    assert np.array_equal(np.sort(np.concatenate(seen)), values) and slots.total == values.size
    assert stats.chisquare(sizes).pvalue > 1e-3


def test_event_files_are_astropys_bytes_written_faster(instrument, tmp_path):
    """write_events fills the rows column by column and sums them once, and writes what astropy writes."""
    from astropy.io import fits

    from xmmsr.instrument.events import to_hdulist
    from xmmsr.io import open_fits, write_fits_atomic

    events = simulate_events(point_sky(1e-3), instrument, 20_000.0, 2, seed=9)
    write_events(events, tmp_path / "fast.fits")
    write_fits_atomic(to_hdulist(events), tmp_path / "astropy.fits")
    assert (tmp_path / "fast.fits").read_bytes() == (tmp_path / "astropy.fits").read_bytes()
    with open_fits(tmp_path / "fast.fits", "event list") as hdul:      # checksums verified
        assert hdul["EVENTS"].header["TCRVL2"] == events.header["RA_PNT"][0]
        assert len(hdul["EVENTS"].data) == len(events)
    empty = simulate_events(point_sky(1e-30), instrument, 1.0, 1, seed=1, background=False)
    write_events(empty, tmp_path / "empty.fits")
    assert len(fits.getdata(tmp_path / "empty.fits", "EVENTS")) == len(empty) == 0


def test_sparse_deposits_added_as_shifted_kernels_equal_the_fft_convolution(instrument, monkeypatch):
    """A few point sources are convolved by adding shifted kernels (cheaper than an FFT of their box): the same
    expected image as through the FFT, to rounding."""
    import xmmsr.instrument.simulator as simulator

    sky = point_sky(1e-3, (300.0, -200.0))
    direct = expected_image(sky, instrument, 20_000.0, 2)
    monkeypatch.setattr(simulator, "DIRECT_DEPOSITS", 0)
    through_fft = expected_image(sky, instrument, 20_000.0, 2)
    np.testing.assert_allclose(direct, through_fft, rtol=1e-9, atol=1e-12)
    assert direct.sum() > 0


@pytest.mark.parametrize("every", [1, 9])   # every pixel (the whole-map product) or a sparse sky
def test_sky_projection_is_the_exact_transformation(instrument, every):
    """The separable cubic projection of sky pixels onto the detector agrees with the WCS + gnomonic
    transformation to far below a micro-arcsecond, for dense and sparse skies."""
    from xmmsr.instrument.events import Pointing
    from xmmsr.instrument.simulator import _pixel_to_detector

    sky = beta_sky(npix=600)
    frame = Pointing.of(sky, instrument)
    ny, nx = sky.image.shape
    rows, cols = np.divmod(np.arange(0, nx * ny, every), nx)
    dx, dy = _pixel_to_detector(sky, frame, cols, rows)
    ex, ey = frame.to_detector(*frame.tangent(*sky.wcs.wcs_pix2world(cols.astype(float), rows.astype(float), 0)))
    assert np.abs(dx - ex).max() < 1e-6 and np.abs(dy - ey).max() < 1e-6   # arcsec


def test_out_of_time_streaks_of_an_image_and_of_its_padded_frame(instrument):
    """The streaks hold the out-of-time fraction of each column's counts within each CCD row, spread
    along the column; a frame padded around the grid (as the training set's) gives the same streaks."""
    from xmmsr.instrument.simulator import out_of_time_streaks

    cx, cy = instrument.geometry.image_grid(1).centers()
    image = np.zeros((cy.size, cx.size))
    image[200, 150] = 1000.0
    streaks = out_of_time_streaks(image, instrument, 1)
    f = instrument.out_of_time_fraction
    assert streaks.sum() == pytest.approx(f * 1000.0, rel=1e-9)
    assert np.count_nonzero(streaks[:, 150]) > 100 and np.count_nonzero(np.delete(streaks, 150, axis=1)) == 0
    padded = np.zeros((cy.size + 5, cx.size + 5))
    padded[2:2 + cy.size, 2:2 + cx.size] = image
    np.testing.assert_allclose(out_of_time_streaks(padded, instrument, 1)[2:2 + cy.size, 2:2 + cx.size], streaks)
    assert not out_of_time_streaks(image[:100, :100], instrument, 1).any()   # a cutout: no whole columns


def test_fft_convolution_is_scipys_fftconvolve_bit_for_bit():
    """The expected image convolves with its own real-FFT routine (scipy.signal costs seconds of start-up):
    the same arithmetic, so the same bits, as scipy.signal.fftconvolve in full mode."""
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(2)
    for shape, size in (((37, 52), 31), ((250, 211), 61), ((2, 2), 9)):   # deposits are at least 2 x 2
        image, kernel = rng.random(shape), rng.random((size, size))
        assert np.array_equal(simulator.fft_convolve(image, kernel), fftconvolve(image, kernel, mode="full"))


def test_simulate_imports_neither_torch_nor_scipy_signal():
    """`xmmsr simulate` and `xmmsr bin` import only what they need (start-up is part of every call)."""
    import subprocess
    import sys

    code = ("import sys, xmmsr.cli; from xmmsr.instrument.simulator import simulate_events; "
            "from xmmsr.instrument.binning import bin_event_file; "
            "print(' '.join(m for m in ('torch', 'lightning', 'snakemake', 'scipy.signal', 'scipy.stats') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []



def test_expected_image_and_background_at_once_equal_the_two_calls(instrument):
    """The expected cube's planes: the background model evaluated once gives the same arrays as the two calls."""
    from xmmsr.instrument.simulator import ccd_live, expected_image_and_background
    from xmmsr.sky.model import FieldBackground

    sky = beta_sky()
    sky.meta.update(FieldBackground(particle=1.2, cxb=0.8, galactic=1.9, soft_protons=0.7).as_meta())
    sky.meta["CCDLIVE"] = ",".join(["1"] * 3 + ["0.4"] + ["1"] * 8)
    image, background = expected_image_and_background(sky, instrument, 1.0, 2)
    np.testing.assert_array_equal(image, expected_image(sky, instrument, 1.0, 2))
    np.testing.assert_array_equal(background, expected_background(instrument, 1.0, 2, FieldBackground.of(sky.meta),
                                                                  ccd_live(sky, instrument)))
    assert (image > background).any() and background.min() >= 0
