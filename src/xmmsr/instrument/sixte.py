"""SIXTE backend: simulate pn event lists with SIXTE's ``sixtesim`` and convert them to our format.

SIXTE (https://www.sternwarte.uni-erlangen.de/sixte/) is an external program; this module only
finds it, prepares its inputs (SIMPUT from the sky model, instrument XML, 2x variant), runs it and
maps its EVENTS table onto the columns and header keywords of the built-in simulator, so that
binning and everything downstream cannot tell the backends apart except by ``BACKEND``/``SIMULATR``.

Parameter names follow SIXTE's parameter files (``runsixt.par``: XMLFile, Simput, RA, Dec,
Exposure, Seed, MJDREF, TSTART, Background, clobber; sixtesim names the event file ``EvtFile``,
runsixt ``EventList``). Event columns follow SIXTE's ``libsixt/eventfile.tpl`` (TIME, FRAME, PHA,
PI, SIGNAL [keV], RAWX, RAWY, RA, DEC [deg], PH_ID, SRC_ID, TYPE, NPIXELS, PILEUP).

Limitation: without an attitude file SIXTE points with roll 0, so only ``instrument.roll_deg == 0``
is accepted (detector positions are recomputed from RA/DEC with our own pointing and roll).
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

import numpy as np
from astropy.io import fits

from ..errors import InputError
from ..io import atomic_path, open_fits
from ..sky.model import SkyModel
from .model import PnInstrument
from .events import COLUMN_DTYPES, EVENT_COLUMNS, MJDREF_XMM, EventList, Pointing, event_header, set_positions
from .simulator import check_exposure

EXECUTABLES = ("sixtesim", "runsixt")
PN_XML_DIR = Path("share/sixte/instruments/xmm/epicpn")
PN_XML_NAMES = ("fullframe_thinfilter.xml", "fullframe_thin_filter.xml")
PATTERN_INVALID = 13  # SIXTE TYPE < 0 (invalid pattern): kept, but never selected (PATTERN > 4)
_INSTALL_FIX = ("install SIXTE and SIMPUT (https://www.sternwarte.uni-erlangen.de/sixte/), source "
                "$SIXTE/bin/sixte-install.sh so that sixtesim is on PATH, and set the SIXTE environment variable")


def find_sixte(executable: str | None = None) -> Path:
    """Path of the SIXTE simulator: ``executable`` (a name on PATH or a path), else sixtesim or runsixt
    on PATH, else in ``$SIXTE/bin``."""
    candidates = [executable] if executable else list(EXECUTABLES)
    for name in candidates:
        if os.sep in name:
            if os.access(name, os.X_OK) and Path(name).is_file():
                return Path(name).resolve()
            continue
        found = shutil.which(name)
        if found is None and os.environ.get("SIXTE"):
            found = shutil.which(name, path=str(Path(os.environ["SIXTE"]) / "bin"))
        if found:
            return Path(found)
    raise InputError(None, "SIXTE executable", f"{' or '.join(candidates)} was not found on PATH or in $SIXTE/bin",
                     _INSTALL_FIX)


def instrument_xml(config_path: str | None) -> Path:
    """The 1x EPIC-pn full-frame instrument XML: ``config_path`` if given, else from ``$SIXTE``."""
    if config_path:
        p = Path(config_path).expanduser()
        if not p.is_file():
            raise InputError(p, "SIXTE instrument XML", "does not exist",
                             "give the path of a SIXTE EPIC-pn instrument XML (e.g. "
                             f"$SIXTE/{PN_XML_DIR}/{PN_XML_NAMES[0]}) or leave it empty to use $SIXTE")
        return p
    root = os.environ.get("SIXTE")
    if not root:
        raise InputError(None, "SIXTE instrument XML", "no XML configured and the SIXTE environment variable is unset",
                         f"set the instrument XML in the config, or {_INSTALL_FIX}, and install the XMM instrument "
                         "files into $SIXTE/share/sixte/instruments/xmm")
    directory = Path(root) / PN_XML_DIR
    for name in PN_XML_NAMES:
        if (directory / name).is_file():
            return directory / name
    fallback = sorted(directory.glob("fullframe*.xml")) if directory.is_dir() else []
    if fallback:
        return fallback[0]
    raise InputError(directory, "SIXTE instrument XML", "no EPIC-pn full-frame XML (fullframe*.xml) found",
                     "install SIXTE's XMM-Newton instrument files (instruments_xmm) into $SIXTE, or give the XML "
                     "path in the config")


# --------------------------------------------------------------------------------------------------
# 2x instrument


def _fmt(x: float) -> str:
    return repr(float(x))


def derive_2x_instrument(xml_in: Path, xml_out: Path) -> Path:
    """Write the 2x variant of a SIXTE instrument XML to ``xml_out``; the input files stay untouched.

    Changes, in every ``<detector>`` (and nowhere else):

    * ``<dimensions xwidth ywidth>`` doubled, ``<wcs xdelt ydelt>`` halved, ``<wcs xrpix yrpix>``
      mapped to ``2 * rpix - 0.5`` (same physical reference point; pixel edges at half-integers),
      ``<pixelborder x y>`` halved (same fraction of a pixel);
    * readout ``<loop>`` elements running over the rows (``end == ywidth - 1``) run over the doubled
      rows, and the ``<wait time>`` inside them is halved, so frame and readout time stay the same.

    The PSF (``<psf filename>``) is scaled to half width by a copy of its FITS file beside ``xml_out``
    (``<name>_2x.fits``) in which ``CDELT1/2`` (and ``CD`` matrices) of every image HDU are halved:
    the same images on a grid twice as fine about the reference pixel. Relative ``filename``
    attributes are made absolute (SIXTE resolves them against the XML's directory, which changes).
    """
    xml_in, xml_out = Path(xml_in), Path(xml_out)
    tree = ET.parse(xml_in, parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    root = tree.getroot()
    for el in root.iter():
        name = el.get("filename")
        if name is not None and not Path(name).is_absolute():
            el.set("filename", str((xml_in.parent / name).resolve()))
    for det in [root] if root.tag == "detector" else root.iter("detector"):
        _detector_2x(det)
    for psf in root.iter("psf"):
        src = Path(psf.get("filename", ""))
        if not src.is_file():
            raise InputError(src, "PSF file of the instrument XML", "does not exist",
                             f"check the <psf filename> in {xml_in} and that SIXTE's instrument files are installed")
        dst = xml_out.parent / f"{src.stem}_2x.fits"
        _scaled_psf(src, dst, 0.5)
        psf.set("filename", str(dst.resolve()))
    with atomic_path(xml_out) as tmp:
        tree.write(tmp, encoding="UTF-8", xml_declaration=True)
    return xml_out


def _rescale(elements: Iterable[ET.Element], keys: tuple[str, ...], transform: Callable[[str], str]) -> None:
    """Replace the attributes ``keys`` (where present) of every element by ``transform`` of their value."""
    for element in elements:
        for key in keys:
            if key in element.attrib:
                element.set(key, transform(element.get(key, "0")))


def _detector_2x(det: ET.Element) -> None:
    rows = max((int(d.get("ywidth", "0")) for d in det.iter("dimensions")), default=None)
    _rescale(det.iter("dimensions"), ("xwidth", "ywidth"), lambda v: str(2 * int(v)))
    _rescale(det.iter("wcs"), ("xrpix", "yrpix"), lambda v: _fmt(2.0 * float(v) - 0.5))
    _rescale(det.iter("wcs"), ("xdelt", "ydelt"), lambda v: _fmt(0.5 * float(v)))
    _rescale(det.iter("pixelborder"), ("x", "y"), lambda v: _fmt(0.5 * float(v)))
    if rows:
        for loop in det.iter("loop"):
            if loop.get("end") == str(rows - 1) and loop.get("start", "0") == "0":
                loop.set("end", str(2 * rows - 1))
                _rescale(loop.iter("wait"), ("time",), lambda v: _fmt(0.5 * float(v)))


def _scaled_psf(src: Path, dst: Path, factor: float) -> None:
    """Copy a PSF FITS file with the pixel scale of every image HDU multiplied by ``factor``."""
    with open_fits(src, "SIXTE PSF", verify_checksum=False) as hdul:  # fully read into memory; the source file is not modified
        for hdu in hdul:
            if hdu.is_image and hdu.header.get("NAXIS", 0) >= 2:
                h = hdu.header
                for key in ("CDELT1", "CDELT2", "CD1_1", "CD1_2", "CD2_1", "CD2_2"):
                    if key in h:
                        h[key] = h[key] * factor
                h["HISTORY"] = f"xmmsr: pixel scale x{factor} of {src.name} (PSF of the 2x instrument)"
        with atomic_path(dst) as tmp:
            hdul.writeto(tmp, overwrite=True)


# --------------------------------------------------------------------------------------------------
# Running SIXTE


def sixtesim_command(executable: str | Path, xml: str | Path, simput: str | Path, evtfile: str | Path, ra: float,
                     dec: float, exposure_s: float, seed: int, tstart: float, mjdref: float,
                     background: bool = True) -> list[str]:
    """Argument list of one SIXTE run (key=value parameters as in SIXTE's .par files).

    SIXTE's ``Seed`` is a C int (-1 means "from the clock"), so our 63-bit seeds are taken modulo 2^31.
    """
    evt_key = "EventList" if Path(executable).name.startswith("runsixt") else "EvtFile"
    return [str(executable), f"XMLFile={xml}", f"Simput={simput}", f"{evt_key}={evtfile}",
            f"RA={_fmt(ra)}", f"Dec={_fmt(dec)}", f"Exposure={_fmt(exposure_s)}", f"Seed={int(seed) % 2**31}",
            f"MJDREF={_fmt(mjdref)}", f"TSTART={_fmt(tstart)}", f"Background={'yes' if background else 'no'}",
            "clobber=yes"]


def run_sixte(sky: SkyModel, xml: Path, exposure_s: float, seed: int, tstart: float, workdir: Path, log: IO[str],
              background: bool = True, executable: str | None = None) -> Path:
    """Write the SIMPUT of ``sky``, run SIXTE in ``workdir`` and return its checked event file.

    SIXTE's output (stdout and stderr) goes to ``log``. The event file appears under its final name
    (``workdir/sixte_evt.fits``) only after it has been checked to be a readable FITS file with an
    EVENTS extension; on any failure an :class:`InputError` is raised and no file has that name.
    """
    from ..sky.simput import write_simput  # imported late: SIMPUT support is only needed here

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    exe = find_sixte(executable)
    simput = write_simput(sky, workdir / "sky.simput")
    final = workdir / "sixte_evt.fits"
    partial = workdir / ".sixte_evt.partial.fits"
    final.unlink(missing_ok=True)
    partial.unlink(missing_ok=True)
    cmd = sixtesim_command(exe, Path(xml).resolve(), Path(simput).resolve(), partial.resolve(), sky.ra_pnt,
                           sky.dec_pnt, exposure_s, seed, tstart, MJDREF_XMM, background)
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    tail: collections.deque[str] = collections.deque(maxlen=20)
    try:
        with subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace") as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip("\n"))
            code = proc.wait()
        log.flush()
        last = "\n".join("    " + t for t in tail) or "    (no output)"
        if code != 0:
            raise InputError(exe, "SIXTE run", f"exited with status {code}; last lines of its output:\n{last}\n",
                             "read the SIXTE log, check the instrument XML, the SIMPUT and the SIXTE installation")
        if not partial.is_file():
            raise InputError(partial, "SIXTE event file", f"was not written although {exe.name} reported success; "
                             f"last lines of its output:\n{last}\n",
                             "check the instrument XML (a multi-chip XML writes one file per chip) and the SIXTE log")
        with open_fits(partial, "SIXTE event file", verify_checksum=False) as hdul:
            if "EVENTS" not in hdul:
                raise InputError(partial, "EVENTS extension", "missing in SIXTE's output",
                                 "check the SIXTE version and the event-file template of the instrument XML")
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return final


# --------------------------------------------------------------------------------------------------
# Conversion


def _patterns(data: fits.FITS_rec, names: list[str]) -> np.ndarray:
    """Our PATTERN from SIXTE's TYPE (XMM numbering: 0 single, 1-4 double, 5-8 triple, 9-12 quadruple,
    negative invalid) or, without TYPE, from NPIXELS (1 -> 0, 2 -> 1, 3 -> 5, 4 -> 9)."""
    if "TYPE" in names:
        t = np.asarray(data["TYPE"]).astype(np.int16)
        return np.where((t < 0) | (t > 12), np.int16(PATTERN_INVALID), t).astype(np.int16)
    if "NPIXELS" in names:
        lut = np.array([PATTERN_INVALID, 0, 1, 5, 9], dtype=np.int16)
        n = np.asarray(data["NPIXELS"]).astype(np.int64)
        return np.where((n >= 1) & (n <= 4), lut[np.clip(n, 0, 4)], np.int16(PATTERN_INVALID)).astype(np.int16)
    return np.zeros(len(data), dtype=np.int16)


def convert_events(sixte_evt: Path, sky: SkyModel, instrument: PnInstrument, exposure_s: float, resolution: int,
                   seed: int, tstart: float, background: bool = True) -> EventList:
    """Map a SIXTE event file onto our event-list columns and header (events off our CCDs are dropped).

    Detector positions come from SIXTE's back-projected RA/DEC through our pointing, roll and aim
    point, so DETX/DETY, RAWX/RAWY, CCDNR and FLAG follow our CCD layout exactly as in the built-in
    simulator; PI (eV) and ENERGY (eV) come from SIGNAL (keV) x 1000, PATTERN from TYPE/NPIXELS.
    """
    check_exposure(exposure_s, resolution)
    with open_fits(sixte_evt, "SIXTE event file", verify_checksum=False) as hdul:
        if "EVENTS" not in hdul:
            raise InputError(sixte_evt, "EVENTS extension", "missing", "give the event file written by SIXTE")
        data = hdul["EVENTS"].data
        names = [n.upper() for n in hdul["EVENTS"].columns.names]
        energy_col = "SIGNAL" if "SIGNAL" in names else "PI"
        missing = [c for c in ("TIME", "RA", "DEC", energy_col) if c not in names]
        if missing:
            raise InputError(sixte_evt, f"EVENTS columns {missing}", "missing",
                             "SIXTE event files carry TIME, RA, DEC and SIGNAL (keV)")
        time = np.asarray(data["TIME"], dtype=np.float64)
        ra = np.asarray(data["RA"], dtype=np.float64)
        dec = np.asarray(data["DEC"], dtype=np.float64)
        energy_ev = np.asarray(data[energy_col], dtype=np.float64) * 1000.0
        pattern = _patterns(data, names)
    frame = Pointing.of(sky, instrument)
    ok = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(energy_ev) & np.isfinite(time)
    xi, eta = frame.tangent(ra[ok], dec[ok])
    dx, dy = (a.astype(np.float32) for a in frame.to_detector(xi, eta))
    on = instrument.geometry.on_chip(dx, dy)
    order = np.argsort(time[ok][on], kind="stable")
    xi, eta, dx, dy = xi[on][order], eta[on][order], dx[on][order], dy[on][order]
    columns = {name: np.empty(dx.size, dtype=dtype) for name, dtype in COLUMN_DTYPES.items()}
    columns["TIME"] = time[ok][on][order]
    set_positions(columns, slice(None), dx, dy, xi, eta, instrument, resolution)
    e = energy_ev[ok][on][order]
    columns["PI"][:] = np.clip(np.rint(e), 0, np.iinfo(np.int16).max)
    columns["ENERGY"][:] = e
    columns["PATTERN"][:] = pattern[ok][on][order]
    assert tuple(columns) == EVENT_COLUMNS
    header = event_header(sky, instrument, frame, exposure_s, resolution, seed, background, tstart)
    header["SIMULATR"] = ("SIXTE", "simulation backend")
    header["BACKEND"] = ("sixte", "simulation backend (xmmsr name)")
    header["NSIXTEEV"] = (int(ok.size), "events in the SIXTE event file")
    return EventList(columns, header)


def simulate_events_sixte(sky: SkyModel, instrument: PnInstrument, exposure_s: float, resolution: int, seed: int,
                          tstart: float, xml_1x: Path, workdir: Path, log: IO[str], background: bool = True,
                          executable: str | None = None) -> EventList:
    """Simulate the event list of ``sky`` with SIXTE at resolution 1 (``xml_1x``) or 2 (derived 2x XML)."""
    check_exposure(exposure_s, resolution)
    if instrument.roll_deg != 0.0:
        raise InputError(None, "instrument.roll_deg", f"{instrument.roll_deg} is not supported by the SIXTE backend",
                         "use roll_deg 0 with SIXTE (it points without an attitude file), or the builtin backend")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    xml_1x = Path(xml_1x)
    xml = xml_1x if resolution == 1 else derive_2x_instrument(xml_1x, workdir / f"{xml_1x.stem}_2x.xml")
    evt = run_sixte(sky, xml, exposure_s, seed, tstart, workdir, log, background, executable)
    return convert_events(evt, sky, instrument, exposure_s, resolution, seed, tstart, background)
