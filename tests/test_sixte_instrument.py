"""``xmmsr sixte-instrument``: SIXTE's EPIC-pn written from the instrument model (files checked against it)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import REPO
from scipy import ndimage

from xmmsr.cli import main
from xmmsr.errors import InputError
from xmmsr.instrument.sixte_instrument import (
    M_PER_ARCSEC,
    CoreScaledPsf,
    pixel_compensated_core,
    PSF_ENERGIES_KEV,
    PSF_THETAS_ARCMIN,
    SPLIT_SIGMA_UM,
    detector_layout,
    write_sixte_instrument,
)

CALIB = REPO.parent / "shared" / "data" / "calib"


@pytest.fixture(scope="module")
def written(tmp_path_factory, instrument) -> dict[int, Path]:
    """The instrument at 1x and 2x, written once for the module."""
    root = tmp_path_factory.mktemp("sixte_instrument")
    return {r: write_sixte_instrument(instrument, r, root / f"pn{r}") for r in (1, 2)}


def _files(xml: Path) -> dict[str, Path]:
    return {el.tag: xml.parent / el.get("filename") for el in ET.parse(xml).getroot().iter() if el.get("filename")}


@pytest.mark.parametrize("resolution", [1, 2])
def test_xml_names_files_beside_it_and_the_detector_of_the_model(written, instrument, resolution):
    xml = written[resolution]
    root = ET.parse(xml).getroot()
    files = _files(xml)
    assert set(files) == {"arf", "psf", "vignetting", "rmf", "phabackground"}
    assert all(p.is_file() and p.parent == xml.parent for p in files.values())
    g = instrument.geometry
    dims = root.find("detector/dimensions").attrib
    assert int(dims["xwidth"]) == round(g.array_width / g.pixel_arcsec * resolution)
    assert int(dims["ywidth"]) == round(g.array_height / g.pixel_arcsec * resolution)
    wcs = root.find("detector/wcs").attrib
    assert float(wcs["xdelt"]) == pytest.approx(g.pixel_arcsec / resolution * M_PER_ARCSEC)
    # the optical axis: SIXTE's columns count from the array's west edge (its x runs east)
    lay = detector_layout(instrument, resolution)
    assert float(wcs["xrpix"]) == pytest.approx(0.5 + (g.array_x0 + g.array_width - g.axis_x_arcsec) * resolution
                                                / g.pixel_arcsec, rel=1e-7) == pytest.approx(lay["xrpix"], rel=1e-7)
    assert float(root.find("detector/split").get("par1")) == pytest.approx(SPLIT_SIGMA_UM * 1e-6 / resolution)
    # the frame: waits add up to the frame time; the row transfers to the out-of-time fraction
    waits = [float(w.get("time")) for w in root.iter("wait")]
    transfer = waits[1] * int(dims["ywidth"])
    assert waits[0] + transfer == pytest.approx(instrument.frame_time_s, rel=1e-6)
    assert transfer / instrument.frame_time_s == pytest.approx(instrument.out_of_time_fraction, rel=1e-6)


def test_psf_images_are_the_model_normalised_and_elongated_across_the_radius(written, instrument):
    with fits.open(_files(written[1])["psf"]) as hdul:
        images = [h for h in hdul if h.data is not None]
        assert len(images) == len(PSF_ENERGIES_KEV) * len(PSF_THETAS_ARCMIN)
        assert hdul[0].data is not None            # SIXTE reads the primary HDU as an image too
        for h in images:
            assert h.header["CUNIT1"] == "arcsec" and h.header["PHI"] == 0.0
            assert float(h.data.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
        far = next(h for h in images if h.header["THETA"] == 13.75 and h.header["ENERGY"] == 1500.0)
        k = far.data.astype(np.float64)
        c = (k.shape[0] - 1) / 2
        yy, xx = np.mgrid[: k.shape[0], : k.shape[1]] - c
        core = np.hypot(xx, yy) < 40          # second moments of the core (the wings are truncated)
        sx, sy = (np.sum(k[core] * v[core] ** 2) / k[core].sum() for v in (xx, yy))
        assert sy / sx > 1.5                  # q = 1.9 at 13.75': stretched across the radial (+x) direction
        # the model's, with the core narrowed by the spread SIXTE adds (events at random within their pixel)
        scale = far.header["RCSCALE"]
        assert 0.9 < scale < 1.0
        model = CoreScaledPsf(instrument.psf.max_radius_arcsec, instrument.psf, scale)
        np.testing.assert_allclose(k, model.kernel(far.header["CDELT1"], 13.75, 0.0, 1.5, 1), atol=1e-7)


@pytest.mark.parametrize("resolution", [1, 2])
def test_narrowed_core_spread_over_pixels_gives_the_models_encircled_energy(instrument, resolution):
    pixel = instrument.geometry.pixel_arcsec / resolution
    fine = pixel / 8.0
    scale = pixel_compensated_core(instrument.psf, pixel, 6.0, 1.0, resolution)

    def ee8(kernel):
        c = (kernel.shape[0] - 1) / 2
        yy, xx = (np.mgrid[: kernel.shape[0], : kernel.shape[1]] - c) * fine
        return kernel[np.hypot(xx, yy) <= 8.0].sum() / kernel.sum()

    model = instrument.psf.kernel(fine, 6.0, 0.0, 1.0, resolution, r_max_arcsec=48.0)
    narrowed = CoreScaledPsf(instrument.psf.max_radius_arcsec, instrument.psf, scale).kernel(
        fine, 6.0, 0.0, 1.0, resolution, r_max_arcsec=48.0)
    spread = ndimage.uniform_filter(np.asarray(narrowed, dtype=float), size=8, mode="constant")
    plain = ndimage.uniform_filter(np.asarray(model, dtype=float), size=8, mode="constant")
    assert ee8(spread) == pytest.approx(ee8(model), abs=3e-4)
    assert ee8(plain) < ee8(model) - 0.008 / resolution**2   # without it SIXTE's pixel spread widens the core


def test_vignetting_area_response_and_particle_rate_are_the_models(written, instrument):
    files = _files(written[1])
    v = fits.getdata(files["vignetting"])
    h = fits.getheader(files["vignetting"], 1)
    ne, nt = len(instrument.vignetting.energy_kev), len(instrument.vignetting.theta_arcmin)
    assert h["TDIM4"] == f"({ne},{nt},1)"
    np.testing.assert_allclose(v["THETA"][0] * 60.0, instrument.vignetting.theta_arcmin, rtol=1e-6)
    cube = v["VIGNET"][0].reshape(nt, ne)        # energy fastest (Fortran order of TDIM)
    np.testing.assert_allclose(cube.T, np.asarray(instrument.vignetting.factors), rtol=1e-6)
    arf = fits.getdata(files["arf"], "SPECRESP")
    centres = 0.5 * (arf["ENERG_LO"] + arf["ENERG_HI"])
    response = instrument.require_response()
    np.testing.assert_allclose(arf["SPECRESP"], np.interp(centres, response.energy_kev, response.area_cm2), rtol=1e-5)
    with fits.open(files["rmf"]) as rmf:
        m = rmf["MATRIX"].data
        eb = rmf["EBOUNDS"].data
        for i in range(0, len(m), 37):
            row = np.zeros(len(eb))
            row[m["F_CHAN"][i]: m["F_CHAN"][i] + m["N_CHAN"][i]] = m["MATRIX"][i]
            assert row.sum() == pytest.approx(1.0, abs=1e-5)
            band = (eb["E_MIN"] >= 0.5 - 1e-6) & (eb["E_MAX"] <= 2.0 + 1e-6)
            assert row[band].sum() == pytest.approx(response.redistribution.band_fraction[i], abs=2e-3)
    pha = fits.getdata(files["phabackground"])
    lay = detector_layout(instrument, 1)
    det_m2 = lay["xwidth"] * lay["ywidth"] * lay["delt"] ** 2
    det_arcmin2 = det_m2 / M_PER_ARCSEC**2 / 3600.0
    # raised by the out-of-time fraction: SIXTE 2.7 loses the background of the row transfers
    assert pha["RATE"].sum() * det_m2 * (1 - instrument.out_of_time_fraction) == pytest.approx(
        instrument.background.particle_rate_arcmin2 * det_arcmin2, rel=1e-5)


def test_refuses_a_non_empty_output_and_leaves_nothing_on_failure(instrument, tmp_path):
    out = tmp_path / "inst"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(InputError, match="exists and is not empty.*--overwrite"):
        write_sixte_instrument(instrument, 1, out)
    assert (out / "mine.txt").read_text() == "keep"
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "pn.arf").write_bytes(b"")
    with pytest.raises(InputError, match="RMF file.*not found"):
        write_sixte_instrument(instrument, 1, tmp_path / "new", calib=calib)
    assert not (tmp_path / "new").exists()
    assert main(["sixte-instrument", "--resolution", "1", "--output", str(out)]) == 2
    assert (out / "mine.txt").read_text() == "keep"


@pytest.mark.skipif(not CALIB.is_dir(), reason=f"the real pn calibration files ({CALIB}) are absent")
def test_calib_uses_the_real_arf_and_rmf(instrument, tmp_path, capsys):
    assert main(["sixte-instrument", "--resolution", "2", "--output", str(tmp_path / "i"), "--calib", str(CALIB)]) == 0
    assert "real ARF and RMF" in capsys.readouterr().out
    files = _files(tmp_path / "i" / "pn_2x.xml")
    assert files["arf"].read_bytes() == next(CALIB.glob("*.arf")).read_bytes()
    with fits.open(files["rmf"]) as rmf, fits.open(next(CALIB.glob("*.rmf*"))) as real:
        assert rmf["MATRIX"].header["DETCHANS"] == real["MATRIX"].header["DETCHANS"]
        # the particle background follows the real RMF's channels
        assert len(fits.getdata(files["phabackground"])) == len(real["EBOUNDS"].data)
