"""Real-sky truths (sources.kind images): FITS images and event lists resampled onto the sky grid."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from xmmsr.config import default_config
from xmmsr.errors import InputError
from xmmsr.sky.generate import BrightnessReference, generate_source
from xmmsr.sky.images import image_extended, read_truth

BRIGHTNESS = BrightnessReference(background_rate_arcsec2=2e-6, effective_area_cm2=1000.0)
CHANDRA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chandra"


def ring_image(path: Path, n: int = 400, pixel_arcsec: float = 0.5, background: float = 3.0) -> None:
    """A shell of radius 60" (a remnant-like truth) on a flat level, 0.5" pixels, TAN WCS."""
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(xx - n / 2 + 20, yy - n / 2) * pixel_arcsec
    image = background + 100.0 * np.exp(-0.5 * ((r - 60.0) / 5.0) ** 2) + 10.0 * (r < 60.0)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [83.6, 22.0]
    w.wcs.crpix = [n / 2, n / 2]
    w.wcs.cdelt = [-pixel_arcsec / 3600, pixel_arcsec / 3600]
    fits.PrimaryHDU(image.astype(np.float32), header=w.to_header()).writeto(path)


def event_list(path: Path, n: int = 20000) -> None:
    rng = np.random.default_rng(1)
    x = 4096.5 + rng.normal(0, 80, n)
    y = 4096.5 + rng.normal(0, 40, n)
    energy = rng.uniform(300, 8000, n)
    cols = [fits.Column(name="x", format="D", array=x, unit="pixel"), fits.Column(name="y", format="D", array=y),
            fits.Column(name="energy", format="E", array=energy, unit="eV")]
    hdu = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    for i, (ctype, crval) in enumerate((("RA---TAN", 228.5), ("DEC--TAN", -59.1)), start=1):
        hdu.header[f"TCTYP{i}"], hdu.header[f"TCRVL{i}"] = ctype, crval
        hdu.header[f"TCRPX{i}"], hdu.header[f"TCDLT{i}"] = 4096.5, (-1 if i == 1 else 1) * 0.492 / 3600
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)


def images_cfg(folder: Path) -> dict:
    cfg = copy.deepcopy(default_config()["sources"])
    cfg["kind"] = "images"
    cfg["images"]["dir"] = str(folder)
    cfg["sky"]["npix"] = 300
    cfg["extended"]["include_agn"] = True
    return cfg


def test_image_truth_is_resampled_flux_conserving_and_centred(tmp_path):
    ring_image(tmp_path / "shell.fits")
    image, pixel = read_truth(str(tmp_path / "shell.fits"))
    assert pixel == pytest.approx(0.5) and image.min() >= 0 and np.median(image) == 0.0
    out, kt, meta = image_extended(np.random.default_rng(3), 300, 1.0, {"dir": str(tmp_path), "kT_keV": [2, 3]})
    assert out.shape == (300, 300) and out.dtype == np.float32 and 2 <= kt <= 3
    assert out.sum() == pytest.approx(image.sum(), rel=0.02)           # 0.5" -> 1": flux kept
    yy, xx = np.mgrid[:300, :300]
    assert abs((out * xx).sum() / out.sum() - 149.5) < 1.0 and abs((out * yy).sum() / out.sum() - 149.5) < 1.0
    r = np.hypot(xx - 149.5, yy - 149.5)
    profile = [out[(r >= a) & (r < a + 1)].mean() for a in range(0, 100)]
    assert abs(int(np.argmax(profile)) - 60) <= 2                       # the shell radius in arcsec
    assert meta["MODEL"] == "image" and meta["IMGFILE"] == "shell.fits" and meta["IMGROT"] in (0, 90, 180, 270)


def test_event_lists_are_binned_in_the_band(tmp_path):
    event_list(tmp_path / "evt2.fits")
    image, pixel = read_truth(str(tmp_path / "evt2.fits"), 1.0)
    assert pixel == 1.0
    # ~ 1.5 / 7.7 of the uniform 0.3-8 keV events are in 0.5-2 keV, less the median level removed
    assert 2000 < image.sum() < 20000 * 1.5 / 7.7
    ys, xs = np.nonzero(image)
    assert np.ptp(xs) > 1.5 * np.ptp(ys)                                   # the elongated source


def test_generated_sources_from_images_are_seeded_and_augmented(tmp_path):
    ring_image(tmp_path / "a.fits")
    ring_image(tmp_path / "b.fits.gz", n=800, pixel_arcsec=0.25)
    cfg = images_cfg(tmp_path)
    models = [generate_source("extended", i, cfg, BRIGHTNESS, 9) for i in range(6)]
    again = generate_source("extended", 2, cfg, BRIGHTNESS, 9)
    assert np.array_equal(models[2].image, again.image) and models[2].meta == again.meta
    assert {m.meta["IMGFILE"] for m in models} == {"a.fits", "b.fits.gz"}
    for m in models:
        assert m.meta["MODEL"] == "image" and "SIGMA_B" in m.meta and "ZOOM" in m.meta and m.spectrum[0] == "bremss"


def test_bad_truth_files_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(InputError, match="sources.images.dir"):
        image_extended(np.random.default_rng(0), 100, 1.0, {"dir": str(tmp_path)})
    fits.PrimaryHDU(np.ones((50, 50), np.float32)).writeto(tmp_path / "nowcs.fits")
    with pytest.raises(InputError, match=r"nowcs\.fits.*celestial WCS"):
        read_truth(str(tmp_path / "nowcs.fits"))
    coarse = tmp_path / "coarse"
    coarse.mkdir()
    ring_image(coarse / "c.fits", n=100, pixel_arcsec=8.0)
    with pytest.raises(InputError, match=r"c\.fits.*finer than the 4"):
        read_truth(str(coarse / "c.fits"))


@pytest.mark.skipif(not (CHANDRA / "tycho_4p1_6p1_keV.fits.gz").exists(),
                    reason="the Chandra images of shared/data/chandra are not present")
def test_real_chandra_images_and_events_make_truths():
    for name in ("tycho_4p1_6p1_keV.fits.gz", "msh1552_acis_evt2_filtered.fits.gz"):
        image, pixel = read_truth(str(CHANDRA / name))
        assert pixel < 1.1 and image.sum() > 1000
