"""A SIXTE EPIC-pn instrument written from xmmsr's own instrument model.

No public XMM-Newton instrument package for SIXTE comes with SIXTE itself. :func:`write_sixte_instrument`
writes one from the same calibrated model the built-in simulator uses, so that where the two backends
differ it is SIXTE's detector physics (charge splitting, pattern recognition, frame readout), not two
instrument models:

* ``pn_{R}x.xml``: the instrument (file names relative to the XML, which SIXTE resolves against
  the XML's folder): one detector covering the CCD array (gaps are removed when the events are
  mapped back onto our CCDs), pixels of ``pixel_arcsec / R``, the optical axis at its place in the
  array, full-frame timing (the frame time, and a row transfer time that gives the mode's
  out-of-time fraction), a Gaussian charge cloud of ``split_sigma_um / R``;
* ``arf.fits``: the effective area (OGIP SPECRESP), restricted to the true energies the PI
  redistribution covers (photons outside it never reach the 0.5-2 keV band in either backend);
* ``rmf.fits``: the PI redistribution as an OGIP response matrix on 5 eV channels: the in-band
  (PI 500-2000 eV) quantiles of the model spread over the channels, the out-of-band probability
  put outside the band (below it for photons under 2 keV, at the photon energy above);
* ``psf_{R}x.fits``: the PSF model integrated over ``pixel_arcsec / 4`` pixels out to its truncation
  radius, one image per energy and off-axis angle (``ENERGY`` eV, ``THETA`` arcmin, ``PHI`` 0:
  the radial direction along +x, which SIXTE rotates to each photon's azimuth), its core narrowed by
  the spread SIXTE adds when it places events at random within their pixel;
* ``vignetting.fits``: the vignetting table (SIXTE's ``ENERGY``/``THETA``/``PHI``/``VIGNET``);
* ``particle.pha``: the particle background at field scale 1 (counts s-1 m-2 per channel, flat in
  PI 0.5-2 keV as in the built-in simulator; the backend rescales it per field).

With ``calib`` (a folder such as the real EPIC-pn calibration files) the real ARF (``*.arf``) and
response matrix (``*.rmf``, ``*.rmf.gz``) are used instead of the model's, copied next to the XML.
The cosmic background, the Galactic foreground and the soft-proton residual are not part of the
instrument: they are sky, written per field as extra SIMPUT catalogues by the backend.
"""

from __future__ import annotations

import gzip
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy import ndimage

from .. import __version__
from ..errors import InputError
from ..io import atomic_directory, write_fits_atomic
from .model import PnInstrument
from .psf import EllbetaPsf, PsfModel

FOCAL_LENGTH_M = 7.5
M_PER_ARCSEC = FOCAL_LENGTH_M * float(np.tan(np.deg2rad(1.0 / 3600.0)))
CHANNEL_KEV = 0.005
N_CHANNELS = 4096
PSF_ENERGIES_KEV = (0.5, 1.0, 1.5, 2.0)
PSF_THETAS_ARCMIN = (0.0, 2.0, 4.0, 6.0, 8.0, 9.5, 11.25, 12.5, 13.75, 15.0, 17.0)
PSF_SUBPIXELS = 4                 # PSF image pixels per 1x detector pixel
SPLIT_SIGMA_UM = 5.7              # Gaussian charge-cloud sigma (1x): SIXTE 2.7 then gives 72 % singles in 0.5-2 keV
SPLIT_THRESHOLD_KEV = 0.02        # split (and readout) threshold: ~4 sigma of the pn read noise
EVENT_THRESHOLD_KEV = 0.1
BAND_KEV = (0.5, 2.0)
XML_NAME = "pn_{}x.xml"


def xml_name(resolution: int) -> str:
    """File name of the instrument XML at resolution multiplier ``resolution``."""
    return XML_NAME.format(resolution)


def pixel_m(instrument: PnInstrument, resolution: int) -> float:
    """Detector pixel size (m) at ``resolution``."""
    return instrument.geometry.pixel_arcsec / resolution * M_PER_ARCSEC


def detector_layout(instrument: PnInstrument, resolution: int) -> dict[str, float]:
    """SIXTE's pixel grid for the CCD array: widths (pixels), reference pixel (the optical axis, 1-based,
    SIXTE's convention: pixel i covers [i - 0.5, i + 0.5)) and pixel size (m). SIXTE's x runs east where
    DETX runs west (see ``sixte.SIXTE_ROLL_OFFSET_DEG``), so its columns count from the array's west edge."""
    g = instrument.geometry
    p = g.pixel_arcsec / resolution
    west_edge = g.array_x0 + g.array_width   # DETX grows to the west
    return {"xwidth": int(round(g.array_width / p)), "ywidth": int(round(g.array_height / p)),
            "xrpix": 0.5 + (west_edge - g.axis_x_arcsec) / p, "yrpix": 0.5 + (g.axis_y_arcsec - g.array_y0) / p,
            "delt": pixel_m(instrument, resolution)}


def _fmt(x: float) -> str:
    return f"{float(x):.9g}"


# --------------------------------------------------------------------------------------------------
# Files


def _energy_bins(instrument: PnInstrument) -> tuple[np.ndarray, np.ndarray]:
    """True-energy bins (keV) of the ARF and RMF: the redistribution table's grid as bin centres."""
    centres = np.asarray(instrument.require_response().redistribution.energy_kev, dtype=float)
    step = float(np.median(np.diff(centres)))
    return centres - step / 2, centres + step / 2


def arf_hdulist(instrument: PnInstrument) -> fits.HDUList:
    """The model's effective area as an OGIP ARF on the redistribution's energy grid."""
    response = instrument.require_response()
    lo, hi = _energy_bins(instrument)
    area = np.interp(0.5 * (lo + hi), response.energy_kev, response.area_cm2)
    hdu = fits.BinTableHDU.from_columns([
        fits.Column("ENERG_LO", "E", "keV", array=lo), fits.Column("ENERG_HI", "E", "keV", array=hi),
        fits.Column("SPECRESP", "E", "cm**2", array=area)], name="SPECRESP")
    _ogip(hdu.header, "RESPONSE", "SPECRESP", "1.1.0")
    hdu.header["EFFAREA"] = 1.0
    return fits.HDUList([fits.PrimaryHDU(), hdu])


def rmf_matrix(instrument: PnInstrument) -> np.ndarray:
    """Response matrix (energy bins x channels of 5 eV) of the model's PI redistribution."""
    red = instrument.require_response().redistribution
    energy = np.asarray(red.energy_kev, dtype=float)
    quantiles = np.asarray(red.pi_quantiles, dtype=float) / 1000.0       # keV, (n_e, K + 1)
    k = quantiles.shape[1] - 1
    edges = np.arange(N_CHANNELS + 1) * CHANNEL_KEV
    matrix = np.zeros((energy.size, N_CHANNELS), dtype=np.float32)
    for i, (e, band, q) in enumerate(zip(energy, red.band_fraction, quantiles)):
        # in band: probability band / K spread uniformly between consecutive quantiles
        cdf = np.interp(edges, q, np.linspace(0.0, 1.0, k + 1), left=0.0, right=1.0)
        matrix[i] = band * np.diff(cdf)
        outside = e if (e < BAND_KEV[0] or e > BAND_KEV[1]) else 0.3   # below the band (redistribution tail)
        matrix[i, min(int(outside / CHANNEL_KEV), N_CHANNELS - 1)] += 1.0 - band
    return matrix


def rmf_hdulist(instrument: PnInstrument) -> fits.HDUList:
    """The model's PI redistribution as an OGIP RMF (MATRIX and EBOUNDS, channels from 0)."""
    lo, hi = _energy_bins(instrument)
    matrix = rmf_matrix(instrument)
    first = np.array([int(np.flatnonzero(row)[0]) for row in matrix])
    last = np.array([int(np.flatnonzero(row)[-1]) for row in matrix])
    rows = [row[a:b + 1] for row, a, b in zip(matrix, first, last)]
    mat = fits.BinTableHDU.from_columns([
        fits.Column("ENERG_LO", "E", "keV", array=lo), fits.Column("ENERG_HI", "E", "keV", array=hi),
        fits.Column("N_GRP", "I", array=np.ones(lo.size, dtype=np.int16)),
        fits.Column("F_CHAN", "J", array=first), fits.Column("N_CHAN", "J", array=last - first + 1),
        fits.Column("MATRIX", "PE()", array=np.array(rows, dtype=object))], name="MATRIX")
    _ogip(mat.header, "RESPONSE", "RSP_MATRIX", "1.3.0")
    mat.header["HDUCLAS3"] = "REDIST"
    mat.header["DETCHANS"] = N_CHANNELS
    mat.header["CHANTYPE"] = "PI"
    mat.header["LO_THRES"] = 1e-7
    mat.header["NUMGRP"] = int(lo.size)
    mat.header["NUMELT"] = int(sum(r.size for r in rows))
    mat.header["EFFAREA"] = 1.0
    mat.header["TLMIN4"] = 0
    mat.header["TLMAX4"] = N_CHANNELS - 1
    ch = np.arange(N_CHANNELS)
    eb = fits.BinTableHDU.from_columns([
        fits.Column("CHANNEL", "J", array=ch), fits.Column("E_MIN", "E", "keV", array=ch * CHANNEL_KEV),
        fits.Column("E_MAX", "E", "keV", array=(ch + 1) * CHANNEL_KEV)], name="EBOUNDS")
    _ogip(eb.header, "RESPONSE", "EBOUNDS", "1.2.0")
    eb.header["DETCHANS"] = N_CHANNELS
    eb.header["CHANTYPE"] = "PI"
    return fits.HDUList([fits.PrimaryHDU(), mat, eb])


@dataclass(frozen=True)
class CoreScaledPsf(PsfModel):
    """A PSF model with its core radius times ``scale`` (elongation, slope and truncation unchanged)."""

    base: PsfModel = field(default_factory=EllbetaPsf)
    scale: float = 1.0

    def parameters(self, theta_arcmin, energy_kev, resolution):
        rc, alpha, q = self.base.parameters(theta_arcmin, energy_kev, resolution)
        return rc * self.scale, alpha, q


def pixel_compensated_core(psf: PsfModel, pixel_arcsec: float, theta_arcmin: float, energy_kev: float,
                           resolution: int, radius_arcsec: float = 8.0) -> float:
    """The core-radius factor s for which the PSF with s r_c, spread uniformly over detector pixels of
    ``pixel_arcsec`` as SIXTE places events (random within the event's pixel), has the model's encircled
    energy within ``radius_arcsec``: the model is the PSF of real pn images, which already holds that spread."""
    fine = pixel_arcsec / 8.0
    reach = 6.0 * radius_arcsec

    def ee(kernel: np.ndarray) -> float:
        c = (kernel.shape[0] - 1) / 2
        yy, xx = (np.mgrid[: kernel.shape[0], : kernel.shape[1]] - c) * fine
        return float(kernel[np.hypot(xx, yy) <= radius_arcsec].sum() / kernel.sum())

    target = ee(psf.kernel(fine, theta_arcmin, 0.0, energy_kev, resolution, r_max_arcsec=reach))
    lo, hi = 0.5, 1.0
    for _ in range(12):      # s to 1e-4
        mid = 0.5 * (lo + hi)
        k = CoreScaledPsf(psf.max_radius_arcsec, psf, mid).kernel(fine, theta_arcmin, 0.0, energy_kev, resolution,
                                                                   r_max_arcsec=reach)
        spread = ndimage.uniform_filter(np.asarray(k, dtype=np.float64), size=8, mode="constant")
        lo, hi = (mid, hi) if ee(spread) > target else (lo, mid)
    return 0.5 * (lo + hi)


def psf_hdulist(instrument: PnInstrument, resolution: int) -> fits.HDUList:
    """The PSF model as SIXTE PSF images: one per energy and off-axis angle, radial direction along +x
    (SIXTE reads every image HDU, the primary one included, so the first image is the primary HDU).

    SIXTE places each event at a random point of its pixel; the model already holds that spread (it is the
    PSF of real pn images, whose event positions SAS randomises within the pixel), so each image's core
    radius is shrunk (:func:`pixel_compensated_core`) to keep the model's encircled energy at 8"."""
    pixel = instrument.geometry.pixel_arcsec / PSF_SUBPIXELS
    detector_pixel = instrument.geometry.pixel_arcsec / resolution
    hdus: list[fits.hdu.base.ExtensionHDU | fits.PrimaryHDU] = []
    # the factor hardly depends on energy (0.5-2 keV: within 0.001): one per off-axis angle, at the band's middle
    scales = {theta: pixel_compensated_core(instrument.psf, detector_pixel, theta, 1.25, resolution)
              for theta in PSF_THETAS_ARCMIN}
    for energy in PSF_ENERGIES_KEV:
        for theta in PSF_THETAS_ARCMIN:
            scale = scales[theta]
            psf = CoreScaledPsf(instrument.psf.max_radius_arcsec, instrument.psf, scale)
            k = psf.kernel(pixel, theta, 0.0, energy, resolution).astype(np.float32)
            hdu = fits.ImageHDU(k) if hdus else fits.PrimaryHDU(k)
            h = hdu.header
            c = (k.shape[0] + 1) / 2
            for key, value in (("CRPIX1", c), ("CRPIX2", c), ("CRVAL1", 0.0), ("CRVAL2", 0.0), ("CDELT1", pixel),
                               ("CDELT2", pixel), ("CUNIT1", "arcsec"), ("CUNIT2", "arcsec")):
                h[key] = value
            h["ENERGY"] = (energy * 1000.0, "[eV] photon energy")
            h["THETA"] = (theta, "[arcmin] off-axis angle")
            h["PHI"] = (0.0, "[deg] azimuth: the radial direction is +x")
            h["RCSCALE"] = (round(scale, 5), "core radius / model core radius")
            _ogip(h, "RESPONSE", "PSF", "1.0.0")
            h["HDUCLAS2"] = "PSF"
            hdus.append(hdu)
    return fits.HDUList(hdus)


def vignetting_hdulist(instrument: PnInstrument) -> fits.HDUList:
    """The vignetting table in SIXTE's layout: one row, VIGNET with TDIM (energies, angles, 1 azimuth)."""
    v = instrument.vignetting
    energy = np.asarray(v.energy_kev, dtype=np.float32)
    theta_arcmin = np.asarray(v.theta_arcmin, dtype=float)
    vignet = np.asarray(v.factors, dtype=np.float32)                   # (n_e, n_theta)
    cube = vignet.T[None, :, :]                                         # C order (phi, theta, energy)
    ne, nt = energy.size, theta_arcmin.size
    hdu = fits.BinTableHDU.from_columns([
        fits.Column("ENERGY", f"{ne}E", "keV", array=energy[None, :]),
        fits.Column("THETA", f"{nt}E", "deg", array=(theta_arcmin / 60.0).astype(np.float32)[None, :]),
        fits.Column("PHI", "1E", "deg", array=np.zeros((1, 1), np.float32)),
        fits.Column("VIGNET", f"{ne * nt}E", dim=f"({ne},{nt},1)", array=cube.reshape(1, -1))], name="VIGNET")
    _ogip(hdu.header, "RESPONSE", "VIGNET", "1.0.0")
    return fits.HDUList([fits.PrimaryHDU(), hdu])


def particle_rate_m2(instrument: PnInstrument, resolution: int) -> float:
    """Particle background rate (counts s-1 m-2 of detector) to give SIXTE for the model's rate at field scale 1
    (all patterns).

    SIXTE 2.7 inserts PHA background per ``<wait>`` of the readout, but loses the draws of the row-transfer
    waits (measured: 27217 events in 20 ks where 29508 were due, 29333 with the transfers removed from the
    readout), i.e. the background of the transfer time, the out-of-time fraction of the frame: the rate
    given to it is raised by that fraction."""
    return (instrument.background.particle_rate_arcmin2 / 3600.0 / M_PER_ARCSEC**2
            / (1.0 - instrument.out_of_time_fraction))


def particle_hdulist(instrument: PnInstrument, resolution: int, edges_kev: np.ndarray, scale: float = 1.0
                     ) -> fits.HDUList:
    """The particle background as a SIXTE PHA background: ``RATE`` (counts s-1 m-2 per channel) flat over the
    channels whose energy range lies in 0.5-2 keV, for the channels of ``edges_kev`` (the RMF's EBOUNDS)."""
    centre = 0.5 * (edges_kev[:-1] + edges_kev[1:])
    inside = (centre >= BAND_KEV[0]) & (centre < BAND_KEV[1])
    rate = np.where(inside, particle_rate_m2(instrument, resolution) * scale / max(int(inside.sum()), 1), 0.0)
    hdu = fits.BinTableHDU.from_columns([
        fits.Column("CHANNEL", "J", array=np.arange(centre.size)),
        fits.Column("RATE", "E", "counts/s/m**2", array=rate.astype(np.float32))], name="SPECTRUM")
    _ogip(hdu.header, "SPECTRUM", "TOTAL", "1.2.1")
    hdu.header["DETCHANS"] = centre.size
    hdu.header["BKGSCALE"] = (float(scale), "field scale of the particle background")
    return fits.HDUList([fits.PrimaryHDU(), hdu])


def read_ebounds(rmf: Path) -> np.ndarray:
    """Channel edges (keV) of an RMF's EBOUNDS extension, channel order."""
    try:
        with fits.open(rmf, memmap=False) as hdul:
            eb = hdul["EBOUNDS"].data
            order = np.argsort(eb["CHANNEL"])
            lo, hi = np.asarray(eb["E_MIN"], float)[order], np.asarray(eb["E_MAX"], float)[order]
    except (OSError, KeyError) as exc:
        raise InputError(rmf, "EBOUNDS extension", f"cannot be read ({exc})", "give an OGIP response matrix") from exc
    return np.append(lo, hi[-1])


def _ogip(header: fits.Header, hduclass1: str, hduclass2: str, version: str) -> None:
    header["HDUCLASS"] = "OGIP"
    header["HDUCLAS1"] = hduclass1
    header["HDUCLAS2"] = hduclass2
    header["HDUVERS"] = version
    header["TELESCOP"] = "XMM"
    header["INSTRUME"] = "EPN"
    header["DETNAM"] = "PN"
    header["FILTER"] = "Thin1"
    header["CREATOR"] = f"xmmsr {__version__}"


# --------------------------------------------------------------------------------------------------
# XML


def instrument_xml_tree(instrument: PnInstrument, resolution: int, files: dict[str, str],
                        split_sigma_um: float = SPLIT_SIGMA_UM) -> ET.ElementTree:
    """The SIXTE instrument XML (``files``: arf, rmf, psf, vignetting, background names relative to it)."""
    lay = detector_layout(instrument, resolution)
    g = instrument.geometry
    corners = [(x, y) for x in (g.array_x0, g.array_x0 + g.array_width) for y in (g.array_y0, g.array_y0 + g.array_height)]
    reach_deg = max(np.hypot(x - g.axis_x_arcsec, y - g.axis_y_arcsec) for x, y in corners) / 3600.0
    frame = instrument.frame_time_s
    transfer = instrument.out_of_time_fraction * frame       # the readout: photons arriving then land on shifted rows
    root = ET.Element("instrument", telescop="XMM", instrume="EPN")
    root.append(ET.Comment(f" EPIC-pn full frame at {resolution}x, written by xmmsr {__version__} from its instrument "
                           "model (xmmsr sixte-instrument) "))
    tel = ET.SubElement(root, "telescope")
    ET.SubElement(tel, "focallength", value=_fmt(FOCAL_LENGTH_M))
    ET.SubElement(tel, "fov", diameter=_fmt(2.0 * reach_deg * 1.02))
    ET.SubElement(tel, "arf", filename=files["arf"])
    ET.SubElement(tel, "psf", filename=files["psf"])
    ET.SubElement(tel, "vignetting", filename=files["vignetting"])
    det = ET.SubElement(root, "detector", type="ccd")
    ET.SubElement(det, "dimensions", xwidth=str(lay["xwidth"]), ywidth=str(lay["ywidth"]))
    ET.SubElement(det, "wcs", xrpix=_fmt(lay["xrpix"]), yrpix=_fmt(lay["yrpix"]), xrval="0", yrval="0",
                  xdelt=_fmt(lay["delt"]), ydelt=_fmt(lay["delt"]), rota="0")
    ET.SubElement(det, "cte", value="1")
    ET.SubElement(det, "rmf", filename=files["rmf"])
    if files.get("background"):
        ET.SubElement(det, "phabackground", filename=files["background"])
    ET.SubElement(det, "split", type="gauss", par1=_fmt(split_sigma_um * 1e-6 / resolution))
    ET.SubElement(det, "threshold_readout_lo_keV", value=_fmt(SPLIT_THRESHOLD_KEV))
    ET.SubElement(det, "threshold_event_lo_keV", value=_fmt(EVENT_THRESHOLD_KEV))
    ET.SubElement(det, "threshold_split_lo_keV", value=_fmt(SPLIT_THRESHOLD_KEV))
    ET.SubElement(det, "threshold_pattern_up_keV", value="15")
    readout = ET.SubElement(det, "readout", mode="time")
    ET.SubElement(readout, "wait", time=_fmt(frame - transfer))
    loop = ET.SubElement(readout, "loop", start="0", end=str(lay["ywidth"] - 1), increment="1", variable="$i")
    ET.SubElement(loop, "readoutline", lineindex="0", readoutindex="$i")
    ET.SubElement(loop, "lineshift")
    ET.SubElement(loop, "wait", time=_fmt(transfer / lay["ywidth"]))
    ET.SubElement(readout, "newframe")
    ET.indent(root)
    return ET.ElementTree(root)


def write_sixte_instrument(instrument: PnInstrument, resolution: int, output: str | Path,
                           calib: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write the SIXTE instrument folder ``output`` (see the module docstring) and return its XML.

    Refuses an existing non-empty ``output`` unless ``overwrite``; the folder appears complete or not at all."""
    if resolution not in (1, 2):
        raise InputError(None, "resolution", f"{resolution} is not 1 or 2", "give --resolution 1 or 2")
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise InputError(out, "output folder", "exists and is not empty", "choose a new folder or pass --overwrite")
    calib_files = _calibration_files(Path(calib)) if calib else {}
    with atomic_directory(out) as tmp:
        files = {"arf": "arf.fits", "rmf": "rmf.fits", "psf": f"psf_{resolution}x.fits",
                 "vignetting": "vignetting.fits", "background": "particle.pha"}
        if "arf" in calib_files:
            files["arf"] = calib_files["arf"].name
            shutil.copyfile(calib_files["arf"], tmp / files["arf"])
        else:
            write_fits_atomic(arf_hdulist(instrument), tmp / files["arf"])
        if "rmf" in calib_files:
            files["rmf"] = calib_files["rmf"].name.removesuffix(".gz")
            opener = gzip.open if calib_files["rmf"].suffix == ".gz" else open
            with opener(calib_files["rmf"], "rb") as src, open(tmp / files["rmf"], "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            write_fits_atomic(rmf_hdulist(instrument), tmp / files["rmf"])
        write_fits_atomic(psf_hdulist(instrument, resolution), tmp / files["psf"])
        write_fits_atomic(vignetting_hdulist(instrument), tmp / files["vignetting"])
        write_fits_atomic(particle_hdulist(instrument, resolution, read_ebounds(tmp / files["rmf"])),
                          tmp / files["background"])
        tree = instrument_xml_tree(instrument, resolution, files)
        tree.write(tmp / xml_name(resolution), encoding="UTF-8", xml_declaration=True)
    return out / xml_name(resolution)


def _calibration_files(calib: Path) -> dict[str, Path]:
    """The ARF and RMF in a calibration folder (``*.arf``; ``*.rmf`` or ``*.rmf.gz``)."""
    if not calib.is_dir():
        raise InputError(calib, "--calib", "is not a folder", "give the folder that holds the pn ARF and RMF")
    found = {"arf": sorted(calib.glob("*.arf")), "rmf": sorted(calib.glob("*.rmf")) + sorted(calib.glob("*.rmf.gz"))}
    missing = [kind for kind, paths in found.items() if not paths]
    if missing:
        raise InputError(calib, f"{' and '.join(missing).upper()} file", "not found in the calibration folder",
                         "put an OGIP ARF (*.arf) and response matrix (*.rmf or *.rmf.gz) there, or leave out --calib")
    return {kind: paths[0] for kind, paths in found.items()}
