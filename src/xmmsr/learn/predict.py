"""Inference: run a trained generator on pn count images, write FITS results, export to ONNX.

Inputs are 0.5-2 keV count images on the 1x pn grid (4" pixels: ``xmmsr bin`` or SAS evselect with
DETX/DETY or X/Y bins of 80). Outputs are expected counts per output pixel at the model's target
exposure, on the same grid (DN) or on the 2x grid (SR), with the input WCS carried over.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from .. import __version__
from ..errors import InputError
from ..io import atomic_path, gti_extensions, open_fits, write_fits_atomic
from .checkpoint import TrainedModel, load_model
from .gate import SourceGate, default_gate, gate_sources
from .device import auto_device_type, mps_available
from .model import Architecture

if TYPE_CHECKING:
    import onnx

PAD_MULTIPLE = 4
PIXEL_ARCSEC_RANGE = (3.5, 4.7)  # the 1x grid: 4.0" (SAS DETX/DETY bin 80, xmmsr bin); 4.1" pn CCD pixels
EXPOSURE_FIX = "set EXPOSURE (s) in the header, as SAS evselect writes it"
# ONNX ops whose output shape follows the input's; a graph of only these runs at any frame size
_SHAPE_FREE_OPS = frozenset({"Conv", "LeakyRelu", "Relu", "PRelu", "Concat", "Add", "Sub", "Mul", "Div",
                             "DepthToSpace", "Identity", "Constant"})
_COPY_KEYS = ("TELESCOP", "INSTRUME", "OBS_ID", "OBJECT", "FILTER", "SUBMODE", "RA_PNT", "DEC_PNT", "PA_PNT",
              "RA_OBJ", "DEC_OBJ", "DATE-OBS", "DATE-END", "MJD-OBS", "TSTART", "TSTOP", "TIMESYS", "EPOCH",
              "RADECSYS")
# WCS keywords (any alternate letter) and the IRAF physical-coordinate keywords
_WCS_KEY = re.compile(r"^(WCSAXES|WCSNAME|CRPIX\d|CRVAL\d|CDELT\d|CTYPE\d|CUNIT\d|CNAME\d|CRDER\d|CSYER\d|"
                      r"PC\d_\d|CD\d_\d|PV\d_\d+|PS\d_\d+|LONPOLE|LATPOLE|RADESYS|EQUINOX|MJDREF)[A-Z]?$"
                      r"|^(CROTA\d|LTV\d|LTM\d_\d)$")


def receptive_radius(arch: Architecture) -> int:
    """Half-width (1x pixels) of the generator's receptive field.

    Every layer is a 3x3 convolution (radius 1): head, 5 per dense block, trunk_conv, then for DN
    hr_conv and out_conv; for SR the upsampling conv and two convolutions on the 2x grid (1 pixel).
    """
    return 5 * arch.blocks * arch.dense_blocks + 4


def select_device(name: str = "auto") -> torch.device:
    """``auto``: cuda if available, else mps, else cpu; an unavailable device is an :class:`InputError`."""
    try:
        device = torch.device(auto_device_type(name))
    except RuntimeError:
        raise InputError(None, "--device", f"{name!r} is not a device", "use auto, cpu, cuda or mps") from None
    if (device.type == "cuda" and not torch.cuda.is_available()) or (device.type == "mps" and not mps_available()):
        raise InputError(None, "--device", f"{device.type} is not available on this machine",
                         "use --device auto or cpu")
    return device


def _spans(n: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis: (start, stop, keep_start, keep_stop); kept parts cover [0, n) and stay
    ``overlap`` pixels away from every tile edge that is not an image edge."""
    if n <= tile:
        return [(0, n, 0, n)]
    starts = [*range(0, n - tile, tile - 2 * overlap), n - tile]
    return [(s, s + tile, s if s == 0 else s + overlap, n if s + tile == n else s + tile - overlap) for s in starts]


def predict_counts(model: TrainedModel, counts: np.ndarray, exposure_s: float | np.ndarray, tile: int = 512,
                   overlap: int = 32, conserve_flux: bool = True, footprint: np.ndarray | None = None,
                   gate: SourceGate | None = None) -> np.ndarray:
    """Expected counts per output pixel at ``model.target_exposure_s`` for a 1x-grid count image.

    ``footprint``: the 1x pixels with data (exposure on an active detector pixel); counts outside it are
    set to 0 before the network sees them (as in the simulated inputs) and the prediction is 0 there (the
    network, which does not see the mask, would spread counts into chip gaps and beyond the detector). ``gate``: remove the compact sources the input does not support
    (:func:`~xmmsr.learn.gate.gate_sources`) before the flux conservation. With ``conserve_flux`` (the default) the prediction is then scaled so that its total
    equals the input's counts scaled to the target exposure (pixel by pixel with ``exposure_s``): the
    unbiased estimate of the total expected counts, whose Poisson error is 1/sqrt(counts) (1 % for
    10^4 counts). The network redistributes the counts; it does not create or lose them
    (:func:`conserve_total`).

    ``exposure_s``: one exposure, or one per pixel (an exposure map; the model then sees the true count
    rate of every pixel; pixels with under 1 % of the largest exposure use the largest).

    Returns float32 (H, W) for DN, (2H, 2W) for SR, clipped at 0. Images larger than ``tile`` are run
    in overlapping tiles whose centre parts are stitched; this equals the untiled result when
    ``overlap >= receptive_radius(model.architecture)`` (49 for the reference architecture; the
    residual scaling makes the effective field much smaller).
    """
    image = np.asarray(counts)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a non-empty 2-D count image, got shape {image.shape}")
    per_pixel = np.ndim(exposure_s) == 2
    if per_pixel:
        seconds = np.asarray(exposure_s, dtype=np.float64)
        if seconds.shape != image.shape or not np.isfinite(seconds).all() or not seconds.max() > 0:
            raise ValueError(f"a per-pixel exposure needs the image's shape {image.shape} and finite values > 0")
        seconds = np.where(seconds < 0.01 * seconds.max(), seconds.max(), seconds)
    elif not (math.isfinite(exposure_s) and exposure_s > 0):
        raise ValueError(f"exposure must be a positive number of seconds, got {exposure_s}")
    if overlap < 0 or tile <= 2 * overlap:
        raise ValueError(f"need 0 <= 2 * overlap < tile, got tile {tile}, overlap {overlap}")
    if footprint is not None:   # counts outside it (a stray event in a gap) are neither seen nor conserved
        inside = np.asarray(footprint, dtype=bool)
        if inside.shape != image.shape:
            raise ValueError(f"footprint shape {inside.shape} differs from the image's {image.shape}")
        image = np.where(inside, image, 0)
    generator, s = model.generator, model.upscale
    device = next(generator.parameters()).device
    h, w = image.shape
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
    exposure = (torch.from_numpy(seconds.astype(np.float32)).to(device) if per_pixel else float(exposure_s))
    x = model.normalisation.forward(x, exposure, upscale=1)
    x = F.pad(x[None, None], (0, -w % PAD_MULTIPLE, 0, -h % PAD_MULTIPLE))
    ph, pw = x.shape[-2:]
    out = torch.full((ph * s, pw * s), math.nan, dtype=torch.float32)  # NaN shows any pixel no tile wrote
    with torch.no_grad():
        for y0, y1, ky0, ky1 in _spans(ph, tile, overlap):
            for x0, x1, kx0, kx1 in _spans(pw, tile, overlap):
                y = generator(x[..., y0:y1, x0:x1])[0, 0]
                out[s * ky0:s * ky1, s * kx0:s * kx1] = \
                    y[s * (ky0 - y0):s * (ky1 - y0), s * (kx0 - x0):s * (kx1 - x0)].float().cpu()
    expected = model.normalisation.inverse(out[:h * s, :w * s], float(model.target_exposure_s), upscale=s)
    expected = expected.clamp_(min=0.0).numpy()
    if footprint is not None:
        expected[~np.repeat(np.repeat(inside, s, axis=0), s, axis=1)] = 0.0
    if gate is not None:
        expected = gate_sources(expected, image, seconds if per_pixel else float(exposure_s),
                                float(model.target_exposure_s), s, gate, footprint)[0]
    if conserve_flux:
        conserve_total(expected, image, seconds if per_pixel else float(exposure_s), float(model.target_exposure_s))
    return expected


def conserve_total(expected: np.ndarray, counts: np.ndarray, exposure_s: float | np.ndarray,
                   target_exposure_s: float) -> np.ndarray:
    """Scale ``expected`` in place so that its sum is ``sum(counts * target_exposure_s / exposure_s)``, the
    input's counts at the target exposure (0 for an image without counts); returns it."""
    total = float(np.sum(np.asarray(counts, dtype=np.float64) * (target_exposure_s / np.asarray(exposure_s))))
    current = float(expected.sum(dtype=np.float64))
    expected *= total / current if current > 0 else 0.0
    return expected


def predict_uncertainty(model: TrainedModel, counts: np.ndarray, exposure_s: float | np.ndarray, draws: int = 8,
                        seed: int = 0, prediction: np.ndarray | None = None, **kwargs: Any) -> np.ndarray:
    """Per-pixel 1-sigma uncertainty of :func:`predict_counts` by a parametric bootstrap: ``draws`` input
    images drawn as Poisson counts of the prediction's own expectation at the input exposure (for SR
    the 2x prediction binned 2 x 2: its sharper PSF is not blurred back, so the draws are slightly
    sharper than 1x data), each predicted again; the standard deviation of those predictions (same
    units and grid as the prediction). It is the spread of the estimator under the Poisson noise of the
    input, not its bias: the evaluation reports its coverage against the truth and fits the scale factors
    that correct it (:mod:`xmmsr.learn.calibration`). ``prediction``: the
    prediction on ``counts`` when already computed; ``kwargs`` go to :func:`predict_counts`."""
    if draws < 2:
        raise ValueError(f"draws must be >= 2, got {draws}")
    pred = predict_counts(model, counts, exposure_s, **kwargs) if prediction is None else prediction
    s = model.upscale
    h, w = np.shape(counts)
    at_1x = pred.astype(np.float64).reshape(h, s, w, s).sum(axis=(1, 3))
    mean_input = at_1x * (np.asarray(exposure_s, dtype=np.float64) / float(model.target_exposure_s))
    rng = np.random.default_rng(seed)
    total = np.zeros(pred.shape)
    total_sq = np.zeros(pred.shape)
    for _ in range(int(draws)):
        p = predict_counts(model, rng.poisson(mean_input).astype(np.float64), exposure_s, **kwargs).astype(np.float64)
        total += p
        total_sq += p * p
    variance = (total_sq - total * total / draws) / (draws - 1)
    return np.sqrt(np.clip(variance, 0.0, None)).astype(np.float32)


def _image_hdu(hdul: fits.HDUList, path: Path) -> fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU:
    """The primary HDU if it holds a 2-D image, else the first 2-D image extension."""
    images = [(i, h) for i, h in enumerate(hdul)
              if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and h.data is not None]
    for _, hdu in images:
        if hdu.data.ndim == 2:
            return hdu
    if images:
        i, hdu = images[0]
        raise InputError(path, "NAXIS", f"the image in HDU {i} is {hdu.data.ndim}-D (numpy shape {hdu.data.shape})",
                         "give a single 2-D count image (one energy band, one observation)")
    tables = [h.name or f"HDU {i}" for i, h in enumerate(hdul) if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
    if tables:
        raise InputError(path, "HDU", f"has no image, only tables ({', '.join(tables)})",
                         "bin the event list into a 0.5-2 keV count image first (xmmsr bin, or SAS evselect "
                         "with imageset=...)")
    raise InputError(path, "data", "the file holds no image data", "give a 2-D count image FITS")


def read_count_image(path: str | Path) -> tuple[np.ndarray, fits.Header, float]:
    """Counts (float64), header and EXPOSURE (s) of a 1x-grid pn count image, validated."""
    p = Path(path)
    with open_fits(p, "count image", verify_checksum=False) as hdul:
        hdu = _image_hdu(hdul, p)
        data = np.asarray(hdu.data, dtype=np.float64)
        header = hdu.header.copy()
        primary = hdul[0].header
    if data.size == 0:
        raise InputError(p, "NAXIS1/NAXIS2", f"the image is empty (numpy shape {data.shape})",
                         "give a non-empty count image")
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(p, "pixel values", f"{int(bad.sum())} pixels are NaN or infinite",
                         "set pixels without data (e.g. outside the field of view) to 0 counts")
    if (data < 0).any():
        raise InputError(p, "pixel values", f"{int((data < 0).sum())} pixels are negative (min {data.min():g})",
                         "give a count image (events per pixel), not a background-subtracted image")
    raw = header.get("EXPOSURE", primary.get("EXPOSURE"))
    if raw is None:
        raise InputError(p, "EXPOSURE", "keyword missing from the header", EXPOSURE_FIX)
    try:
        exposure = float(raw)
    except (TypeError, ValueError):
        exposure = math.nan
    if not (math.isfinite(exposure) and exposure > 0):
        raise InputError(p, "EXPOSURE", f"is {raw!r}, not a positive number of seconds", EXPOSURE_FIX)
    _check_pixel_scale(header, p)
    if str(header.get("RESMULT", 1)).strip() != "1":
        raise InputError(p, "RESMULT", f"is {header['RESMULT']!r}: not an image on the 1x pn grid",
                         "give a count image binned from a real or 1x simulated event list")
    return data, header, exposure


def _check_pixel_scale(header: fits.Header, path: Path) -> None:
    """If the header has a celestial WCS, its pixels must be on the 1x grid."""
    if not any(re.fullmatch(r"CTYPE\d|CRVAL\d|CDELT\d|CD\d_\d|PC\d_\d", k) for k in header):
        return  # no primary WCS (alternate ones, e.g. SAS's DETX/DETY 'L', describe no sky)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header, naxis=2)
    except Exception as exc:
        raise InputError(path, "WCS", f"cannot be parsed ({exc.__class__.__name__}: {exc})",
                         "fix or remove the WCS keywords") from exc
    if not wcs.has_celestial:
        return
    scales = proj_plane_pixel_scales(wcs.celestial) * 3600.0
    lo, hi = PIXEL_ARCSEC_RANGE
    if all(lo <= v <= hi for v in scales):
        return
    field = "CD1_1/CD1_2/CD2_1/CD2_2" if any(re.fullmatch(r"CD\d_\d", k) for k in header) else "CDELT1/CDELT2"
    raise InputError(path, field, f'pixel scale {scales[0]:.2f}" x {scales[1]:.2f}" is not the pn 1x grid '
                     f'({lo}-{hi}" per pixel)', 'bin the events at 4" per pixel (SAS evselect ximagebinsize=80 '
                     "yimagebinsize=80, or xmmsr bin on a 1x event list); 2x images are outputs, not inputs")


def output_header(header: fits.Header, model: TrainedModel, input_exposure_s: float, model_name: str = "",
                  input_name: str = "") -> fits.Header:
    """Header of a prediction: the input WCS (scaled to the 2x grid for SR) plus provenance."""
    out = fits.Header()
    for card in header.cards:
        if _WCS_KEY.match(card.keyword) or card.keyword in _COPY_KEYS:
            out.append(card)
    if model.upscale != 1:
        _upscale_wcs(out, model.upscale)
    out["BUNIT"] = ("count", "expected counts per pixel")
    out["EXPOSURE"] = (float(model.target_exposure_s), "[s] exposure the expected counts refer to")
    out["RESMULT"] = (model.upscale, "resolution multiplier (1: pn grid, 2: 2x grid)")
    out["MODTASK"] = (model.task, "dn: de-noising, sr: 2x super-resolution")
    out["MODEL"] = (model_name, "model file")
    out["MODINEXP"] = (float(model.input_exposure_s), "[s] input exposure the model was trained for")
    out["INEXPOS"] = (float(input_exposure_s), "[s] exposure of the input count image")
    out["NORMMETH"] = (model.normalisation.method, "intensity normalisation of the model")
    out["NORMSCAL"] = (model.normalisation.scale, "[count/s/pixel] normalisation scale")
    out["CREATOR"] = (f"xmmsr {__version__}", "software that wrote this file")
    out.add_history(f"xmmsr {__version__} predict: {model.task} model {model_name} applied to {input_name}, "
                    f"{input_exposure_s:g} s -> expected counts at {model.target_exposure_s:g} s")
    return out


def _upscale_wcs(header: fits.Header, s: int) -> None:
    """Rescale WCS and IRAF LTV/LTM keywords in place so output pixel ``q = s*p - (s-1)/2`` (1-based) of
    the finer grid has the world and physical coordinates of input pixel ``p``."""
    shift = (s - 1) / 2
    letters = {m.group(1) for k in header if (m := re.fullmatch(r"CTYPE\d([A-Z]?)", k))}
    for a in letters:  # make implicit defaults explicit so they get rescaled too
        for i in (1, 2):
            header.setdefault(f"CRPIX{i}{a}", 0.0)
            if not any(f"CD{i}_{j}{a}" in header for j in (1, 2)):
                header.setdefault(f"CDELT{i}{a}", 1.0)
    if any(re.fullmatch(r"LTV\d|LTM\d_\d", k) for k in header):
        for i in (1, 2):
            header.setdefault(f"LTV{i}", 0.0)
            header.setdefault(f"LTM{i}_{i}", 1.0)
    for key in list(header):
        if re.fullmatch(r"(CRPIX\d[A-Z]?|LTV\d)", key):
            header[key] = s * float(header[key]) - shift
        elif re.fullmatch(r"(CDELT\d[A-Z]?|CD\d_\d[A-Z]?)", key):
            header[key] = float(header[key]) / s
        elif re.fullmatch(r"LTM\d_\d", key):
            header[key] = s * float(header[key])


SHALLOW_INPUT_TOLERANCE = 0.8   # inputs this much shallower than the shallowest trained on get a warning


def shallowest_trained_input_s(model: TrainedModel) -> float:
    """The shallowest input exposure the model was trained on: the training set's input exposure, times
    ``train.thin_inputs.min_exposure_fraction`` when its training thinned inputs."""
    thin = (model.train_config.get("train") or {}).get("thin_inputs") or {}
    fraction = float(thin.get("min_exposure_fraction", 1.0)) if float(thin.get("fraction", 0.0)) > 0 else 1.0
    return float(model.input_exposure_s) * fraction


def predict_file(model_path: str | Path, input_path: str | Path, output_path: str | Path,
                 device: str = "auto", exposure_map: str | Path | None = None,
                 uncertainty_path: str | Path | None = None, draws: int = 8, seed: int = 0,
                 source_gate: float = 0.0) -> Path:
    """Predict on a FITS count image and write the float32 result atomically; returns ``output_path``.
    ``source_gate``: the input support (Poisson significance) a compact source of the prediction needs
    (:mod:`xmmsr.learn.gate`); 0 (the default) keeps the network's output as it is.
    ``uncertainty_path``: also write the per-pixel 1-sigma uncertainty (:func:`predict_uncertainty`,
    ``draws`` bootstrap draws from ``seed``) with the prediction's header, scaled by the model's
    uncertainty calibration when it has one (released models; header ``UNCCAL``).

    The model sees count rates with the image's real per-pixel exposure: ``exposure_map`` if given, else
    the per-CCD ``ONTIMEnn`` when they differ, else ``EXPOSURE``, times the CCD acceptance of each pixel on
    a DETX/DETY image (chip gaps and dead pixels: none) (:func:`~xmmsr.instrument.exposure.image_exposure`);
    pixels without exposure are outside the footprint (0 in the output)."""
    from ..instrument.exposure import image_exposure

    model_path, input_path, output_path = Path(model_path), Path(input_path), Path(output_path)
    if uncertainty_path is not None:
        uncertainty_path = Path(uncertainty_path)
        if uncertainty_path.resolve() in (output_path.resolve(), input_path.resolve()):
            raise InputError(uncertainty_path, "--uncertainty", "is the same file as the input or the output",
                             "give the uncertainty its own file name, e.g. OUT_sigma.fits")
    dev = select_device(device)
    counts, header, exposure = read_count_image(input_path)
    per_pixel = image_exposure(header, counts.shape, exposure, exposure_map, path=input_path)
    model = load_model(model_path, dev)
    shallowest = shallowest_trained_input_s(model)
    if exposure < SHALLOW_INPUT_TOLERANCE * shallowest:
        warnings.warn(f"{input_path}: EXPOSURE {exposure:g} s is shallower than the {shallowest:g} s inputs the model "
                      "was trained on; it takes more noise peaks of a shallower input for point sources (README, "
                      "'Invented sources on real images'): check them with --source-gate", stacklevel=2)
    elif exposure > 2.0 * model.input_exposure_s:
        warnings.warn(f"{input_path}: EXPOSURE {exposure:g} s differs from the {model.input_exposure_s:g} s the "
                      "model was trained for by more than a factor 2; the prediction may be biased", stacklevel=2)
    seconds = per_pixel.seconds if per_pixel.source != "EXPOSURE" else exposure
    # the pixels with exposure (an exposure map, or CCDs with on-time and area); a uniform EXPOSURE tells none
    footprint = per_pixel.seconds > 0.01 * float(per_pixel.seconds.max()) if per_pixel.source != "EXPOSURE" else None
    gate = default_gate(model.upscale, float(source_gate)) if source_gate > 0 else None
    result = predict_counts(model, counts, seconds, overlap=max(32, receptive_radius(model.architecture)),
                            footprint=footprint, gate=gate)
    if not np.isfinite(result).all():
        raise InputError(model_path, "weights", "the model produced non-finite values on this image",
                         "check the training run; the model has diverged")
    hdr = output_header(header, model, exposure, model_path.name, input_path.name)
    hdr["EXPSRC"] = (per_pixel.source, "input exposure per pixel taken from")
    hdr["GATESIG"] = (float(source_gate), "input support of predicted sources (0: no gate)")
    if uncertainty_path is not None:
        sigma = predict_uncertainty(model, counts, seconds, draws, seed, prediction=result,
                                    overlap=max(32, receptive_radius(model.architecture)), footprint=footprint,
                                    gate=gate)
        calibration = model.uncertainty_calibration
        if calibration is not None:
            sigma = calibration.apply(result, sigma)
        sigma_hdr = hdr.copy()
        sigma_hdr["BUNIT"] = ("count", "1-sigma uncertainty of the expected counts per pixel")
        sigma_hdr["UNCMETH"] = ("parametric bootstrap", "Poisson inputs drawn from the prediction, re-predicted")
        sigma_hdr["UNCDRAWS"] = (int(draws), "bootstrap draws")
        sigma_hdr["UNCSEED"] = (int(seed), "seed of the draws")
        sigma_hdr["UNCCAL"] = (calibration is not None, "scaled to the truth's coverage on simulations")
        if calibration is not None:
            sigma_hdr["UNCLEVEL"] = (calibration.level, "fraction of the truth within +-1 sigma on the fit")
            sigma_hdr["UNCSPLIT"] = (calibration.split, "simulated split the calibration was fitted on")
        sigma_hdr["PREDFILE"] = (output_path.name, "the prediction this uncertainty belongs to")
        write_fits_atomic(fits.HDUList([fits.PrimaryHDU(sigma, header=sigma_hdr)]), uncertainty_path)
    write_fits_atomic(fits.HDUList([fits.PrimaryHDU(result.astype(np.float32), header=hdr),
                                    *gti_extensions(input_path)]), output_path)
    return output_path


def export_onnx(model: TrainedModel, path: str | Path, example_size: int = 64) -> Path:
    """Export the generator to one self-contained ONNX file, written atomically.

    Graph input ``x`` (N, 1, H, W) holds ``normalisation.forward(counts, exposure, upscale=1)``; output
    ``y`` (N, 1, sH, sW) goes to ``normalisation.inverse(y, target_exposure_s, upscale)``; both recorded,
    with the exposures, in the model's metadata. N, H and W are dynamic.

    The graph is traced by the torch.export-based exporter at a fixed ``example_size`` and its
    input/output dimensions are then made symbolic: every op of the generator (convolutions,
    activations, concatenation, depth-to-space) is shape-free, which is checked. This takes a few
    seconds, where exporting with symbolic shapes directly takes several times longer; it remains
    the fallback if an op outside that set ever appears.
    """
    import onnx

    generator = copy.deepcopy(model.generator).cpu().eval()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" notices
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            example = torch.zeros(1, 1, example_size, example_size)
            proto = torch.onnx.export(generator, (example,), dynamo=True, input_names=["x"], output_names=["y"],
                                      verbose=False).model_proto
            if {n.op_type for n in proto.graph.node} <= _SHAPE_FREE_OPS:
                _symbolic_dims(proto, model.upscale)
            else:
                dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
                proto = torch.onnx.export(generator, (example.expand(2, -1, -1, -1).clone(),), dynamo=True,
                                          input_names=["x"], output_names=["y"], dynamic_shapes=(dims,),
                                          verbose=False).model_proto
    finally:
        quiet.setLevel(level)
    _drop_stack_traces(proto)
    onnx.helper.set_model_props(proto, {
        "xmmsr.graph_digest": onnx_graph_digest(proto),
        "xmmsr.software": f"xmmsr {__version__}", "xmmsr.task": model.task, "xmmsr.upscale": str(model.upscale),
        "xmmsr.normalisation": json.dumps(model.normalisation.to_dict()),
        "xmmsr.input_exposure_s": repr(float(model.input_exposure_s)),
        "xmmsr.target_exposure_s": repr(float(model.target_exposure_s)),
        "xmmsr.architecture": json.dumps(model.architecture.to_dict()),
    })
    proto.doc_string = ("xmmsr generator: x = normalisation.forward(counts, exposure, upscale=1); "
                        "expected = normalisation.inverse(y, target_exposure_s, upscale), then scaled so that its "
                        "sum is sum(counts * target_exposure_s / exposure) (flux conservation, as xmmsr predict)")
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
    return Path(path)


def onnx_graph_digest(proto: onnx.ModelProto) -> str:
    """``sha256:`` of the serialised graph (nodes and weights), stored in the model's metadata."""
    return "sha256:" + hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()


def check_onnx(path: str | Path) -> None:
    """Refuse an exported model whose graph does not match the digest in its metadata (a damaged file)."""
    import onnx

    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise InputError(path, "file", f"cannot be read as ONNX ({exc.__class__.__name__}): the file is damaged",
                         "copy the .onnx file again, or export it again from the model.pt") from None
    stored = {p.key: p.value for p in proto.metadata_props}.get("xmmsr.graph_digest")
    if stored is None:
        raise InputError(path, "xmmsr.graph_digest", "is missing from the metadata",
                         "export the model with this xmmsr (rule train, or xmmsr.learn.predict.export_onnx)")
    if stored != onnx_graph_digest(proto):
        raise InputError(path, "xmmsr.graph_digest", "does not match the graph: the file is damaged",
                         "copy the .onnx file again, or export it again from the model.pt")


def _drop_stack_traces(proto: onnx.ModelProto) -> None:
    """Remove the exporter's per-node Python stack traces: they hold the paths of the machine that exported."""
    nodes = [*proto.graph.node, *(node for function in proto.functions for node in function.node)]
    while nodes:
        node = nodes.pop()
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
        for attribute in node.attribute:  # subgraphs (If/Loop bodies)
            nodes.extend(n for graph in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]
                         for n in graph.node)


def _symbolic_dims(proto: onnx.ModelProto, upscale: int) -> None:
    """Make batch, height and width of the graph input/output symbolic; drop the traced inner shapes."""
    suffix = "" if upscale == 1 else f"_x{upscale}"
    for value, (hn, wn) in ((proto.graph.input[0], ("height", "width")),
                            (proto.graph.output[0], (f"height{suffix}", f"width{suffix}"))):
        dims = value.type.tensor_type.shape.dim
        for d, name in ((dims[0], "batch"), (dims[2], hn), (dims[3], wn)):
            d.ClearField("dim_value")
            d.dim_param = name
    del proto.graph.value_info[:]
