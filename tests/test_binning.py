"""Binning of pn event lists (hand-made, simulated and real-layout) and detector masks."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS
from conftest import make_instrument, point_sky

from xmmsr.instrument.binning import bin_event_file, image_wcs
from xmmsr.instrument.events import to_hdulist, write_events
from xmmsr.instrument.simulator import EVENT_COLUMNS, EventList, simulate_events


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
    # 1x grid: pixel i covers DETX in [-16120 + 80 i, -16120 + 80 (i + 1)) (0.05" units), same for DETY from -16440.
    def detx(i):
        return -16120 + 80 * i + 17

    def dety(j):
        return -16440 + 80 * j + 79

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
    ]
    path = tmp_path / "events.fits"
    write_events(hand_made_events(rows), path)
    image, header = bin_event_file(path)
    expected = np.zeros((411, 403), dtype=np.int32)
    expected[20, 10] = 4
    expected[410, 402] = 1
    expected[0, 0] = 1
    assert image.dtype == np.int32
    np.testing.assert_array_equal(image, expected)
    assert header["EXPOSURE"] == 10.0 and header["RESMULT"] == 1 and header["BUNIT"] == "count"


def test_2x_events_bin_onto_the_2x_grid(tmp_path):
    rows = [(-16120 + 40 * 5 + 1, -16440 + 40 * 7 + 39, 1000, 0, 0)]
    path = tmp_path / "events2x.fits"
    write_events(hand_made_events(rows, resolution=2), path)
    image, header = bin_event_file(path)
    assert image.shape == (822, 806) and image[7, 5] == 1 and image.sum() == 1
    assert header["RESMULT"] == 2


def test_image_wcs_puts_a_point_source_at_its_sky_position(tmp_path, instrument):
    offset = (150.0, -90.0)  # arcsec east, north of the pointing
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
    x_gap = int((-g.array_width / 2 + 3 * g.ccd_width + 2.5 * g.gap_x_arcsec + 806) // 4)
    assert m1[:, x_gap].sum() == 0
    active_fraction = m1.mean()
    assert 0.85 < active_fraction < 0.97
