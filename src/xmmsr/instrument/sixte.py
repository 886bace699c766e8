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
import dataclasses
import functools
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

import numpy as np
from astropy.io import fits

from ..errors import InputError
from ..io import atomic_path, open_fits, write_fits_atomic
from ..sky.model import FieldBackground, SkyModel, empty_point_table, tan_wcs
from ..sky.simput import DiffuseComponent, diffuse_simput_hdulist, simput_source_count, to_simput_hdulist
from ..sky.spectra import photon_spectrum
from .model import PnInstrument
from .events import COLUMN_DTYPES, EVENT_COLUMNS, MJDREF_XMM, EventList, Pointing, event_header, set_positions
from .simulator import ccd_live, check_exposure, offaxis_arcmin
from .sixte_instrument import xml_name

EXECUTABLES = ("sixtesim", "runsixt")
CHATTER = 2                 # warnings and errors (parameter files would otherwise keep an earlier run's)
# SIXTE's detector at roll 0 has +x north and +y east; at 270 deg +y is north, our DETY, so that its readout
# streaks run along DETY as the pn's do. Its x then runs east where DETX runs west: the instrument written by
# xmmsr sixte-instrument counts its columns from the array's west edge, and positions are recomputed from
# RA/DEC anyway, so only the streak direction and the array's footprint depend on it.
SIXTE_ROLL_OFFSET_DEG = 270.0
PATTERN_INVALID = 13  # SIXTE TYPE < 0 (invalid pattern): kept, but never selected (PATTERN > 4)
_INSTALL_FIX = ("install SIXTE and SIMPUT (https://www.sternwarte.uni-erlangen.de/sixte/), source "
                "$SIXTE/bin/sixte-install.sh so that sixtesim (SIXTE 3) or runsixt (SIXTE 2.7) is on PATH, and set "
                "the SIXTE environment variable")


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


def instrument_xml(location: str | Path, resolution: int) -> tuple[Path, bool]:
    """The instrument XML for ``resolution`` at ``location`` and whether it must be made 2x
    (:func:`derive_2x_instrument`): a folder written by ``xmmsr sixte-instrument`` (``pn_{R}x.xml``; a 1x
    one serves 2x too, derived) or an XML file, taken as the 1x instrument."""
    p = Path(location).expanduser()
    if p.is_dir():
        for res, derive in ((resolution, False), (1, resolution == 2)):
            if (p / xml_name(res)).is_file():
                return p / xml_name(res), derive
        raise InputError(p, "SIXTE instrument folder", f"holds no {xml_name(resolution)} (nor {xml_name(1)})",
                         f"write one with: xmmsr sixte-instrument --resolution {resolution} --output {p}")
    if not p.is_file():
        raise InputError(p, "SIXTE instrument XML", "does not exist",
                         "give a SIXTE EPIC-pn instrument XML or a folder written by 'xmmsr sixte-instrument' "
                         "(or leave it unset: the workflow writes one from the instrument model)")
    return p, resolution == 2


# --------------------------------------------------------------------------------------------------
# 2x instrument


def _fmt(x: float) -> str:
    return repr(float(x))


def derive_2x_instrument(xml_in: Path, xml_out: Path) -> Path:
    """Write the 2x variant of a SIXTE instrument XML to ``xml_out``; the input files stay untouched.

    Changes, in every ``<detector>`` (and nowhere else):

    * ``<dimensions xwidth ywidth>`` doubled, ``<wcs xdelt ydelt>`` halved, ``<wcs xrpix yrpix>``
      mapped to ``2 * rpix - 0.5`` (same physical reference point; pixel edges at half-integers),
      ``<pixelborder x y>`` halved (same fraction of a pixel), the charge cloud ``<split par1>``
      halved (with the pixels alone, events split twice as often: 0.53x the 1x counts pass PATTERN <= 4);
    * readout ``<loop>`` elements running over the rows (``end == ywidth - 1``) run over the doubled
      rows, and the ``<wait time>`` inside them is halved, so frame and readout time stay the same.

    The PSF (``<psf filename>``) is scaled to half width by a copy of its FITS file beside ``xml_out``
    (``<name>_2x.fits``) in which ``CDELT1/2`` (and ``CD`` matrices) of every image HDU are halved:
    the same images on a grid twice as fine about the reference pixel. File names are made relative
    to ``xml_out``'s folder (SIXTE resolves them against the XML's folder).
    """
    return run_instrument_xml(Path(xml_in), Path(xml_out), 1.0, derive_2x=True)


def _to_2x(root: ET.Element, xml_in: Path, target_dir: Path) -> None:
    """The 2x changes of :func:`derive_2x_instrument` on a parsed XML whose file names are relative to
    ``target_dir``."""
    for det in [root] if root.tag == "detector" else root.iter("detector"):
        _detector_2x(det)
    for psf in root.iter("psf"):
        src = (target_dir / psf.get("filename", "")).resolve()
        if not src.is_file():
            raise InputError(src, "PSF file of the instrument XML", "does not exist",
                             f"check the <psf filename> in {xml_in} and that SIXTE's instrument files are installed")
        dst = target_dir / f"{src.stem}_2x.fits"
        _scaled_psf(src, dst, 0.5)
        psf.set("filename", dst.name)


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
    _rescale(det.iter("split"), ("par1",), lambda v: _fmt(0.5 * float(v)))
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


@functools.lru_cache(maxsize=8)
def sixte_version(executable: Path) -> str:
    """SIXTE's version (``sixteversion`` beside the executable), e.g. ``2.7.2``; ``unknown`` without it. Asked
    once per executable and process, not for every event list it is recorded in."""
    tool = Path(executable).parent / "sixteversion"
    if not tool.is_file():
        return "unknown"
    try:
        out = subprocess.run([str(tool)], capture_output=True, text=True, timeout=60, env=sixte_environment(None)).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    match = re.search(r"SIXTE version\s+(\S+)", out)
    return match.group(1) if match else "unknown"


def sixte_environment(workdir: Path | None) -> dict[str, str]:
    """The environment of a SIXTE run: a private PFILES folder in ``workdir`` first (SIXTE stores every
    parameter of a run there, and an earlier run's ``chatter`` or file names must not leak into this one),
    then the system parameter files; never a prompt."""
    env = dict(os.environ)
    system = env.get("PFILES", "").split(";", 1)[-1]
    for root in (env.get("SIXTE"), env.get("SIMPUT")):
        for sub in ("share/sixte/pfiles", "share/simput/pfiles"):
            if root and (Path(root) / sub).is_dir() and str(Path(root) / sub) not in system.split(":"):
                system = ":".join(filter(None, [system, str(Path(root) / sub)]))
    if workdir is not None:
        private = Path(workdir) / "pfiles"
        private.mkdir(parents=True, exist_ok=True)
        env["PFILES"] = f"{private};{system}"
    elif system:
        env["PFILES"] = f"{tempfile.gettempdir()};{system}"
    env["HEADASNOQUERY"] = ""
    env["HEADASPROMPT"] = "/dev/null"
    return env


def sixte_command(executable: str | Path, xml: str | Path, simputs: list[str | Path], evtfile: str | Path, ra: float,
                  dec: float, rollangle: float, exposure_s: float, seed: int, tstart: float, mjdref: float,
                  background: bool = True, chatter: int = CHATTER) -> list[str]:
    """Argument list of one SIXTE run (runsixt 2.7 or sixtesim 3; key=value as in their .par files).

    Both write the cleaned event list to ``EvtFile`` (runsixt's ``EventList`` is an obsolete name it
    ignores); further catalogues go to ``Simput2`` ...; ``chatter`` is always given (parameter files
    remember it); the percentage progress goes to ``progress.txt`` in the working folder, not the log. SIXTE's ``Seed`` is a C int (-1 means "from the clock"), so seeds are taken modulo 2^31."""
    if not 1 <= len(simputs) <= 6:
        raise ValueError("SIXTE takes one to six SIMPUT catalogues")
    cats = [f"{'Simput' if i == 0 else f'Simput{i + 1}'}={path}" for i, path in enumerate(simputs)]
    return [str(executable), f"XMLFile={xml}", *cats, f"EvtFile={evtfile}",
            f"RA={_fmt(ra)}", f"Dec={_fmt(dec)}", f"rollangle={_fmt(rollangle % 360.0)}", f"Exposure={_fmt(exposure_s)}",
            f"Seed={int(seed) % 2**31}", f"MJDREF={_fmt(mjdref)}", f"TSTART={_fmt(tstart)}",
            f"Background={'yes' if background else 'no'}", f"chatter={int(chatter)}", "ProgressFile=progress.txt",
            "clobber=yes"]


def run_instrument_xml(xml: Path, out: Path, particle_scale: float = 1.0, derive_2x: bool = False) -> Path:
    """The XML of one run, written to ``out``: ``xml`` with every file name relative to ``out``'s folder (SIXTE
    prepends the XML's folder to them), the 2x changes of :func:`derive_2x_instrument` if ``derive_2x``, and
    each PHA background scaled by the field's ``particle_scale`` (a scaled copy beside ``out``; removed at 0)."""
    xml, out = Path(xml), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tree = ET.parse(xml, parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    root = tree.getroot()
    _relocate(root, xml.parent, out.parent)
    if derive_2x:
        _to_2x(root, xml, out.parent)
    for parent in list(root.iter()):
        for bkg in [c for c in parent if c.tag == "phabackground"]:
            if particle_scale <= 0:
                parent.remove(bkg)
                continue
            if particle_scale != 1.0:
                src = (out.parent / bkg.get("filename", "")).resolve()
                dst = out.parent / f"{src.stem}_x{particle_scale:.6g}.pha"
                with open_fits(src, "SIXTE PHA background", verify_checksum=False) as hdul:
                    table = next(h for h in hdul if isinstance(h, fits.BinTableHDU))
                    table.data["RATE"] = table.data["RATE"] * particle_scale
                    table.header["HISTORY"] = f"xmmsr: RATE x {particle_scale:.6g} (field particle background)"
                    hdul.writeto(dst, overwrite=True)
                bkg.set("filename", dst.name)
    with atomic_path(out) as tmp:
        tree.write(tmp, encoding="UTF-8", xml_declaration=True)
    return out


def _relocate(root: ET.Element, source_dir: Path, target_dir: Path) -> None:
    """Make every ``filename`` attribute (relative to ``source_dir`` or absolute) relative to ``target_dir``."""
    for el in root.iter():
        name = el.get("filename")
        if name:
            path = Path(name) if Path(name).is_absolute() else (source_dir / name)
            el.set("filename", os.path.relpath(path.resolve(), target_dir.resolve()))


def diffuse_background_components(sky: SkyModel, instrument: PnInstrument, grid_kev: np.ndarray
                                  ) -> list[DiffuseComponent]:
    """The field's diffuse sky background as SIMPUT components (what the built-in simulator draws itself):
    the cosmic X-ray background and the Galactic foreground, uniform over the field-of-view disc, and the
    soft-proton residual (when the field has one): its profile divided by the photon vignetting at 1.25 keV
    and a spectrum proportional to 1/area in 0.5-2 keV, so that after SIXTE's vignetting and effective area
    its counts are flat in energy with the built-in's rate and radial profile."""
    field = FieldBackground.of(sky.meta)
    bkg, g = instrument.background, instrument.geometry
    frame = Pointing.of(sky, instrument)
    pixel = 8.0
    n = int(np.ceil(2 * g.fov_radius_arcmin * 60.0 / pixel)) + 2
    xi_c, eta_c = frame.to_tangent(np.array([g.fov_center_x_arcsec]), np.array([g.fov_center_y_arcsec]))
    ra_c, dec_c = frame.to_sky(xi_c, eta_c)
    wcs = tan_wcs((float(ra_c[0]), float(dec_c[0])), ((n + 1) / 2, (n + 1) / 2), cdelt=(-pixel / 3600.0, pixel / 3600.0))
    offsets = (np.arange(n) - (n - 1) / 2) * pixel
    # tangent-plane and detector position of each image pixel (the image's x runs west, as RA decreases)
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    xi, eta = xi_c[0] - xx, eta_c[0] + yy
    dx, dy = frame.to_detector(xi, eta)
    disc = (np.hypot(xx, yy) <= g.fov_radius_arcmin * 60.0).astype(np.float64)
    area = np.pi * g.fov_radius_arcmin**2
    response = instrument.require_response()
    components = []
    for name, flux, model, par, nh in (("cxb", bkg.cxb_flux_arcmin2 * field.cxb, "powerlaw", bkg.cxb_gamma, bkg.cxb_nh),
                                       ("galactic", bkg.galactic_flux_arcmin2 * field.galactic, "bremss",
                                        bkg.galactic_kt_kev, 0.0)):
        components.append(DiffuseComponent(name, disc, wcs, flux * area, photon_spectrum(model, par, nh, grid_kev)))
    if field.soft_protons > 0:
        theta = offaxis_arcmin(instrument, dx.astype(np.float32), dy.astype(np.float32))
        profile = disc * bkg.soft_proton_profile(theta) / np.maximum(instrument.vignetting(theta, 1.25), 1e-3)
        a = np.interp(grid_kev, response.energy_kev, response.area_cm2)
        inside = (grid_kev >= 0.5) & (grid_kev <= 2.0) & (a > 0)
        spectrum = np.where(inside, 1.0 / np.maximum(a, 1e-30), 0.0)
        # The rate is of counts with PI in the band (the built-in gives every soft proton a PI in it); SIXTE's
        # redistribution moves some out, so the photons are raised by the band probability of a flat spectrum.
        e = np.linspace(0.5, 2.0, 301)
        in_band = float(np.mean(response.pi_fraction(e)))
        mean_inverse_area = float(np.trapezoid(spectrum, grid_kev) / 1.5)
        flux = bkg.soft_proton_rate_arcmin2 * field.soft_protons * mean_inverse_area / in_band
        total = float(np.sum(profile)) * (pixel / 60.0) ** 2 * flux
        components.append(DiffuseComponent("soft_protons", profile, wcs, total, spectrum))
    return components


def _failure_hint(tail: str) -> str:
    """The fix for SIXTE failures whose cause its output makes clear."""
    if "error while loading shared libraries" in tail:
        return ("SIXTE's shared libraries cannot be loaded: source $SIXTE/bin/sixte-install.sh (or the env.sh of your "
                "installation) so that LD_LIBRARY_PATH holds $SIXTE/lib; a copied installation must keep its symbolic "
                "links (libsixt.so.2 -> libsixt.so.2.0.0)")
    match = re.search(r"\(([^()]*/templates/[^()]*\.tpl)\)", tail)
    if match:
        data = Path(match.group(1)).parent.parent
        return (f"SIXTE's data folder {data} (compiled in at installation) is missing: the installation was moved; "
                f"link it back (ln -s <install>/share/sixte {data}) or rebuild SIXTE with its final --prefix")
    return "read the SIXTE log, check the instrument XML, the SIMPUT and the SIXTE installation"


def run_sixte(sky: SkyModel, instrument: PnInstrument, xml: Path, exposure_s: float, seed: int, tstart: float,
              workdir: Path, log: IO[str], background: bool = True, executable: str | None = None,
              derive_2x: bool = False) -> Path | None:
    """Write the SIMPUT catalogues of ``sky`` (its sources; with ``background`` the diffuse sky background),
    run SIXTE in ``workdir`` and return its checked event file; None when there is nothing to simulate
    (a blank field without background: SIXTE refuses a catalogue without sources).

    SIXTE's output (stdout and stderr) goes to ``log``. The event file appears under its final name
    (``workdir/sixte_evt.fits``) only after it has been checked to be a readable FITS file with an
    EVENTS extension; on any failure an :class:`InputError` is raised and no file has that name.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    exe = find_sixte(executable)
    field = FieldBackground.of(sky.meta)
    run_xml = run_instrument_xml(Path(xml), workdir / "instrument.xml", field.particle if background else 0.0,
                                 derive_2x)
    grid = simput_energy_grid(run_xml)
    simputs = []
    catalogues = [("sky.simput", to_simput_hdulist(sky, grid))]
    if background:
        catalogues.append(("background.simput", diffuse_simput_hdulist(diffuse_background_components(
            sky, instrument, grid), grid)))
    for name, hdul in catalogues:
        if simput_source_count(hdul) > 0:
            write_fits_atomic(hdul, workdir / name)
            simputs.append((workdir / name).resolve())
    has_particles = any(el.tag == "phabackground" for el in ET.parse(run_xml).getroot().iter())
    if not simputs and not has_particles:
        log.write("xmmsr: nothing to simulate (no sources, no background): SIXTE not run\n")
        return None
    if not simputs:   # SIXTE needs a catalogue: one source of no measurable flux far outside the field
        empty = to_simput_hdulist(_far_dark_source(sky), grid)
        write_fits_atomic(empty, workdir / "sky.simput")
        simputs.append((workdir / "sky.simput").resolve())
    frame = Pointing.of(sky, instrument)
    g = instrument.geometry
    axis_xi, axis_eta = frame.to_tangent(np.array([g.axis_x_arcsec]), np.array([g.axis_y_arcsec]))
    ra, dec = (float(v[0]) for v in frame.to_sky(axis_xi, axis_eta))
    final = workdir / "sixte_evt.fits"
    partial = workdir / ".sixte_evt.partial.fits"
    final.unlink(missing_ok=True)
    partial.unlink(missing_ok=True)
    cmd = sixte_command(exe, run_xml.resolve(), simputs, partial.resolve(), ra, dec,
                        SIXTE_ROLL_OFFSET_DEG + instrument.roll_deg, exposure_s, seed, tstart, MJDREF_XMM, background)
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    tail: collections.deque[str] = collections.deque(maxlen=20)
    try:
        with subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace", env=sixte_environment(workdir)) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip("\n"))
            code = proc.wait()
        log.flush()
        last = "\n".join("    " + t for t in tail) or "    (no output)"
        if code != 0:
            raise InputError(exe, "SIXTE run", f"exited with status {code}; last lines of its output:\n{last}\n",
                             _failure_hint(last))
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


def _far_dark_source(sky: SkyModel) -> SkyModel:
    """A catalogue SIXTE accepts for a field without sources: one point source of 1e-30 ph cm-2 s-1, 10 degrees
    from the pointing (SIXTE refuses an empty catalogue; this one yields no photon)."""
    points = np.zeros(1, dtype=empty_point_table().dtype)
    points["RA"], points["DEC"] = (sky.ra_pnt + 10.0) % 360.0, float(np.clip(sky.dec_pnt, -75.0, 75.0))
    points["FLUX"], points["GAMMA"], points["NH"] = 1e-30, 2.0, 0.0
    return dataclasses.replace(sky, image=np.zeros_like(sky.image), points=points)


def simput_energy_grid(xml: Path) -> np.ndarray:
    """Energies (keV) of the SIMPUT spectra: 1000 log-spaced points beyond the instrument's ARF on both sides
    (SIXTE warns, once per source and run, about a spectrum narrower than the ARF), at least 0.1-15 keV."""
    root = ET.parse(xml).getroot()
    lo, hi = 0.1, 15.0
    arf = next((el.get("filename") for el in root.iter("arf")), None)
    if arf:
        path = (Path(xml).parent / arf)
        try:
            with fits.open(path, memmap=False) as hdul:
                t = hdul["SPECRESP"].data
                lo, hi = min(lo, float(np.min(t["ENERG_LO"]))), max(hi, float(np.max(t["ENERG_HI"])))
        except (OSError, KeyError) as exc:
            raise InputError(path, "ARF of the instrument XML", f"cannot be read ({exc})",
                             "check the <arf filename> of the instrument XML") from exc
    return np.geomspace(max(0.98 * lo, 1e-3), 1.02 * hi, 1000)   # margins: SIMPUT's bounds are float32


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


def convert_events(sixte_evt: Path | None, sky: SkyModel, instrument: PnInstrument, exposure_s: float, resolution: int,
                   seed: int, tstart: float, background: bool = True) -> EventList:
    """Map a SIXTE event file onto our event-list columns and header (events off our CCDs are dropped).

    Detector positions come from SIXTE's back-projected RA/DEC through our pointing, roll and aim
    point, so DETX/DETY, RAWX/RAWY, CCDNR and FLAG follow our CCD layout exactly as in the built-in
    simulator; PI (eV) and ENERGY (eV) come from SIGNAL (keV) x 1000, PATTERN from TYPE/NPIXELS.
    """
    check_exposure(exposure_s, resolution)
    time = ra = dec = energy_ev = np.zeros(0)
    pattern = np.zeros(0, dtype=np.int16)
    if sixte_evt is not None:
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
    dx, dy = (np.asarray(a, dtype=np.float32) for a in frame.to_detector(xi, eta))
    on = instrument.geometry.on_chip(dx, dy)
    # CCDs live for part of the exposure (CCDLIVE of the field): their events thinned, as in the built-in
    live = ccd_live(sky, instrument)
    if np.any(live < 1.0):
        ccd = instrument.geometry.locate(dx, dy, resolution)[0].astype(np.int64)
        rng = np.random.default_rng([int(seed) % 2**63, 0x5158])
        on &= rng.random(dx.size) < live[np.clip(ccd - 1, 0, live.size - 1)]
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
    for n, fraction in enumerate(live, start=1):
        header[f"ONTIME{n:02d}"] = (float(exposure_s * fraction), f"[s] on time of CCD {n}")
    return EventList(columns, header)


def simulate_events_sixte(sky: SkyModel, instrument: PnInstrument, exposure_s: float, resolution: int, seed: int,
                          tstart: float, xml: Path, workdir: Path, log: IO[str], background: bool = True,
                          executable: str | None = None, derive_2x: bool = False) -> EventList:
    """Simulate the event list of ``sky`` with SIXTE and the instrument ``xml`` (at ``resolution``; with
    ``derive_2x`` a 1x XML made 2x by :func:`derive_2x_instrument`)."""
    check_exposure(exposure_s, resolution)
    evt = run_sixte(sky, instrument, Path(xml), exposure_s, seed, tstart, Path(workdir), log, background, executable,
                    derive_2x)
    events = convert_events(evt, sky, instrument, exposure_s, resolution, seed, tstart, background)
    events.header["SIXTEVER"] = (sixte_version(find_sixte(executable)), "SIXTE version")
    return events
