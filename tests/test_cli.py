"""The xmmsr command line: the contract of `simulate` and `bin`, and clear errors on bad input."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from astropy.io import fits
from conftest import beta_sky

from xmmsr.cli import main
from xmmsr.sky.model import SkyModel, to_hdulist, write_sky_model


@pytest.fixture()
def sky_file(tmp_path):
    path = tmp_path / "sky.fits"
    write_sky_model(beta_sky(npix=300), path)
    return path


def run(args: list[str]) -> int:
    return main([str(a) for a in args])


def test_simulate_then_bin(sky_file, tmp_path, capsys):
    events, image, expected = tmp_path / "ev.fits", tmp_path / "img.fits", tmp_path / "exp.fits"
    assert run(["simulate", "--sky", sky_file, "--exposure", 20000, "--resolution", 2, "--seed", 7,
                "--output", events, "--expected", expected]) == 0
    with fits.open(events) as hdul:
        h = hdul["EVENTS"].header
        assert (h["TELESCOP"], h["INSTRUME"], h["EXPOSURE"], h["RESMULT"], h["SEED"]) == ("XMM", "EPN", 20000.0, 2, 7)
        assert h["TSTOP"] - h["TSTART"] == 20000.0
        assert {"TIME", "X", "Y", "DETX", "DETY", "RAWX", "RAWY", "CCDNR", "PI", "ENERGY", "PATTERN", "FLAG"} <= set(
            hdul["EVENTS"].columns.names)
    assert run(["bin", events, "--output", image]) == 0
    with fits.open(image) as img, fits.open(expected) as exp:
        assert img[0].data.shape == (822, 806) and img[0].header["EXPOSURE"] == 20000.0
        total = exp[0].data.sum()
        assert abs(img[0].data.sum() - total) < 4 * np.sqrt(total)
    assert "events" in capsys.readouterr().out


def test_no_background_flag(sky_file, tmp_path):
    with_bkg, without = tmp_path / "a.fits", tmp_path / "b.fits"
    common = ["--sky", sky_file, "--exposure", 20000, "--resolution", 1, "--seed", 1]
    assert run(["simulate", *common, "--output", with_bkg]) == 0
    assert run(["simulate", *common, "--no-background", "--output", without]) == 0
    with fits.open(with_bkg) as a, fits.open(without) as b:
        assert len(a["EVENTS"].data) - len(b["EVENTS"].data) > 15_000  # the background
        assert b["EVENTS"].header["BACKGRND"] is False


def _assert_clean_failure(args, output, capsys, *fragments):
    assert run(args) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err
    assert not output.exists()
    assert not list(output.parent.glob(f".{output.name}*"))  # no temporary leftovers


def test_corrupt_sky_model(tmp_path, capsys):
    bad = tmp_path / "corrupt.fits"
    bad.write_bytes(b"SIMPLE  =                    T" + bytes(range(256)) * 20)
    out = tmp_path / "ev.fits"
    _assert_clean_failure(["simulate", "--sky", bad, "--exposure", 100, "--resolution", 1, "--seed", 1,
                           "--output", out], out, capsys, "corrupt.fits", "FITS", "Fix:")


def test_truncated_sky_model(sky_file, tmp_path, capsys):
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(sky_file.read_bytes()[: 2880 * 20])
    out = tmp_path / "ev.fits"
    _assert_clean_failure(["simulate", "--sky", truncated, "--exposure", 100, "--resolution", 1, "--seed", 1,
                           "--output", out], out, capsys, "truncated.fits", "truncated")


def test_empty_sky_model(tmp_path, capsys):
    empty = tmp_path / "empty.fits"
    fits.PrimaryHDU().writeto(empty)
    out = tmp_path / "ev.fits"
    _assert_clean_failure(["simulate", "--sky", empty, "--exposure", 100, "--resolution", 1, "--seed", 1,
                           "--output", out], out, capsys, "empty.fits", "empty sky model")


def test_sky_model_without_flux(tmp_path, capsys):
    model = beta_sky(npix=64)
    dark = SkyModel(np.zeros_like(model.image), model.wcs, model.ra_pnt, model.dec_pnt, "extended")
    path = tmp_path / "dark.fits"
    to_hdulist(dark).writeto(path)
    out = tmp_path / "ev.fits"
    _assert_clean_failure(["simulate", "--sky", path, "--exposure", 100, "--resolution", 1, "--seed", 1,
                           "--output", out], out, capsys, "no flux", "SRCKIND")


def test_negative_exposure(sky_file, tmp_path, capsys):
    out = tmp_path / "ev.fits"
    with pytest.raises(SystemExit) as exc:
        run(["simulate", "--sky", sky_file, "--exposure", -20000, "--resolution", 1, "--seed", 1, "--output", out])
    assert exc.value.code == 2
    assert "positive" in capsys.readouterr().err
    assert not out.exists()


def test_truncated_event_list(sky_file, tmp_path, capsys):
    events = tmp_path / "ev.fits"
    assert run(["simulate", "--sky", sky_file, "--exposure", 20000, "--resolution", 1, "--seed", 1,
                "--output", events]) == 0
    cut = tmp_path / "cut.fits"
    cut.write_bytes(events.read_bytes()[: len(events.read_bytes()) // 2])
    out = tmp_path / "img.fits"
    _assert_clean_failure(["bin", cut, "--output", out], out, capsys, "cut.fits", "event list")


def test_missing_file(tmp_path, capsys):
    out = tmp_path / "img.fits"
    _assert_clean_failure(["bin", tmp_path / "nope.fits", "--output", out], out, capsys, "nope.fits", "does not exist")


def test_sky_command_writes_a_pipeline_sky_model(tmp_path, capsys):
    out = tmp_path / "cluster.fits"
    assert run(["sky", "--kind", "extended", "--id", "3", "--output", out]) == 0
    from xmmsr.sky.model import read_sky_model

    model = read_sky_model(out)
    assert model.kind == "extended" and model.source_id == 3 and model.total_flux > 0
    assert model.image.shape == (1800, 1800)


def test_aim_point_in_a_chip_gap_is_rejected(tmp_path, capsys):
    import yaml

    config = tmp_path / "gap.yaml"
    config.write_text(yaml.safe_dump({"instrument": {"geometry": {"aim_point_arcsec": [-110.2, -56.4]}}}))
    out = tmp_path / "cluster.fits"
    _assert_clean_failure(["sky", "--kind", "agn", "--config", config, "--output", out], out, capsys,
                          "instrument.geometry.aim_point_arcsec", "gaps")


@pytest.mark.parametrize("args, needle", [
    (["simulate", "--sky", "{sky}", "--exposure", 20000, "--resolution", 1, "--seed", -1, "--output", "{out}"],
     "seed must be an integer >= 0"),
    (["sky", "--kind", "agn", "--id", -3, "--output", "{out}"], "must be an integer >= 0"),
    (["tng-project", "{sky}", "--axis", "z", "--width-kpc", 500, "--redshift", 0.05, "--npix", 0, "--output", "{out}"],
     "pixels per side"),
    (["bin", "{sky}", "--output", "{dir}"], "is a directory"),
])
def test_bad_arguments_are_one_line_and_exit_2(sky_file, tmp_path, capsys, args, needle):
    out = tmp_path / "out.fits"
    args = [str(a).format(sky=sky_file, out=out, dir=tmp_path) for a in args]
    with pytest.raises(SystemExit) as exc:
        run(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_storage_failures_are_one_line_with_a_cli_fix(sky_file, tmp_path, capsys, monkeypatch, code):
    """A read-only, full or forbidden output directory: one line naming the path, exit 2, no partial file."""
    import xmmsr.io

    def refuse(*args, dir=None, **kwargs):
        raise OSError(code, os.strerror(code), str(dir))

    monkeypatch.setattr(xmmsr.io.tempfile, "mkstemp", refuse)
    out = tmp_path / "ev.fits"
    assert run(["simulate", "--sky", sky_file, "--exposure", 2000, "--resolution", 1, "--seed", 1,
                "--output", out]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in captured.err + captured.out, captured.err
    assert str(tmp_path) in lines[0] and os.strerror(code) in lines[0] and "--output" in lines[0]
    assert "outdir" not in lines[0]
    assert not out.exists()


def test_a_model_of_an_unknown_task_is_refused(tmp_path, capsys):
    import torch

    from xmmsr.learn.checkpoint import content_digest, write_torch_file
    from xmmsr.learn.checkpoint import shipped_model

    raw = torch.load(shipped_model("dn"), weights_only=True)
    raw["task"] = "xx"
    raw["digest"] = content_digest(raw)   # a consistent file, of a task this xmmsr does not run
    model = tmp_path / "xx.pt"
    write_torch_file(raw, model)
    image = tmp_path / "in.fits"
    fits.PrimaryHDU(np.ones((32, 32), np.int32), fits.Header({"EXPOSURE": 20000.0})).writeto(image)
    out = tmp_path / "out.fits"
    assert run(["predict", "--model", model, "--input", image, "--output", out]) == 2
    err = capsys.readouterr().err
    assert "'xx' is not a task" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_simulation_too_large_for_memory_is_refused_before_drawing(sky_file, tmp_path, capsys):
    out = tmp_path / "ev.fits"
    assert run(["simulate", "--sky", sky_file, "--exposure", 1e9, "--resolution", 1, "--seed", 1,
                "--output", out]) == 2
    err = capsys.readouterr().err
    assert "photons" in err and "GiB" in err and "shorter exposure" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_memory_guard_uses_the_expected_photon_count(sky_file):
    from conftest import make_instrument

    from xmmsr.errors import InputError
    from xmmsr.instrument.simulator import BYTES_PER_PHOTON, simulate_events
    from xmmsr.sky.model import read_sky_model

    sky, instrument = read_sky_model(sky_file), make_instrument()
    events = simulate_events(sky, instrument, 2000.0, 1, seed=1)
    n = len(events.columns["PI"])
    # a limit a little above what these photons need passes; one well below is refused
    simulate_events(sky, instrument, 2000.0, 1, seed=1, memory_limit=int(3 * n * BYTES_PER_PHOTON))
    with pytest.raises(InputError, match="photons"):
        simulate_events(sky, instrument, 2000.0, 1, seed=1, memory_limit=int(0.3 * n * BYTES_PER_PHOTON))


# Every command that writes files, with an output argument to collide on (inputs need not be valid: the
# outputs are checked before anything is read).
WRITERS = [
    ["simulate", "--sky", "{in}", "--exposure", "1000", "--resolution", "1", "--seed", "1", "--output", "{out}"],
    ["bin", "{in}", "--output", "{out}"],
    ["extract", "{in}", "--source", "1", "--output", "{out}"],
    ["sky", "--kind", "agn", "--output", "{out}"],
    ["simput", "{in}", "--output", "{out}"],
    ["predict", "--task", "dn", "--input", "{in}", "--output", "{out}"],
    ["evaluate-real", "--task", "dn", "--image", "{in}", "--seed", "1", "--output", "{out}"],
    ["thin", "{in}", "--fraction", "0.5", "--seed", "1", "--output-a", "{out}", "--output-b", "{other}"],
    ["tng-project", "{in}", "--axis", "x", "--width-kpc", "100", "--redshift", "0.05", "--output", "{out}"],
]


@pytest.mark.parametrize("template", WRITERS, ids=[w[0] for w in WRITERS])
def test_no_command_overwrites_a_file_unasked_or_its_input_ever(template, tmp_path, capsys):
    source, out, other = tmp_path / "input.fits", tmp_path / "out.fits", tmp_path / "other.fits"
    source.write_bytes(b"input")
    out.write_bytes(b"mine")

    def args(output, *extra):
        return [a.format(**{"in": source, "out": output, "other": other}) for a in template] + list(extra)

    assert run(args(out)) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "pass --overwrite" in err
    assert out.read_bytes() == b"mine" and not other.exists()
    if "{in}" in template:
        assert run(args(source, "--overwrite")) == 2
        assert "is an input of this command" in capsys.readouterr().err
        assert source.read_bytes() == b"input"


def test_overwrite_replaces_and_outputs_must_differ(sky_file, tmp_path, capsys):
    out = tmp_path / "src.simput"
    out.write_bytes(b"old")
    assert run(["simput", sky_file, "--output", out]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"old"
    assert run(["simput", sky_file, "--output", out, "--overwrite"]) == 0
    assert fits.getheader(out, "SRC_CAT")["HDUCLAS1"] == "SRC_CAT"
    a = tmp_path / "a.fits"
    assert run(["thin", sky_file, "--fraction", "0.5", "--seed", "1", "--output-a", a, "--output-b", a]) == 2
    assert "also given as --output-a" in capsys.readouterr().err and not a.exists()


def test_extract_writes_one_plane_with_its_celestial_wcs(tmp_path, capsys):
    from astropy.wcs import WCS

    from xmmsr.cube import cube_header, wcs_row, write_cube
    from xmmsr.sky.model import tan_wcs

    rows, planes = [], []
    for i, ra in enumerate((150.0, 40.5)):
        w = tan_wcs([ra, -3.0], [20.5, 20.5], cdelt=[-4 / 3600, 4 / 3600])
        rows.append({"SRCID": 10 + i, "SRCKIND": "agn", "SEED": 7 + i, "SRCSEED": 1, "NEVENTS": 5, "EXPOSURE": 2e4,
                     "RA_PNT": ra, "DEC_PNT": -3.0, "PA_PNT": 0.0, **wcs_row(w)})
        planes.append(np.full((40, 40), i + 1, dtype=np.int32))
    cube = tmp_path / "cube.fits"
    write_cube(np.stack(planes), cube_header("agn", 1, "count", 2e4), rows, cube)
    out = tmp_path / "plane.fits"
    assert run(["extract", cube, "--source", 11, "--output", out]) == 0
    with fits.open(out) as hdul:
        assert np.all(hdul[0].data == 2) and hdul[0].header["SRCID"] == 11 and hdul[0].header["EXPOSURE"] == 2e4
        w = WCS(hdul[0].header)
        assert w.has_celestial and np.allclose(w.wcs_pix2world([[19.5, 19.5]], 0)[0], [40.5, -3.0])
    assert run(["extract", cube, "--source", 3, "--output", tmp_path / "none.fits"]) == 2
    assert "has no source 3" in capsys.readouterr().err and not (tmp_path / "none.fits").exists()


def test_event_lists_and_images_carry_what_x_ray_tools_need(sky_file, tmp_path):
    """OGIP event keywords, legal ranges (TLMIN/TLMAX) and a GTI table per CCD; `bin` keeps the GTIs."""
    events, image = tmp_path / "ev.fits", tmp_path / "img.fits"
    assert run(["simulate", "--sky", sky_file, "--exposure", 5000, "--resolution", 1, "--seed", 3,
                "--output", events]) == 0
    with fits.open(events) as hdul:
        hdul.verify("exception")        # FITS-standard clean (what fitsverify checks of the structure)
        h = hdul["EVENTS"].header
        assert (h["HDUCLASS"], h["HDUCLAS1"], h["TIMEREF"], h["TASSIGN"], h["RADECSYS"], h["EQUINOX"]) == (
            "OGIP", "EVENTS", "LOCAL", "SATELLITE", "FK5", 2000.0)
        assert h["DATE-OBS"] < h["DATE-END"] and len(h["OBS_ID"]) == 10
        names = hdul["EVENTS"].columns.names
        for column, (lo, hi) in {"PI": (0, 20479), "RAWX": (0, 63), "RAWY": (0, 199), "PATTERN": (0, 13),
                                 "CCDNR": (1, 12)}.items():
            i = names.index(column) + 1
            assert (h[f"TLMIN{i}"], h[f"TLMAX{i}"]) == (lo, hi)
            assert lo <= hdul["EVENTS"].data[column].min() and hdul["EVENTS"].data[column].max() <= hi
        gtis = [hdu for hdu in hdul if hdu.name.startswith("STDGTI")]
        assert [g.header["CCDID"] for g in gtis] == list(range(1, 13))
        assert all(g.data["STOP"][0] - g.data["START"][0] == 5000.0 for g in gtis)
    assert run(["bin", events, "--output", image]) == 0
    with fits.open(image) as hdul:
        assert [hdu.name for hdu in hdul[1:]] == [f"STDGTI{i:02d}" for i in range(1, 13)]
