"""The calibrated instrument tables: dead pixels and vignetting (reading, bad input, use)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_instrument

from xmmsr.errors import InputError
from xmmsr.instrument.geometry import EdgeMargins, ImageGrid, read_dead_pixels
from xmmsr.instrument.model import Vignetting


def test_dead_pixel_table_is_read_and_bad_tables_name_file_and_line(tmp_path):
    good = tmp_path / "dead.csv"
    good.write_text("# a comment\nrow_min,row_max,col_min,col_max,kind\n0,2,0,402,row\n5,5,7,8,pixel\n")
    assert read_dead_pixels(good) == ((0, 2, 0, 402), (5, 5, 7, 8))
    inst = make_instrument(geometry={"dead_pixels_file": str(good)})
    dead = inst.geometry.dead_map()
    assert dead.sum() == 3 * 403 + 2 and dead[5, 7] == dead[5, 8] == 1 and dead[5, 9] == 0
    assert inst.geometry.detector_mask(1)[5, 7] == 0

    bad = tmp_path / "bad.csv"
    bad.write_text("row_min,row_max,col_min,col_max\n3,1,0,0\n")
    with pytest.raises(InputError, match=r"bad\.csv.*line 2"):
        read_dead_pixels(bad)
    bad.write_text("rows,cols\n1,2\n")
    with pytest.raises(InputError, match=r"bad\.csv.*header"):
        read_dead_pixels(bad)
    with pytest.raises(InputError, match=r"missing\.csv"):
        read_dead_pixels(tmp_path / "missing.csv")


def test_vignetting_table_interpolates_in_angle_and_energy_and_rejects_bad_tables(tmp_path):
    table = tmp_path / "vig.csv"
    table.write_text("# test\ntheta_arcmin,v_1.0keV,v_2.0keV\n0,1.0,1.0\n10,0.5,0.3\n")
    v = Vignetting.from_file(table)
    assert float(v(5.0, 1.0)) == pytest.approx(0.75) and float(v(5.0, 2.0)) == pytest.approx(0.65)
    assert float(v(5.0, 1.5)) == pytest.approx(0.70) and float(v(20.0, 1.0)) == pytest.approx(0.5)
    per_photon = v(np.array([5.0, 5.0], dtype=np.float32), np.array([1.0, 2.0], dtype=np.float32))
    assert per_photon.dtype == np.float32 and np.allclose(per_photon, [0.75, 0.65])
    table.write_text("theta_arcmin,v_1.0keV\n0,1.0\n10,1.5\n")
    with pytest.raises(InputError, match=r"vig\.csv.*factors in \[0, 1\]"):
        Vignetting.from_file(table)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_photon_vignetting_is_np_interp_of_the_two_energy_rows_bit_for_bit(dtype):
    """Per-photon vignetting evaluates only the two energy rows each photon needs, with one angle search:
    the same bits as np.interp of every row and the blend between them (on the nodes, between and beyond)."""
    theta = np.array([0.0, 0.5, 1.0, 2.5, 4.0, 9.99, 10.0, 12.0, 20.0])
    v = Vignetting(tuple(theta[[0, 2, 4, 6]]), (0.5, 1.0, 2.0), ((1.0, 0.93, 0.71, 0.52), (1.0, 0.9, 0.7, 0.5),
                                                                  (1.0, 0.88, 0.66, 0.31)))
    rng = np.random.default_rng(4)
    angles = np.concatenate([theta, 12.0 * rng.random(20_000)]).astype(dtype)
    energies = (0.3 + 2.0 * rng.random(angles.size)).astype(dtype)
    got = v.of_squared(np.square(angles), energies)
    grid = np.asarray(v.theta_arcmin, dtype=dtype)
    rows = np.stack([np.interp(np.sqrt(np.square(angles)), grid, np.asarray(f, dtype=dtype)).astype(dtype)
                     for f in v.factors])
    e = np.clip(energies, 0.5, 2.0)
    k = np.clip(np.searchsorted(np.asarray(v.energy_kev, dtype=dtype), e) - 1, 0, 1)
    lo, hi = np.asarray(v.energy_kev, dtype=dtype)[k], np.asarray(v.energy_kev, dtype=dtype)[k + 1]
    w = (e - lo) / (hi - lo)
    i = np.arange(angles.size)
    expected = rows[k, i] * (dtype(1) - w) + rows[k + 1, i] * w
    assert got.dtype == dtype and np.array_equal(got, expected)


def test_edge_margins_take_their_strips_from_the_ccds_and_beside_dead_pixels(instrument):
    geo = instrument.geometry
    # a grid of 1" pixels around the whole array: the area lost is the strips' area, exactly
    grid = ImageGrid(1700, 1720, 1.0, geo.array_x0 - 40.0, geo.array_y0 - 40.0)
    m = EdgeMargins(x_arcsec=2.5, below_gap_arcsec=1.0, above_gap_arcsec=3.0)
    full = np.asarray(geo.acceptance(grid, dead=False)).sum()
    lost = full - np.asarray(geo.acceptance(grid, dead=False, margins=m)).sum()
    w, h, n = geo.ccd_width, geo.ccd_height, geo.ccds_x
    expected = 2 * n * 2 * m.x_arcsec * h + n * (w - 2 * m.x_arcsec) * (m.below_gap_arcsec + m.above_gap_arcsec)
    assert lost == pytest.approx(expected, rel=1e-6)
    assert np.array_equal(geo.acceptance(grid, dead=False, margins=EdgeMargins()), geo.acceptance(grid, dead=False))
    # beside a dead pixel a live one loses the margin's share of its width on that side
    image = geo.image_grid(1)
    live = np.asarray(geo.live(image))
    area = np.asarray(geo.acceptance(image, margins=EdgeMargins(dead_arcsec=1.5)))
    plain = np.asarray(geo.acceptance(image))
    dead = live == 0
    left = np.zeros_like(dead)
    left[:, 1:] = dead[:, :-1]
    others = np.zeros_like(dead)
    others[:, :-1] |= dead[:, 1:]
    others[1:, :] |= dead[:-1, :]
    others[:-1, :] |= dead[1:, :]
    one = left & ~others & ~dead & (plain == 1.0)
    assert one.sum() > 10
    np.testing.assert_allclose(area[one], 1.0 - 1.5 / image.pixel_arcsec)
    assert np.all(area <= plain) and np.array_equal(area[~(left | others)], plain[~(left | others)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_ccd_row_of_a_position_is_the_ccd_that_holds_it_and_locate_agrees(instrument, dtype):
    """``ccd_row`` (the out-of-time events' CCD and the injected pairs' streak) is the CCD row of
    :meth:`locate` for on-chip positions, in the position's own float type; a position in the gap above
    a CCD row still belongs to that row's pitch."""
    g = instrument.geometry
    rng = np.random.default_rng(3)
    dx = (g.array_x0 + rng.random(20000) * g.array_width).astype(dtype)
    dy = (g.array_y0 + rng.random(20000) * g.array_height).astype(dtype)
    on = g.on_chip(dx, dy)
    rows = g.ccd_row(dy)
    assert rows.dtype == dtype and on.sum() > 10000
    ccdnr = g.locate(dx[on], dy[on], 1)[0]
    np.testing.assert_array_equal(rows[on], (ccdnr.astype(int) - 1) // g.ccds_x)
    top_of_first = g.ccd_origin(0, 0)[1] + g.ccd_height
    assert g.ccd_row(np.float64(top_of_first - 1.0)) == 0 and g.ccd_row(np.float64(top_of_first + 0.5 * g.gap_y_arcsec)) == 0
    assert g.ccd_row(np.float64(g.ccd_origin(0, 1)[1] + 1.0)) == 1
