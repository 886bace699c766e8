"""SIXTE backend with a stand-in ``sixtesim`` (the contract of the command line; tests against the real SIXTE
are in test_sixte_real.py)."""

from __future__ import annotations

import io
import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import point_sky

from xmmsr.errors import InputError
from xmmsr.instrument.binning import bin_event_file
from xmmsr.instrument.events import read_events, write_events
from xmmsr.instrument.events import COLUMN_DTYPES, EVENT_COLUMNS
from xmmsr.instrument.sixte import (
    derive_2x_instrument,
    find_sixte,
    instrument_xml,
    run_instrument_xml,
    simulate_events_sixte,
    sixte_command,
)

# A stand-in for sixtesim: parses key=value arguments, records them, and writes an event file with
# SIXTE's EVENTS columns (libsixt/eventfile.tpl). STANDIN_MODE selects a failure.
STANDIN = r'''
import json, os, sys
import numpy as np
from astropy.io import fits

args = dict(a.split("=", 1) for a in sys.argv[1:])
with open(os.environ["STANDIN_RECORD"], "w") as f:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "PFILES": os.environ.get("PFILES")}, f)
mode = os.environ.get("STANDIN_MODE", "ok")
print("initialize ...", flush=True)
if mode == "fail":
    print("***ERROR: could not open SIMPUT catalog", file=sys.stderr)
    sys.exit(1)
if mode == "template":
    print("failed opening file evt.fits(/nowhere/share/sixte/templates/eventfile.tpl)")
    sys.exit(1)
if mode == "nofile":
    print("finished successfully!")
    sys.exit(0)
rng = np.random.default_rng(int(args["Seed"]))
n = 400
ra0, dec0 = float(args["RA"]), float(args["Dec"])
r = np.concatenate([np.abs(rng.normal(0, 10.0, 300)), 600.0 * np.sqrt(rng.random(100))]) / 3600.0
phi = 2 * np.pi * rng.random(n)
dec = dec0 + r * np.sin(phi)
ra = ra0 + r * np.cos(phi) / np.cos(np.deg2rad(dec0))
t0, exposure = float(args["TSTART"]), float(args["Exposure"])
signal = rng.uniform(0.3, 3.0, n).astype(np.float32)
typ = rng.choice(np.array([0, 0, 0, 1, 2, 3, 4, 5, 9, -1], dtype=np.int16), n)
npix = np.select([typ == 0, typ <= 4, typ <= 8], [1, 2, 3], 4).astype(np.int32)
cols = [
    fits.Column("TIME", "D", "s", array=t0 + exposure * rng.random(n)),
    fits.Column("FRAME", "J", array=np.arange(n)),
    fits.Column("PHA", "J", "ADU", array=(signal * 200).astype(np.int32)),
    fits.Column("PI", "E", "keV", array=signal),
    fits.Column("SIGNAL", "E", "keV", array=signal),
    fits.Column("RAWX", "I", "pixel", array=rng.integers(0, 64, n)),
    fits.Column("RAWY", "I", "pixel", array=rng.integers(0, 200, n)),
    fits.Column("RA", "D", "deg", array=ra),
    fits.Column("DEC", "D", "deg", array=dec),
    fits.Column("PH_ID", "2J", array=np.zeros((n, 2), np.int32)),
    fits.Column("SRC_ID", "2J", array=np.ones((n, 2), np.int32)),
    fits.Column("TYPE", "I", array=typ),
    fits.Column("NPIXELS", "J", array=npix),
    fits.Column("PILEUP", "I", array=np.zeros(n, np.int16)),
]
hdu = fits.BinTableHDU.from_columns(cols, name="EVENTS")
hdu.header["MJDREF"] = float(args["MJDREF"])
hdu.header["CREATOR"] = "SIXTE"
out = args["EvtFile"]
fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(out, overwrite=True)
if mode == "truncated":
    size = os.path.getsize(out)
    with open(out, "r+b") as f:
        f.truncate(size - 2880)
print("finished successfully!")
'''


@pytest.fixture
def standin(tmp_path, monkeypatch) -> Path:
    """Install the stand-in sixtesim first on PATH; returns the file its arguments are recorded in."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "sixtesim"
    exe.write_text(f"#!{sys.executable}\n{STANDIN}")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    record = tmp_path / "record.json"
    monkeypatch.setenv("STANDIN_RECORD", str(record))
    monkeypatch.delenv("STANDIN_MODE", raising=False)
    return record


def _write_instrument(directory: Path) -> Path:
    """A small instrument XML in SIXTE's format with a PSF FITS file beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    psf = fits.ImageHDU(np.outer(np.hanning(9), np.hanning(9)).astype(np.float32))
    for k, v in (("CRPIX1", 5.0), ("CRPIX2", 5.0), ("CRVAL1", 0.0), ("CRVAL2", 0.0), ("CDELT1", 1.5e-5),
                 ("CDELT2", 1.5e-5), ("ENERGY", 1.0), ("THETA", 0.0)):
        psf.header[k] = v
    fits.HDUList([fits.PrimaryHDU(), psf]).writeto(directory / "psf.fits")
    energy = np.linspace(0.05, 12.0, 240)
    fits.BinTableHDU.from_columns([fits.Column("ENERG_LO", "E", "keV", array=energy[:-1]),
                                   fits.Column("ENERG_HI", "E", "keV", array=energy[1:]),
                                   fits.Column("SPECRESP", "E", "cm**2", array=np.full(239, 500.0))],
                                  name="SPECRESP").writeto(directory / "pn.arf")
    xml = directory / "pn.xml"
    xml.write_text("""<?xml version="1.0"?>
<!-- test instrument in SIXTE's format -->
<instrument telescop="XMM-Newton" instrume="EPIC-pn">
  <telescope>
    <focallength value="7.5"/>
    <fov diameter="0.5"/>
    <arf filename="pn.arf"/>
    <psf filename="psf.fits"/>
    <vignetting filename="vign.fits"/>
  </telescope>
  <detector type="EPIC-pn">
    <dimensions xwidth="64" ywidth="200"/>
    <wcs xrpix="32.5" yrpix="100.5" xrval="0.0" yrval="0.0" xdelt="150.e-6" ydelt="150.e-6" rota="0.0"/>
    <pixelborder x="2.e-6" y="4.e-6"/>
    <rmf filename="pn.rmf"/>
    <split type="gauss" par1="11.e-6"/>
    <threshold_event_lo_keV value="0.1"/>
    <eventfile template="eventfile.tpl"/>
    <readout mode="time">
      <wait time="68.75e-3"/>
      <loop start="0" end="199" increment="1" variable="$i">
        <readoutline lineindex="0" readoutindex="$i"/>
        <lineshift/>
        <wait time="23.04e-6"/>
      </loop>
    </readout>
  </detector>
</instrument>
""")
    return xml


def test_discovery_errors_name_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("SIXTE", raising=False)
    with pytest.raises(InputError, match="sixtesim or runsixt was not found.*install SIXTE"):
        find_sixte()
    with pytest.raises(InputError, match="does not exist.*sixte-instrument"):
        instrument_xml(tmp_path / "missing.xml", 1)
    with pytest.raises(InputError, match="holds no pn_2x.xml.*xmmsr sixte-instrument --resolution 2"):
        instrument_xml(tmp_path, 2)
    (tmp_path / "pn_1x.xml").write_text("<instrument/>")
    assert instrument_xml(tmp_path, 1) == (tmp_path / "pn_1x.xml", False)
    assert instrument_xml(tmp_path, 2) == (tmp_path / "pn_1x.xml", True)      # derived from the 1x one
    (tmp_path / "pn_2x.xml").write_text("<instrument/>")
    assert instrument_xml(tmp_path, 2) == (tmp_path / "pn_2x.xml", False)
    assert instrument_xml(tmp_path / "pn_1x.xml", 2) == (tmp_path / "pn_1x.xml", True)


def test_finds_the_executable_on_path(standin):
    assert find_sixte().name == "sixtesim"
    assert find_sixte("sixtesim").name == "sixtesim"


def test_command_list():
    cmd = sixte_command("/opt/sixte/bin/runsixt", "/w/instrument.xml", ["/w/sky.simput", "/w/bkg.simput"], "/w/evt.fits",
                        150.0, 2.5, -30.0, 20000.0, 2**40 + 7, 0.0, 50814.0)
    assert cmd == ["/opt/sixte/bin/runsixt", "XMLFile=/w/instrument.xml", "Simput=/w/sky.simput",
                   "Simput2=/w/bkg.simput", "EvtFile=/w/evt.fits", "RA=150.0", "Dec=2.5", "rollangle=330.0",
                   "Exposure=20000.0", "Seed=7", "MJDREF=50814.0", "TSTART=0.0", "Background=yes", "chatter=2",
                   "ProgressFile=progress.txt", "clobber=yes"]
    # runsixt 2.7 ignores EventList (an obsolete name): both programs get EvtFile
    assert "EvtFile=e" in sixte_command("sixtesim", "x", ["s"], "e", 1, 2, 0, 3, 4, 5, 6, background=False)


@pytest.mark.parametrize("resolution", [1, 2])
def test_whole_run_gives_a_binnable_event_list(standin, instrument, tmp_path, resolution):
    sky = point_sky(1e-3)
    xml = _write_instrument(tmp_path / "inst")
    log = io.StringIO()
    events = simulate_events_sixte(sky, instrument, 5000.0, resolution, 123, 10.0, xml, tmp_path / "work", log,
                                   derive_2x=resolution == 2)
    record = json.loads(standin.read_text())
    args = dict(a.split("=", 1) for a in record["argv"])
    # SIXTE points at the optical axis; its detector y (readout) along DETY: roll 270
    g = instrument.geometry
    from xmmsr.instrument.events import Pointing

    frame = Pointing.of(sky, instrument)
    axis = frame.to_sky(*frame.to_tangent(np.array([g.axis_x_arcsec]), np.array([g.axis_y_arcsec])))
    assert float(args["RA"]) == pytest.approx(axis[0][0], abs=1e-9)
    assert float(args["Dec"]) == pytest.approx(axis[1][0], abs=1e-9)
    assert args["rollangle"] == "270.0" and args["chatter"] == "2"
    assert args["Exposure"] == "5000.0" and args["TSTART"] == "10.0" and args["Seed"] == "123"
    assert Path(args["Simput"]).is_file() and Path(args["Simput2"]).name == "background.simput"
    # a private parameter folder per run, then the system's
    assert record["PFILES"].startswith(str((tmp_path / "work" / "pfiles").resolve()) + ";") or \
        record["PFILES"].startswith(str(tmp_path / "work" / "pfiles") + ";")
    # the run's XML sits in the work folder and names its files relative to itself
    run_xml = Path(args["XMLFile"])
    assert run_xml.parent == (tmp_path / "work").resolve()
    names = {el.tag: el.get("filename") for el in ET.parse(run_xml).getroot().iter() if el.get("filename")}
    assert all(not Path(n).is_absolute() for n in names.values())
    assert (run_xml.parent / names["arf"]).is_file() and (run_xml.parent / names["psf"]).is_file()
    assert "finished successfully!" in log.getvalue()
    assert tuple(events.columns) == EVENT_COLUMNS
    assert all(events.columns[c].dtype == COLUMN_DTYPES[c] for c in EVENT_COLUMNS)
    assert 300 <= len(events) <= 400  # a few events fall into gaps or off the array
    assert np.all(np.diff(events.columns["TIME"]) >= 0)
    assert events.header["BACKEND"][0] == "sixte" and events.header["RESMULT"][0] == resolution
    assert set(np.unique(events.columns["PATTERN"])) <= {0, 1, 2, 3, 4, 5, 9, 13}
    assert np.all((events.columns["PI"] >= 300) & (events.columns["PI"] <= 3000))
    # the stand-in's bright core sits where it was pointed: the optical axis (DETX/DETY in 0.05" units)
    assert abs(np.median(events.columns["DETX"]) - g.axis_x_arcsec / 0.05) < 100
    assert abs(np.median(events.columns["DETY"]) - g.axis_y_arcsec / 0.05) < 100
    path = tmp_path / "evt.fits"
    write_events(events, path)
    data, header = read_events(path)
    assert len(data) == len(events) and header["BACKEND"] == "sixte"
    image, out = bin_event_file(path)
    assert image.shape == g.image_grid(resolution).shape
    assert 0 < image.sum() <= len(events) and out["RESMULT"] == resolution


def test_blank_field_without_background_runs_nothing_and_gives_no_events(standin, instrument, tmp_path):
    """SIXTE crashes on a catalogue without sources: a blank field is not handed to it."""
    sky = point_sky(1e-3)
    sky.points = sky.points[:0]
    events = simulate_events_sixte(sky, instrument, 1000.0, 1, 1, 0.0, _write_instrument(tmp_path / "i"),
                                   tmp_path / "work", io.StringIO(), background=False)
    assert len(events) == 0 and not standin.exists()


def test_blank_field_with_background_gives_sixte_only_nonempty_catalogues(standin, instrument, tmp_path):
    sky = point_sky(1e-3)
    sky.points = sky.points[:0]
    simulate_events_sixte(sky, instrument, 1000.0, 1, 1, 0.0, _write_instrument(tmp_path / "i"), tmp_path / "work",
                          io.StringIO(), background=True)
    args = dict(a.split("=", 1) for a in json.loads(standin.read_text())["argv"])
    assert Path(args["Simput"]).name == "background.simput" and "Simput2" not in args
    with fits.open(args["Simput"]) as hdul:
        names = [n.strip() for n in hdul["SRC_CAT"].data["SRC_NAME"]]
        assert names == ["cxb", "galactic"] and len(hdul) == 5   # primary, catalogue, spectra, two images


@pytest.mark.parametrize("mode, message", [("fail", "(?s)exited with status 1.*could not open SIMPUT"),
                                           ("template", "(?s)data folder /nowhere/share/sixte.*ln -s"),
                                           ("nofile", "was not written"), ("truncated", "cannot be read as FITS")])
def test_failing_sixte_gives_a_clear_error_and_no_event_file(standin, instrument, tmp_path, monkeypatch, mode,
                                                             message):
    monkeypatch.setenv("STANDIN_MODE", mode)
    work = tmp_path / "work"
    with pytest.raises(InputError, match=message):
        simulate_events_sixte(point_sky(1e-3), instrument, 1000.0, 1, 1, 0.0, _write_instrument(tmp_path / "i"),
                              work, io.StringIO())
    assert not (work / "sixte_evt.fits").exists()
    assert not list(work.glob("*evt*"))


def test_2x_instrument_changes_exactly_the_pixel_scale_charge_cloud_and_psf(tmp_path):
    xml = _write_instrument(tmp_path / "inst")
    original = xml.read_bytes()
    psf_original = (tmp_path / "inst/psf.fits").read_bytes()
    out = derive_2x_instrument(xml, tmp_path / "work" / "pn_2x.xml")
    assert xml.read_bytes() == original and (tmp_path / "inst/psf.fits").read_bytes() == psf_original
    expected = {
        ("dimensions", "xwidth"): "128", ("dimensions", "ywidth"): "400",
        ("wcs", "xrpix"): "64.5", ("wcs", "yrpix"): "200.5", ("wcs", "xdelt"): "7.5e-05", ("wcs", "ydelt"): "7.5e-05",
        ("pixelborder", "x"): "1e-06", ("pixelborder", "y"): "2e-06", ("split", "par1"): "5.5e-06",
        ("loop", "end"): "399", ("wait@loop", "time"): "1.152e-05",
    }
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    a = list(ET.parse(xml, parser=parser).getroot().iter())
    b = list(ET.parse(out, parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))).getroot().iter())
    assert [e.tag for e in a] == [e.tag for e in b]
    changed = {}
    in_loop = {id(w) for lp in b if lp.tag == "loop" for w in lp.iter("wait")}
    for ea, eb in zip(a, b):
        assert ea.attrib.keys() == eb.attrib.keys() and (ea.text or "").strip() == (eb.text or "").strip()
        for k in ea.attrib:
            if ea.get(k) == eb.get(k):
                continue
            if k == "filename" and ea.tag != "psf":  # made relative to the new XML's folder, same file
                assert not Path(eb.get(k)).is_absolute()
                assert (out.parent / eb.get(k)).resolve() == (xml.parent / ea.get(k)).resolve()
                continue
            tag = f"{eb.tag}@loop" if id(eb) in in_loop else str(eb.tag)
            changed[(tag, k)] = eb.get(k)
    psf_2x = out.parent / changed.pop(("psf", "filename"))
    assert changed == expected
    with fits.open(psf_2x) as h2, fits.open(tmp_path / "inst/psf.fits") as h1:
        assert h2[1].header["CDELT1"] == h1[1].header["CDELT1"] / 2
        assert h2[1].header["CDELT2"] == h1[1].header["CDELT2"] / 2
        assert h2[1].header["CRPIX1"] == h1[1].header["CRPIX1"]
        np.testing.assert_array_equal(h2[1].data, h1[1].data)


def test_field_particle_scale_rescales_a_copy_of_the_pha_background(tmp_path):
    xml = _write_instrument(tmp_path / "inst")
    text = xml.read_text().replace('<rmf filename="pn.rmf"/>', '<rmf filename="pn.rmf"/>\n    '
                                   '<phabackground filename="bkg.pha"/>')
    xml.write_text(text)
    rate = np.linspace(0.0, 1.0, 16, dtype=np.float32)
    fits.BinTableHDU.from_columns([fits.Column("CHANNEL", "J", array=np.arange(16)),
                                   fits.Column("RATE", "E", array=rate)]).writeto(tmp_path / "inst" / "bkg.pha")
    before = (tmp_path / "inst" / "bkg.pha").read_bytes()
    out = run_instrument_xml(xml, tmp_path / "work" / "run.xml", particle_scale=1.7)
    name = next(el.get("filename") for el in ET.parse(out).getroot().iter("phabackground"))
    np.testing.assert_allclose(fits.getdata(out.parent / name)["RATE"], rate * 1.7, rtol=1e-6)
    assert (tmp_path / "inst" / "bkg.pha").read_bytes() == before
    out = run_instrument_xml(xml, tmp_path / "work2" / "run.xml", particle_scale=0.0)   # SIXTE refuses a rate of 0
    assert not list(ET.parse(out).getroot().iter("phabackground"))


def test_simulate_rule_runs_with_the_sixte_backend(standin, tmp_path):
    """The workflow's simulate and bin rules with backend sixte (stand-in executable and instrument)."""
    import yaml
    from conftest import TINY, snakemake

    from xmmsr.cube import read_cube

    xml = _write_instrument(tmp_path / "instrument")
    config = yaml.safe_load(TINY.read_text())
    config["simulate"]["backend"] = "sixte"
    config["simulate"]["sixte"] = {"instrument_xml": str(xml)}
    path = tmp_path / "sixte.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "run"
    work.mkdir()
    targets = [f"results/images/agn/shard0000/2ks_{r}x.fits" for r in (1, 2)]
    snakemake(work, *targets, "--cores", "2", "--configfile", str(path))
    record = json.loads(standin.read_text())
    assert any(a.startswith("XMLFile=") for a in record["argv"]) and "Exposure=2000.0" in record["argv"]
    for res in (1, 2):
        counts, rows, header = read_cube(work / targets[res - 1])
        assert counts.shape[0] == 1 and counts.sum() > 0 and header["EXPOSURE"] == 2000.0
        events = next((work / "results" / "events" / "agn" / "shard0000" / f"2ks_{res}x").glob("*.fits"))
        assert fits.getheader(events, "EVENTS")["BACKEND"] == "sixte"
    log = (work / "results" / "logs" / "simulate" / "agn_shard0000_2ks_1x.log").read_text()
    assert "finished successfully" in log  # SIXTE's output goes to the rule's log
    assert not list((work / "results" / "events" / "agn" / "shard0000").glob(".sixte.*"))  # no work dirs left
    assert not (work / "results" / "sixte").exists()   # the user's instrument: none written
