"""Binning of pn event lists (hand-made, simulated and real-layout) and detector masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.wcs import WCS
from conftest import make_instrument, point_sky

from xmmsr.instrument.binning import bin_event_file, image_wcs
from xmmsr.instrument.events import to_hdulist, write_events
from xmmsr.instrument.events import EVENT_COLUMNS, EventList
from xmmsr.instrument.simulator import simulate_events


def hand_made_events(rows: list[tuple[int, int, int, int, int]], resolution: int = 1) -> EventList:
    """Events from (DETX, DETY, PI, PATTERN, FLAG) rows, with the keywords of a simulated list."""
    template = simulate_events(point_sky(1e-6), make_instrument(), 10.0, resolution, seed=0, background=False)
    n = len(rows)
    cols = {name: np.zeros(n, dtype=template.columns[name].dtype) for name in EVENT_COLUMNS}
    for i, name in enumerate(("DETX", "DETY", "PI", "PATTERN", "FLAG")):
        cols[name] = np.array([r[i] for r in rows], dtype=template.columns[name].dtype)
    cols["TIME"] = np.linspace(0, 1, n)
    return EventList(cols, template.header)


def test_hand_made_event_list_bins_to_the_known_image(tmp_path):
    # The evselect grid: pixel i covers DETX in [-18283.5 + 80 i, -18283.5 + 80 (i + 1)) (0.05" units), and
    # DETY from -17527.5: integer DETX -18283 ... -18204 are pixel 0.
    def detx(i):
        return -18283 + 80 * i + 17

    def dety(j):
        return -17527 + 80 * j + 79

    rows = [
        (detx(10), dety(20), 1000, 0, 0),
        (detx(10), dety(20), 1500, 3, 0),
        (detx(10), dety(20), 500, 4, 0),     # PI at the lower edge: kept
        (detx(10), dety(20), 2000, 1, 0),    # PI at the upper edge: kept
        (detx(10), dety(20), 499, 0, 0),     # below the band
        (detx(10), dety(20), 2001, 0, 0),    # above the band
        (detx(10), dety(20), 1000, 5, 0),    # triple pattern
        (detx(10), dety(20), 1000, 0, 1),    # flagged
        (detx(402), dety(410), 800, 2, 0),   # last pixel
        (detx(403), dety(0), 800, 0, 0),     # outside the grid
        (detx(0), dety(0), 800, 0, 0),
        (-18283, -17527, 800, 0, 0),          # the first integer DETX/DETY of pixel (0, 0)
        (-18284, -17527, 800, 0, 0),          # just left of the grid
        (-18204, -17448, 800, 0, 0),          # the last of pixel (0, 0) ...
        (-18203, -17447, 800, 0, 0),          # ... and the first of pixel (1, 1)
    ]
    path = tmp_path / "events.fits"
    write_events(hand_made_events(rows), path)
    image, header = bin_event_file(path)
    expected = np.zeros((411, 403), dtype=np.int32)
    expected[20, 10] = 4
    expected[410, 402] = 1
    expected[0, 0] = 3
    expected[1, 1] = 1
    assert image.dtype == np.int32
    np.testing.assert_array_equal(image, expected)
    assert header["EXPOSURE"] == 10.0 and header["RESMULT"] == 1 and header["BUNIT"] == "count"
    # the physical DETX/DETY keywords of SAS evselect images (as in the real images)
    assert (header["CTYPE1L"], header["CRVAL1L"], header["CDELT1L"]) == ("DETX", -18243.5, 80.0)
    assert (header["CTYPE2L"], header["CRVAL2L"], header["CDELT2L"]) == ("DETY", -17487.5, 80.0)
    assert header["LTV1"] == pytest.approx(229.04375) and header["LTV2"] == pytest.approx(219.59375)
    assert header["LTM1_1"] == header["LTM2_2"] == 0.0125


def test_2x_events_bin_onto_the_2x_grid(tmp_path):
    rows = [(-18283 + 40 * 5 + 1, -17527 + 40 * 7 + 39, 1000, 0, 0)]
    path = tmp_path / "events2x.fits"
    write_events(hand_made_events(rows, resolution=2), path)
    image, header = bin_event_file(path)
    assert image.shape == (822, 806) and image[7, 5] == 1 and image.sum() == 1
    assert header["RESMULT"] == 2


def test_image_wcs_puts_a_point_source_at_its_sky_position(tmp_path, instrument):
    offset = (100.0, 150.0)  # arcsec east, north of the pointing (clear of dead columns)
    sky = point_sky(3e-3, offset_arcsec=offset)
    path = tmp_path / "ev.fits"
    write_events(simulate_events(sky, instrument, 20_000, 1, seed=2, background=False), path)
    image, header = bin_event_file(path)
    w = WCS(header)
    peak = np.unravel_index(np.argmax(image), image.shape)
    window = image[peak[0] - 3: peak[0] + 4, peak[1] - 3: peak[1] + 4].astype(float)
    yy, xx = np.mgrid[-3:4, -3:4]
    cy, cx = peak[0] + (window * yy).sum() / window.sum(), peak[1] + (window * xx).sum() / window.sum()
    ra, dec = w.wcs_pix2world([[cx, cy]], 0)[0]
    assert ra == pytest.approx(sky.points["RA"][0], abs=1.0 / 3600)
    assert dec == pytest.approx(sky.points["DEC"][0], abs=1.0 / 3600)


def test_real_layout_event_list_gets_the_same_wcs_from_its_sky_columns(instrument):
    events = simulate_events(point_sky(1e-3), instrument, 20_000, 1, seed=3)
    hdul = to_hdulist(events)
    data, header = hdul["EVENTS"].data, hdul["EVENTS"].header
    grid = instrument.geometry.image_grid(1)
    exact = image_wcs(data, header, grid)
    real_header = header.copy()
    del real_header["AIMDETX"], real_header["AIMDETY"]
    fitted = image_wcs(data, real_header, grid)
    corners = np.array([[0, 0], [402, 0], [0, 410], [402, 410], [200, 205]], dtype=float)
    a = exact.wcs_pix2world(corners, 0)
    b = fitted.wcs_pix2world(corners, 0)
    assert np.max(np.abs(a - b)) * 3600 < 0.1  # arcsec


def test_real_event_list_without_exposure_uses_ontime(tmp_path, instrument):
    events = simulate_events(point_sky(1e-3), instrument, 1000.0, 1, seed=3)
    hdul = to_hdulist(events)
    h = hdul["EVENTS"].header
    del h["EXPOSURE"], h["AIMDETX"], h["AIMDETY"], h["RESMULT"]
    h["ONTIME04"] = 1234.0
    path = tmp_path / "real.fits"
    hdul.writeto(path)
    image, header = bin_event_file(path)
    assert header["EXPOSURE"] == 1234.0 and image.shape == (411, 403)


def test_detector_masks(instrument):
    g = instrument.geometry
    m1, m2 = g.detector_mask(1), g.detector_mask(2)
    assert m1.shape == (411, 403) and m2.shape == (822, 806)
    np.testing.assert_array_equal(m2, np.kron(m1, np.ones((2, 2), dtype=np.uint8)))
    assert set(np.unique(m1)) == {0, 1}
    # the gaps between the two CCD rows and between CCD columns are masked
    grid = g.image_grid(1)
    x_gap = int((g.ccd_origin(3, 0)[0] - g.gap_x_arcsec / 2 - grid.x0_arcsec) // 4)
    assert m1[:, x_gap].sum() == 0
    y_gap = int((g.ccd_origin(0, 1)[1] - g.gap_y_arcsec / 2 - grid.y0_arcsec) // 4)
    assert m1[y_gap].sum() == 0
    # the rows at the readout nodes are dead, as on real images
    assert m1[:11].sum() == 0 and m1[399:].sum() == 0
    active_fraction = m1.mean()
    assert 0.8 < active_fraction < 0.95


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REAL_IMAGES = sorted(REAL.glob("*_80.fits.gz")) + sorted(REAL.glob("*_20ks_1_1.fits.gz"))


@pytest.mark.skipif(not REAL_IMAGES, reason="real SAS pn images (shared/data/real) are not present")
def test_mask_and_grid_match_real_sas_images(instrument):
    """The 1x mask agrees with real evselect images: almost no real counts outside it, and the grid keywords
    of `xmmsr bin` are those of the real images."""
    from astropy.io import fits

    from xmmsr.instrument.binning import physical_keywords

    mask = instrument.geometry.detector_mask(1) > 0
    keys = physical_keywords(instrument.geometry.image_grid(1))
    for path in REAL_IMAGES:
        with fits.open(path) as hdul:
            image, header = hdul[0].data.astype(float), hdul[0].header
        assert image.shape == mask.shape
        assert image[~mask].sum() < 0.01 * image.sum(), path.name
        for key in ("CRVAL1L", "CRVAL2L", "CDELT1L", "CDELT2L", "LTV1", "LTV2", "LTM1_1", "LTM2_2"):
            assert header[key] == pytest.approx(keys[key][0]), (path.name, key)
