"""SIMPUT export: format (extensions, columns, units, HDUCLAS), energy fluxes, references, round trip, CLI."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import DEC0, RA0, beta_sky, point_sky
from scipy.integrate import quad

from xmmsr.cli import main
from xmmsr.errors import InputError
from xmmsr.sky.spectra import photon_spectrum
from xmmsr.sky.model import SkyModel, make_wcs, write_sky_model
from xmmsr.sky.simput import read_simput, write_simput

KEV = 1.602176634e-9  # erg


def mean_energy_erg(model: str, parameter: float, nh: float) -> float:
    """Independent mean photon energy in 0.5-2 keV by adaptive quadrature."""
    def n(e):
        return float(photon_spectrum(model, parameter, nh, np.array(e)))

    photons = quad(n, 0.5, 2.0, epsabs=0, epsrel=1e-10, limit=200)[0]
    energy = quad(lambda e: e * n(e), 0.5, 2.0, epsabs=0, epsrel=1e-10, limit=200)[0]
    return energy / photons * KEV


@pytest.fixture(scope="module")
def sky() -> SkyModel:
    s = beta_sky(npix=200)
    pts = np.concatenate([s.points, s.points])
    pts[1]["RA"], pts[1]["DEC"], pts[1]["FLUX"], pts[1]["GAMMA"], pts[1]["NH"] = RA0 - 0.02, DEC0 + 0.01, 3e-5, 1.5, 2e21
    s.points = pts
    s.spectrum, s.nh = ("bremss", 4.5), 5e20
    return s


@pytest.fixture(scope="module")
def simput_file(sky, tmp_path_factory):
    return write_simput(sky, tmp_path_factory.mktemp("simput") / "src.simput")


def test_structure_columns_units_keywords(simput_file):
    with fits.open(simput_file) as hdul:
        hdul.verify("exception")
        assert [h.name for h in hdul] == ["PRIMARY", "SRC_CAT", "SPECTRUM", "IMAGE"]
        for name in ("SRC_CAT", "SPECTRUM", "IMAGE"):
            h = hdul[name].header
            assert h["HDUCLASS"] == "HEASARC/SIMPUT" and h["HDUCLAS1"] == name and h["HDUVERS"] == "1.1.0"
        cat = hdul["SRC_CAT"]
        units = {c.name: c.unit for c in cat.columns}
        for col in ("SRC_ID", "SRC_NAME", "RA", "DEC", "IMGROTA", "IMGSCAL", "E_MIN", "E_MAX", "FLUX",
                    "SPECTRUM", "IMAGE", "TIMING"):
            assert col in units
        assert cat.columns["SRC_ID"].format == "J"
        assert units["RA"] == units["DEC"] == units["IMGROTA"] == "deg"
        assert units["E_MIN"] == units["E_MAX"] == "keV"
        assert units["FLUX"] == "erg/s/cm**2"
        assert len(cat.data) == 3
        assert np.all(cat.data["E_MIN"] == 0.5) and np.all(cat.data["E_MAX"] == 2.0)
        assert list(cat.data["SRC_ID"]) == [1, 2, 3]
        assert list(cat.data["TIMING"]) == ["NULL"] * 3
        spec = hdul["SPECTRUM"]
        assert spec.columns["ENERGY"].unit == "keV"
        assert spec.columns["FLUXDENSITY"].unit == "photon/s/cm**2/keV"
        energy = spec.data["ENERGY"][0]
        assert energy[0] == pytest.approx(0.1) and energy[-1] == pytest.approx(15.0)
        img = hdul["IMAGE"]
        assert img.data.ndim == 2 and img.header["CTYPE1"] == "RA---TAN" and img.header["CUNIT1"].strip() == "deg"
        primary = hdul[0].header
        assert primary["SRCKIND"] == "extended" and primary["SRCID"] == 7 and primary["SEED"] == 3
        assert primary["RA_PNT"] == RA0 and primary["DEC_PNT"] == DEC0 and primary["CREATOR"].startswith("xmmsr")


def test_astropy_table_read(simput_file):
    cat = Table.read(simput_file, hdu="SRC_CAT")
    assert len(cat) == 3 and str(cat["FLUX"].unit) in ("erg / (cm2 s)", "erg / (s cm2)")
    spec = Table.read(simput_file, hdu="SPECTRUM")
    assert spec["FLUXDENSITY"].shape == (3, 1000)


def test_energy_flux_is_photon_flux_times_mean_energy(sky, simput_file):
    cat = fits.getdata(simput_file, "SRC_CAT")
    expected = [sky.image.sum(dtype=np.float64) * mean_energy_erg("bremss", 4.5, 5e20)]
    expected += [p["FLUX"] * mean_energy_erg("powerlaw", p["GAMMA"], p["NH"]) for p in sky.points]
    np.testing.assert_allclose(cat["FLUX"], expected, rtol=1e-6)
    # the tabulated spectra integrate to the photon fluxes in 0.5-2 keV
    spec = fits.getdata(simput_file, "SPECTRUM")
    for row, photon_flux in zip(spec, [sky.image.sum(dtype=np.float64), *sky.points["FLUX"]]):
        e, f = row["ENERGY"].astype(float), row["FLUXDENSITY"].astype(float)
        band = (e >= 0.5) & (e <= 2.0)
        assert np.trapezoid(f[band], e[band]) == pytest.approx(photon_flux, rel=0.02)


def test_references_point_to_existing_extensions(simput_file):
    with fits.open(simput_file) as hdul:
        cat = hdul["SRC_CAT"].data
        names = list(hdul["SPECTRUM"].data["NAME"])
        assert cat["IMAGE"][0] == "[IMAGE,1]" and list(cat["IMAGE"][1:]) == ["NULL", "NULL"]
        for ref in cat["SPECTRUM"]:
            assert ref.startswith("[SPECTRUM,1][NAME=='") and ref.endswith("']")
            assert names.count(ref[len("[SPECTRUM,1][NAME=='"):-2]) == 1
        for ref in cat["IMAGE"][:1]:
            extname, extver = ref.strip("[]").split(",")
            hdu = hdul[extname, int(extver)]
            assert hdu.header["HDUCLAS1"] == "IMAGE"
        assert hdul["SPECTRUM", 1].header["HDUCLAS1"] == "SPECTRUM"
        # the image source sits on the image WCS reference point (libsimput moves CRVAL there)
        assert cat["RA"][0] == hdul["IMAGE"].header["CRVAL1"] and cat["DEC"][0] == hdul["IMAGE"].header["CRVAL2"]


def test_round_trip(sky, simput_file):
    back = read_simput(simput_file)
    assert back.image.sum(dtype=np.float64) == pytest.approx(sky.image.sum(dtype=np.float64), rel=1e-6)
    np.testing.assert_allclose(back.image, sky.image, rtol=1e-6, atol=0)
    np.testing.assert_allclose(back.points["FLUX"], sky.points["FLUX"], rtol=1e-6)
    np.testing.assert_array_equal(back.points["RA"], sky.points["RA"])
    np.testing.assert_array_equal(back.points["DEC"], sky.points["DEC"])
    np.testing.assert_array_equal(back.points["GAMMA"], sky.points["GAMMA"])
    np.testing.assert_array_equal(back.points["NH"], sky.points["NH"])
    assert back.spectrum == ("bremss", 4.5) and back.nh == 5e20
    assert (back.kind, back.source_id, back.seed, back.ra_pnt, back.dec_pnt) == ("extended", 7, 3, RA0, DEC0)
    np.testing.assert_array_equal(back.wcs.wcs.crval, sky.wcs.wcs.crval)
    np.testing.assert_allclose(back.wcs.wcs.cdelt, sky.wcs.wcs.cdelt, rtol=1e-12)  # header keeps 14 digits


def test_agn_only_field(tmp_path):
    sky = point_sky(1e-4, (30.0, -20.0))
    path = write_simput(sky, tmp_path / "agn.simput")
    cat = fits.getdata(path, "SRC_CAT")
    assert len(cat) == 1 and cat["IMAGE"][0] == "NULL"  # no extended row: the image holds no flux
    back = read_simput(path)
    assert back.image.sum() == 0 and back.kind == "agn"
    assert back.points["FLUX"][0] == pytest.approx(1e-4, rel=1e-6)
    assert back.points["RA"][0] == sky.points["RA"][0] and back.points["DEC"][0] == sky.points["DEC"][0]
    assert back.spectrum == sky.spectrum and back.nh == sky.nh


def test_background_field_has_empty_catalogue(tmp_path):
    sky = SkyModel(np.zeros((32, 32), np.float32), make_wcs(RA0, DEC0, (32, 32), 4.0), RA0, DEC0, "background")
    path = write_simput(sky, tmp_path / "bkg.simput")
    with fits.open(path) as hdul:
        assert len(hdul["SRC_CAT"].data) == 0 and len(hdul["SPECTRUM"].data) == 0
    assert len(Table.read(path, hdu="SRC_CAT")) == 0
    back = read_simput(path)
    assert back.kind == "background" and back.image.shape == (32, 32) and back.total_flux == 0


def test_read_errors_name_file_and_field(tmp_path, simput_file):
    with fits.open(simput_file) as hdul:
        del hdul["SPECTRUM"]
        hdul.writeto(tmp_path / "nospec.simput")
        with pytest.raises(InputError, match=r"nospec\.simput: SPECTRUM extension: missing"):
            read_simput(tmp_path / "nospec.simput")
    with fits.open(simput_file) as hdul:
        cat = Table(hdul["SRC_CAT"].data)
        cat.remove_column("FLUX")
        hdul["SRC_CAT"] = fits.BinTableHDU(cat, name="SRC_CAT")
        hdul.writeto(tmp_path / "noflux.simput")
    with pytest.raises(InputError, match=r"noflux\.simput: SRC_CAT columns \['FLUX'\]: missing"):
        read_simput(tmp_path / "noflux.simput")
    with pytest.raises(InputError, match="does not exist"):
        read_simput(tmp_path / "absent.simput")


def test_cli_writes_simput_and_errors_cleanly(tmp_path, capsys):
    sky_path, out = tmp_path / "sky.fits", tmp_path / "src.simput"
    write_sky_model(beta_sky(npix=100), sky_path)
    assert main(["simput", str(sky_path), "--output", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and "1 extended and 1 point sources" in line
    assert len(fits.getdata(out, "SRC_CAT")) == 2

    not_sky = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(Table({"A": [1, 2]}))]).writeto(not_sky)
    assert main(["simput", str(not_sky), "--output", str(tmp_path / "bad.simput")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xmmsr simput: error:") and "table.fits" in err and "\n" not in err
    assert not (tmp_path / "bad.simput").exists()
