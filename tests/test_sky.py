"""Physics of the sky models: AGN logN-logS, synthetic extended sources, augmentation, generation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from scipy import integrate

from xmmsr.config import ConfigError, check_config, default_config
from xmmsr.errors import InputError
from xmmsr.sky import agn
from xmmsr.sky.augment import boresight_offset, central_mean, normalise_brightness, zoom_image
from xmmsr.sky.generate import BrightnessReference, generate_source, source_seed
from xmmsr.sky.model import SkyModel, empty_point_table, make_wcs, read_sky_model, write_sky_model
from xmmsr.sky.synthetic import CavityPair, Clump, Shock, beta_cluster, filament, snr_shell

BRIGHTNESS = BrightnessReference(background_rate_arcsec2=2e-6, effective_area_cm2=600.0)


def sources_cfg(npix: int = 200) -> dict:
    cfg = copy.deepcopy(default_config()["sources"])
    cfg["sky"]["npix"] = npix
    return cfg


def radial_grid(n: int, center: float | None = None) -> tuple[np.ndarray, float]:
    c = (n - 1) / 2 if center is None else center
    yy, xx = np.mgrid[:n, :n]
    return np.hypot(xx - c, yy - c), c


# --------------------------------------------------------------------------- AGN

def test_logn_logs_shape():
    s = np.array([1e-18, 2e-15, 1e-11])
    n = agn.cumulative_counts(s)
    assert n[1] == pytest.approx(agn.MORETTI_N0 / (1 + (agn.MORETTI_S0 / 2e-15) ** (agn.MORETTI_A1 - agn.MORETTI_A2)))
    # Local slopes: -a2 at the faint end, -a1 at the bright end.
    def slope(x: float) -> float:
        return np.log(agn.cumulative_counts(1.01 * x) / agn.cumulative_counts(x)) / np.log(1.01)

    assert slope(1e-19) == pytest.approx(-agn.MORETTI_A2, abs=0.01)
    assert slope(1e-10) == pytest.approx(-agn.MORETTI_A1, abs=0.01)
    assert np.all(np.diff(n) < 0)


def test_energy_to_photon_flux_hand_values():
    kev = 1.602176634e-9
    # Gamma = 2: photons / energy = (1/0.5 - 1/2) / ln(4) per keV.
    assert agn.energy_to_photon_flux(1e-14, 2.0) == pytest.approx(1e-14 / kev * 1.5 / np.log(4.0), rel=1e-10)
    # Gamma = 1: ln(4) / 1.5.
    assert agn.energy_to_photon_flux(1e-14, 1.0) == pytest.approx(1e-14 / kev * np.log(4.0) / 1.5, rel=1e-10)
    # Gamma = 1.9 against numerical integration.
    ratio = integrate.quad(lambda e: e**-1.9, 0.5, 2)[0] / integrate.quad(lambda e: e**-0.9, 0.5, 2)[0]
    assert agn.energy_to_photon_flux(3e-15, 1.9) == pytest.approx(3e-15 / kev * ratio, rel=1e-8)


def test_sample_agn_counts_slope_and_positions():
    rng = np.random.default_rng(1)
    width, dec = 3.0, 60.0
    s_min, s_max = 1e-15, 1e-12
    table = agn.sample_agn(rng, 200.0, dec, width, s_min, s_max, 1.9, 3e20)
    assert table.dtype == empty_point_table().dtype
    expected = (agn.cumulative_counts(s_min) - agn.cumulative_counts(s_max)) * width**2
    assert abs(len(table) - expected) < 4 * np.sqrt(expected)
    # Flux distribution: counts above thresholds on both sides of the break follow N(>S).
    energy = table["FLUX"] / agn.energy_to_photon_flux(1.0, 1.9)
    for s in (3e-15, 1e-14, 4e-14):
        exp_s = (agn.cumulative_counts(s) - agn.cumulative_counts(s_max)) * width**2
        assert abs(np.sum(energy > s) - exp_s) < 4 * np.sqrt(exp_s) + 1
    assert energy.min() >= s_min * (1 - 1e-9) and energy.max() <= s_max * (1 + 1e-9)
    np.testing.assert_array_equal(table["GAMMA"], 1.9)
    np.testing.assert_array_equal(table["NH"], 3e20)
    # Positions fill the square tangent-plane field: RA spans width / cos(dec), not width.
    wcs = make_wcs(200.0, dec, (1, 1), width * 3600.0)
    x, y = wcs.wcs_world2pix(table["RA"], table["DEC"], 0)
    assert np.all(np.abs(x) <= 0.5 + 1e-9) and np.all(np.abs(y) <= 0.5 + 1e-9)
    assert np.std(x) == pytest.approx(np.sqrt(1 / 12), rel=0.05)
    assert np.std(y) == pytest.approx(np.sqrt(1 / 12), rel=0.05)
    near_centre = np.abs(table["DEC"] - dec) < 0.1
    ra_span = np.ptp(table["RA"][near_centre]) * np.cos(np.deg2rad(dec))
    assert ra_span == pytest.approx(width, rel=0.02)


# --------------------------------------------------------------------------- synthetic sources

def test_beta_model_slope_and_ellipticity():
    n, beta, rc = 801, 0.7, 4.0
    image = beta_cluster((n, n), 1.0, ((n - 1) / 2, (n - 1) / 2), rc, beta).astype(np.float64)
    r, _ = radial_grid(n)
    sel = (r > 20 * rc) & (r < 90 * rc)
    slope = np.polyfit(np.log(r[sel]), np.log(image[sel]), 1)[0]
    assert slope == pytest.approx(-6 * beta + 1, abs=0.02)
    # Ellipticity e = 1 - b/a: the value at a along the major axis equals that at a(1-e) along the minor.
    c = 200.0
    ell = beta_cluster((401, 401), 1.0, (c, c), 20.0, 0.66, ellipticity=0.4, position_angle_deg=90.0)
    assert ell[int(c) + 100, int(c)] == pytest.approx(ell[int(c), int(c) + 60], rel=1e-6)
    assert ell[int(c) + 100, int(c)] > 2 * ell[int(c), int(c) + 100]


def test_cluster_substructure():
    n, c, rc = 601, 300.0, 30.0
    base = beta_cluster((n, n), 1.0, (c, c), rc, 0.7).astype(np.float64)
    cav = CavityPair(distance_arcsec=40.0, angle_deg=0.0, radius_arcsec=12.0, depth=0.6)
    holed = beta_cluster((n, n), 1.0, (c, c), rc, 0.7, cavities=cav)
    for x in (c + 40, c - 40):   # both cavities, opposite each other
        assert holed[int(c), int(x)] / base[int(c), int(x)] == pytest.approx(0.4, rel=1e-3)
    assert holed[int(c) + 40, int(c)] == pytest.approx(base[int(c) + 40, int(c)], rel=1e-4)
    shock = Shock(radius_arcsec=120.0, angle_deg=90.0, half_opening_deg=60.0, jump=2.5)
    shocked = beta_cluster((n, n), 1.0, (c, c), rc, 0.7, shock=shock)
    inside, outside = shocked[int(c) + 118, int(c)], shocked[int(c) + 122, int(c)]
    profile_ratio = base[int(c) + 118, int(c)] / base[int(c) + 122, int(c)]
    assert inside / outside == pytest.approx(2.5 * profile_ratio, rel=1e-3)
    assert shocked[int(c) - 118, int(c)] == pytest.approx(base[int(c) - 118, int(c)], rel=1e-6)   # opposite side
    clumps = [Clump(60.0, 0.0, 4.0, 0.05), Clump(-50.0, 30.0, 3.0, 0.03)]
    lumpy = beta_cluster((n, n), 1.0, (c, c), rc, 0.7, clumps=clumps).astype(np.float64)
    assert lumpy.sum() / base.sum() == pytest.approx(1.08, rel=0.01)
    assert lumpy[int(c), int(c) + 60] > 1.5 * base[int(c), int(c) + 60]


def test_snr_shell_limb_brightened():
    n, r_in, r_out = 501, 150.0, 180.0
    image = snr_shell((n, n), 1.0, (250.0, 250.0), r_in, r_out).astype(np.float64)
    r, _ = radial_grid(n)
    assert image[r > r_out + 1].max() == 0.0
    assert image[250, 250] == pytest.approx(r_out - r_in, rel=1e-3)
    bins = np.arange(0, r_out + 2)
    profile = np.bincount(r.astype(int).ravel(), image.ravel(), minlength=len(bins))[:len(bins)] / \
        np.bincount(r.astype(int).ravel(), minlength=len(bins))[:len(bins)]
    peak = np.argmax(profile)
    assert r_in - 2 <= peak <= r_in + 2                          # projected shell peaks at the inner radius
    assert profile[peak] / profile[0] == pytest.approx(np.sqrt((r_out + r_in) / (r_out - r_in)), rel=0.05)
    # The image is half the chord through the shell: its integral is half the emitting volume.
    assert 2 * image.sum() == pytest.approx(4 / 3 * np.pi * (r_out**3 - r_in**3), rel=2e-3)
    tilted = snr_shell((n, n), 1.0, (250.0, 250.0), r_in, r_out, gradient=0.4, gradient_angle_deg=0.0)
    gradient_ratio = (1 + 0.4 * 160 / 180) / (1 - 0.4 * 160 / 180)   # brighter towards +x
    assert tilted[250, 250 + 160] / tilted[250, 250 - 160] == pytest.approx(gradient_ratio, rel=1e-3)


def test_filament_width_length_and_curvature():
    n, c, length, width = 801, 400.0, 600.0, 20.0
    straight = filament((n, n), 1.0, (c, c), length, width, position_angle_deg=0.0).astype(np.float64)
    column = straight[:, int(c)]
    assert np.argmax(column) == int(c)
    above_half = np.flatnonzero(column >= 0.5 * column.max())
    assert above_half.size == pytest.approx(width, abs=1.5)       # FWHM of the cross-section
    row = straight[int(c)]
    assert row[int(c) + 235] == pytest.approx(1.0, abs=1e-6)       # flat part (taper over the outer 20%)
    assert 0 < row[int(c) + 285] < 0.5 and row[int(c) + 305] < 1e-6   # tapered to zero at the end
    bend = 60.0
    curved = filament((n, n), 1.0, (c, c), length, width, position_angle_deg=0.0, bend_deg=bend).astype(np.float64)
    radius = length / np.deg2rad(bend)
    s = 200.0                                                   # arc length from the centre
    x_ridge, y_ridge = radius * np.sin(s / radius), radius * (1 - np.cos(s / radius))
    col = curved[:, int(round(c + x_ridge))]
    assert np.argmax(col) - c == pytest.approx(y_ridge, abs=1.5)


# --------------------------------------------------------------------------- augmentation

def test_normalise_brightness_hits_target():
    n = 301
    r, c = radial_grid(n)
    image = np.exp(-0.5 * (r / 40.0) ** 2).astype(np.float32)
    out = normalise_brightness(image, 2.0, (c, c), 12.0, 3e-6, 400.0, 30.0)
    target = 12.0 * 3e-6 * 4.0 / 400.0
    inside = r * 2.0 <= 30.0
    assert out[inside].astype(np.float64).mean() == pytest.approx(target, rel=1e-6)
    assert central_mean(out, 2.0, (c, c), 30.0) == pytest.approx(target, rel=1e-6)
    image[inside] = 0.0
    with pytest.raises(InputError, match="central_radius"):
        normalise_brightness(image, 2.0, (c, c), 12.0, 3e-6, 400.0, 30.0)


def half_light_radius(image: np.ndarray, r: np.ndarray) -> float:
    order = np.argsort(r.ravel())
    cumulative = np.cumsum(image.ravel()[order].astype(np.float64))
    return float(r.ravel()[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def test_zoom_doubles_half_light_radius():
    n = 401
    r, c = radial_grid(n, center=190.0)   # off the grid centre, on purpose
    image = np.exp(-0.5 * (r / 15.0) ** 2).astype(np.float32)
    zoomed = zoom_image(image, 2.0, (c, c))
    assert zoomed.min() >= 0 and zoomed.dtype == np.float32
    assert half_light_radius(zoomed, r) / half_light_radius(image, r) == pytest.approx(2.0, rel=0.03)
    assert zoomed.sum() / image.sum() == pytest.approx(4.0, rel=0.01)
    assert np.argmax(zoomed) == np.argmax(image)
    np.testing.assert_array_equal(zoom_image(image, 1.0, (c, c)), image)


def test_boresight_offset_statistics():
    rng = np.random.default_rng(5)
    offsets = np.array([boresight_offset(rng, 1800.0, 0.05) for _ in range(4000)])
    assert np.std(offsets, axis=0) == pytest.approx([90.0, 90.0], rel=0.05)
    assert np.abs(offsets.mean(axis=0)).max() < 5 * 90 / np.sqrt(4000)


# --------------------------------------------------------------------------- generate_source

def test_generate_deterministic_and_distinct():
    cfg = sources_cfg(400)
    for kind in ("extended", "agn"):
        a = generate_source(kind, 3, cfg, BRIGHTNESS, 17)
        b = generate_source(kind, 3, cfg, BRIGHTNESS, 17)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.points, b.points)
        assert (a.ra_pnt, a.dec_pnt, a.spectrum, a.meta, a.seed) == (b.ra_pnt, b.dec_pnt, b.spectrum, b.meta, b.seed)
        c = generate_source(kind, 4, cfg, BRIGHTNESS, 17)
        d = generate_source(kind, 3, cfg, BRIGHTNESS, 18)
        assert len({a.seed, c.seed, d.seed}) == 3
        assert not np.array_equal(a.points, c.points) and not np.array_equal(a.points, d.points)
        if kind == "extended":
            assert not np.array_equal(a.image, c.image)
    assert source_seed(17, "agn", 3) != source_seed(17, "extended", 3)


def test_generated_extended_population():
    cfg = sources_cfg(200)
    cfg["extended"]["include_agn"] = False
    models, offsets = [], []
    for i in range(300):
        m = generate_source("extended", i, cfg, BRIGHTNESS, 2)
        models.append(m.meta["MODEL"])
        offsets.append((m.meta["OFFX_AS"], m.meta["OFFY_AS"]))
        assert m.image.dtype == np.float32 and m.image.shape == (200, 200) and m.image.min() >= 0
        lo, hi = cfg["extended"]["sigma_b"]
        assert 1.0 <= m.meta["ZOOM"] <= 2.0 and lo <= m.meta["SIGMA_B"] <= hi
        assert m.spectrum[0] == "bremss" and len(m.points) == 0
        if i < 20:
            # Brightness: the central 30" mean is sigma_b times the background (as photon flux).
            target = m.meta["SIGMA_B"] * BRIGHTNESS.background_rate_arcsec2 / BRIGHTNESS.effective_area_cm2
            assert central_mean(m.image, 1.0, (99.5, 99.5), 30.0) == pytest.approx(target, rel=1e-5)
            # The pointing is the source centre shifted by the recorded offset (tangent plane, arcsec).
            centre = SkyCoord(150.1, 2.2, unit="deg")
            sep = centre.separation(SkyCoord(m.ra_pnt, m.dec_pnt, unit="deg")).arcsec
            assert sep == pytest.approx(np.hypot(*offsets[-1]), rel=1e-4, abs=1e-3)
            x, y = m.wcs.wcs_world2pix(m.ra_pnt, m.dec_pnt, 0)
            assert (x - 99.5, y - 99.5) == pytest.approx(offsets[-1], abs=1e-6)
    offsets = np.array(offsets)
    assert np.std(offsets, axis=0) == pytest.approx([0.05 * 200, 0.05 * 200], rel=0.15)
    fractions = {k: models.count(k) / len(models) for k in ("cluster", "snr", "filament")}
    for k, p in {"cluster": 0.6, "snr": 0.2, "filament": 0.2}.items():
        assert abs(fractions[k] - p) < 4 * np.sqrt(p * (1 - p) / len(models))


def test_generated_agn_and_background_fields():
    cfg = sources_cfg(900)
    field = generate_source("agn", 0, cfg, BRIGHTNESS, 9)
    area = (900 / 3600) ** 2
    expected = (agn.cumulative_counts(1e-16) - agn.cumulative_counts(1e-12)) * area
    assert abs(len(field.points) - expected) < 4 * np.sqrt(expected)
    assert field.meta["NAGN"] == len(field.points) and field.image.sum() == 0
    assert field.spectrum == ("powerlaw", 1.9) and (field.ra_pnt, field.dec_pnt) == (150.1, 2.2)
    x, y = field.wcs.wcs_world2pix(field.points["RA"], field.points["DEC"], 0)
    assert np.all((x > -0.5) & (x < 899.5) & (y > -0.5) & (y < 899.5))
    blank = generate_source("background", 0, cfg, BRIGHTNESS, 9)
    assert blank.image.sum() == 0 and len(blank.points) == 0 and blank.kind == "background"


@pytest.mark.parametrize("kind", ["extended", "agn", "background"])
def test_round_trip_through_fits(tmp_path, kind):
    model = generate_source(kind, 1, sources_cfg(200), BRIGHTNESS, 4)
    write_sky_model(model, tmp_path / "sky.fits")
    back = read_sky_model(tmp_path / "sky.fits")
    np.testing.assert_array_equal(back.image, model.image)
    np.testing.assert_array_equal(back.points, model.points)
    assert (back.ra_pnt, back.dec_pnt) == (model.ra_pnt, model.dec_pnt)
    assert (back.spectrum, back.nh) == (model.spectrum, model.nh)
    assert (back.kind, back.source_id, back.seed) == (model.kind, model.source_id, model.seed)
    assert {k: back.meta[k] for k in model.meta} == model.meta


@pytest.mark.parametrize("path, value, key", [
    (("extended", "mix"), {"cluster": 0.5, "snr": 0.2, "filament": 0.2}, "sources.extended.mix"),
    (("extended", "mix"), {"cluster": 0.5, "blob": 0.5}, "sources.extended.mix"),
    (("extended", "cluster", "rc_arcsec"), [90, 15], "sources.extended.cluster.rc_arcsec"),
    (("extended", "zoom"), [0.5, 2.0], "sources.extended.zoom"),
    (("extended", "sigma_b"), [5], "sources.extended.sigma_b"),
    (("extended", "cluster", "cavity_prob"), 1.5, "sources.extended.cluster.cavity_prob"),
    (("agn", "flux_min"), 1e-11, "sources.agn.flux_min"),
    (("sky", "pixel_arcsec"), 0.0, "sources.sky.pixel_arcsec"),
])
def test_bad_config_names_the_key(path, value, key):
    """Sources are configured through the config, checked once where it enters (schema, ranges ordered,
    probabilities summing to 1, flux_min below flux_max), before any source is drawn."""
    raw: dict = {"agn": {"flux_max": 1e-12}}
    section = raw
    for p in path[:-1]:
        section = section.setdefault(p, {})
    section[path[-1]] = value
    with pytest.raises(ConfigError) as err:
        check_config({"sources": raw})
    assert key in str(err.value)


def test_field_background_and_agn_field_draws_are_seeded_ranged_and_leave_the_sources_alone():
    from xmmsr.sky.model import FieldBackground

    cfg = copy.deepcopy(default_config()["sources"])
    cfg["agn"]["target_fraction"] = 1.0
    first = [generate_source("agn", i, cfg, BRIGHTNESS, 5) for i in range(6)]
    again = [generate_source("agn", i, cfg, BRIGHTNESS, 5) for i in range(6)]
    for a, b in zip(first, again):
        assert a.meta == b.meta and np.array_equal(a.points, b.points)
    fb = cfg["field_background"]
    for m in first:
        f = FieldBackground.of(m.meta)
        assert fb["particle"][0] <= f.particle <= fb["particle"][1] and fb["cxb"][0] <= f.cxb <= fb["cxb"][1]
        assert fb["galactic"][0] <= f.galactic <= fb["galactic"][1]
        assert f.soft_protons == 0 or fb["soft_protons"][0] <= f.soft_protons <= fb["soft_protons"][1]
        # a target AGN at the pointing, every AGN of the field with the field's absorption
        assert m.points["RA"][-1] == m.ra_pnt and m.points["DEC"][-1] == m.dec_pnt
        assert np.all(m.points["NH"] == m.meta["AGNNH"]) and m.meta["AGNTGT"] > 0
    assert len({FieldBackground.of(m.meta) for m in first}) == len(first)
    # the scales come from their own stream: without them the field AGN are the same, up to the field scale
    plain = copy.deepcopy(cfg)
    plain["field_background"] = {}
    plain["agn"].update(field_flux_scale=[1.0, 1.0], target_fraction=0.0)
    bare = generate_source("agn", 0, plain, BRIGHTNESS, 5)
    n = len(bare.points)
    np.testing.assert_allclose(first[0].points["FLUX"][:n], bare.points["FLUX"] * first[0].meta["AGNSCALE"])
    assert FieldBackground.of(bare.meta) == FieldBackground()


def test_close_agn_pairs_are_drawn_when_asked_and_fields_unchanged_otherwise():
    """sources.agn.pair_fraction gives AGN a fainter companion at a separation in the configured range;
    without it (the default) the fields are those drawn before the option existed."""
    from astropy.coordinates import SkyCoord

    cfg = copy.deepcopy(default_config()["sources"])
    cfg["agn"].update(target_fraction=1.0, pair_fraction=0.5, pair_separation_arcsec=[3.0, 9.0],
                      pair_flux_ratio=[1.0, 5.0])
    plain = copy.deepcopy(cfg)
    plain["agn"]["pair_fraction"] = 0.0
    pairs = 0
    for i in range(4):
        with_pairs, without = (generate_source("agn", i, c, BRIGHTNESS, 5) for c in (cfg, plain))
        n, k = len(without.points), with_pairs.meta["AGNPAIRS"]
        assert "AGNPAIRS" not in without.meta and len(with_pairs.points) == n + k
        assert np.array_equal(with_pairs.points[:n], without.points)     # the field itself is unchanged
        field = SkyCoord(without.points["RA"], without.points["DEC"], unit="deg")
        companions = with_pairs.points[n:]
        for c in companions:   # a primary at the drawn separation, brighter by the drawn ratio
            sep = SkyCoord(c["RA"], c["DEC"], unit="deg").separation(field).arcsec
            ratio = without.points["FLUX"] / c["FLUX"]
            assert np.any((sep >= 3.0 - 1e-6) & (sep <= 9.0 + 1e-6) & (ratio >= 1.0 - 1e-9) & (ratio <= 5.0 + 1e-9)
                          & (without.points["GAMMA"] == c["GAMMA"]) & (without.points["NH"] == c["NH"]))
        pairs += k
        if i == 0:
            assert np.array_equal(generate_source("agn", 0, cfg, BRIGHTNESS, 5).points, with_pairs.points)
    total = sum(len(generate_source("agn", i, plain, BRIGHTNESS, 5).points) for i in range(4))
    assert 0.35 * total <= pairs <= 0.65 * total


def test_bright_draws_are_capped_at_the_count_rate_of_real_fields():
    cfg = sources_cfg(400)
    cfg["extended"]["include_agn"] = False
    cfg["extended"]["sigma_b"] = [4000.0, 5000.0]
    cfg["extended"]["max_count_rate"] = 50.0
    capped = 0
    for i in range(12):
        m = generate_source("extended", i, cfg, BRIGHTNESS, 5)
        rate = float(m.image.sum(dtype=np.float64)) * BRIGHTNESS.effective_area_cm2
        assert rate <= 50.0 * (1 + 1e-5)
        # the recorded sigma_b is the brightness the field has: central 30" mean over the background
        target = m.meta["SIGMA_B"] * BRIGHTNESS.background_rate_arcsec2 / BRIGHTNESS.effective_area_cm2
        assert central_mean(m.image, 1.0, (199.5, 199.5), 30.0) == pytest.approx(target, rel=1e-4)
        capped += m.meta["SIGMA_B"] < 4000.0
    assert capped > 0


def _sky_file_with_bunit(tmp_path, bunit: str):
    model = SkyModel(np.full((20, 20), 1e-6, np.float32), make_wcs(150.0, 2.0, (20, 20), 1.0), 150.0, 2.0,
                     "extended", points=empty_point_table())
    path = tmp_path / "sky.fits"
    write_sky_model(model, path)
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["BUNIT"] = bunit
    return path


@pytest.mark.parametrize("bunit, scale", [("ph cm-2 s-1", 1.0), ("photon/(cm2 s)", 1.0), ("ph/cm2/s", 1.0),
                                          ("photon cm-2 s-1", 1.0), ("ph/(m2 s)", 1e-4)])
def test_any_spelling_of_photon_flux_is_read_and_converted(tmp_path, bunit, scale):
    back = read_sky_model(_sky_file_with_bunit(tmp_path, bunit))
    np.testing.assert_allclose(back.image, 1e-6 * scale, rtol=1e-6)


@pytest.mark.parametrize("bunit", ["erg/(cm2 s)", "count", "count/s", "", "not a unit"])
def test_a_unit_that_is_no_photon_flux_is_refused_with_the_fix(tmp_path, bunit):
    with pytest.raises(InputError, match="BUNIT") as err:
        read_sky_model(_sky_file_with_bunit(tmp_path, bunit))
    assert "photon flux" in str(err.value)
