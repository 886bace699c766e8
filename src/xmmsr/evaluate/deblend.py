"""AGN de-blending: how close two point sources may lie and still be found as two sources, by the SR
model, by Richardson-Lucy, in the input and in the noise-free 2x truth.

Pairs of point sources (a primary of ``counts`` input counts at the aim point, where targets sit, and
a secondary ``ratio`` times fainter, east of it at a separation in units of the 1x PSF FWHM). Their
expected images (the built-in
simulator's noise-free images, background included) are drawn ``trials`` times as Poisson input
images at the input exposure; each method's prediction is searched for point sources
(:func:`xmmsr.detection.detect_point_sources` with a peak box of half a FWHM, so that the finder
itself does not merge a pair that the image separates, and without the local level of an annulus:
the pair lies on the known background alone, and at these separations one source sits in the other's
3-5 FWHM annulus, whose mean then took the fainter one's counts away, so that even the noise-free
2x truth of a 5:1 pair was "unresolved" at 2 FWHM while resolved at 1.5 and 3). A pair is
*resolved* when two distinct detections lie within half the separation of the two true positions.
At separation 0 the pair is a lone source of the pair's summed counts, and "resolved" means found as
two sources within one 1x FWHM of it: a false pair, the price a method pays for splitting close ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..instrument.events import Pointing
from ..instrument.model import PnInstrument
from ..instrument.simulator import expected_background, expected_image
from ..learn.checkpoint import TrainedModel
from ..learn.predict import predict_counts
from ..sky.model import POINT_COLUMNS, SkyModel, make_wcs
from .. import detection
from . import baselines

METHODS = ("input", "richardson_lucy", "model", "truth")
CUTOUT_HALF_PX = 16       # 1x pixels: each pair is scored in a 32 x 32 (1x) / 64 x 64 (2x) cutout
PEAK_BOX_FWHM = 0.5       # local-maximum box of the finder, in PSF FWHM (the default 1 merges close pairs)
REFERENCE_FLUX = 1.0e-3   # photon flux (ph cm-2 s-1) of the unit-flux images, rescaled to counts
PHOTON_INDEX, NH_CM2 = 1.9, 3.0e20


@dataclass(frozen=True)
class PairImages:
    """One separation: the expected images of the primaries and the secondaries (unit flux), the
    background, and each pair's true positions, on the 1x and 2x image grids."""

    primary: dict[int, np.ndarray]       # resolution -> expected counts of the primary alone, per second
    secondary: dict[int, np.ndarray]
    background: dict[int, np.ndarray]    # resolution -> expected background counts per second
    positions: dict[int, np.ndarray]     # resolution -> (2, 2) pixel positions (x, y) of primary, secondary


def _sky(instrument: PnInstrument, offsets_arcsec: np.ndarray) -> SkyModel:
    """An empty sky with point sources at the given (east, north) offsets from the pointing."""
    ra0, dec0 = 150.0, 2.0
    table = np.zeros(len(offsets_arcsec), dtype=[(c, "f8") for c in POINT_COLUMNS])
    table["RA"] = ra0 + offsets_arcsec[:, 0] / 3600.0 / np.cos(np.deg2rad(dec0))
    table["DEC"] = dec0 + offsets_arcsec[:, 1] / 3600.0
    table["FLUX"], table["GAMMA"], table["NH"] = REFERENCE_FLUX, PHOTON_INDEX, NH_CM2
    return SkyModel(image=np.zeros((8, 8), dtype=np.float32), wcs=make_wcs(ra0, dec0, (8, 8), 2.0), ra_pnt=ra0,
                    dec_pnt=dec0, kind="agn", points=table)


def _pixel_positions(sky: SkyModel, instrument: PnInstrument, resolution: int) -> np.ndarray:
    """(n, 2) 0-based pixel positions (x along columns) of the sky's point sources on an image grid."""
    frame = Pointing.of(sky, instrument)
    dx, dy = frame.to_detector(*frame.tangent(sky.points["RA"], sky.points["DEC"]))
    grid = instrument.geometry.image_grid(resolution)
    return np.column_stack([(dx - grid.x0_arcsec) / grid.pixel_arcsec - 0.5,
                            (dy - grid.y0_arcsec) / grid.pixel_arcsec - 0.5])


def pair_images(instrument: PnInstrument, separations_arcsec: np.ndarray) -> list[PairImages]:
    """The expected images of one pair per separation, at 1x and 2x: the primary at the pointing (the aim
    point, where targets sit) and the secondary ``separation`` east of it (2 + 2n simulator calls)."""
    offsets = np.column_stack([np.asarray(separations_arcsec, dtype=np.float64), np.zeros(len(separations_arcsec))])
    primary_sky = _sky(instrument, np.zeros((1, 2)))
    primary = {r: expected_image(primary_sky, instrument, 1.0, r, background=False) for r in (1, 2)}
    primary_pos = {r: _pixel_positions(primary_sky, instrument, r)[0] for r in (1, 2)}
    background = {r: expected_background(instrument, 1.0, r) for r in (1, 2)}
    out = []
    for offset in offsets:
        sky = _sky(instrument, offset[None, :])
        pos = {r: _pixel_positions(sky, instrument, r)[0] for r in (1, 2)}
        cut = {r: _cutout_slices(primary_pos[r], pos[r], r) for r in (1, 2)}
        out.append(PairImages(
            primary={r: primary[r][cut[r]] for r in (1, 2)},
            secondary={r: expected_image(sky, instrument, 1.0, r, background=False)[cut[r]] for r in (1, 2)},
            background={r: background[r][cut[r]] for r in (1, 2)},
            positions={r: np.array([primary_pos[r], pos[r]]) - [cut[r][1].start, cut[r][0].start] for r in (1, 2)}))
    return out


def _cutout_slices(p1: np.ndarray, p2: np.ndarray, resolution: int) -> tuple[slice, slice]:
    centre = np.round((p1 + p2) / 2.0).astype(int)
    h = CUTOUT_HALF_PX * resolution
    return slice(centre[1] - h, centre[1] + h), slice(centre[0] - h, centre[0] + h)


def resolved(detections: pd.DataFrame, positions: np.ndarray, radius_px: float) -> bool:
    """True when two distinct detections lie within ``radius_px`` of the two true ``positions``."""
    if len(detections) < 2:
        return False
    xy = detections[["x", "y"]].to_numpy()
    near = [np.flatnonzero(np.hypot(*(xy - p).T) <= radius_px) for p in positions]
    return any(a != b for a in near[0] for b in near[1])


def deblending(model: TrainedModel, instrument: PnInstrument, exposure_in_s: float, exposure_target_s: float,
               counts: float, separations_fwhm: list[float], ratios: list[float], trials: int, seed: int,
               nsigma: float, rl_iterations: int) -> pd.DataFrame:
    """The fraction of pairs resolved per separation, flux ratio and method (one row each): ``input``
    (the input counts, 1x), ``richardson_lucy`` (deconvolved onto the 2x grid), ``model`` (the SR model)
    and ``truth`` (the noise-free 2x image at the target exposure; one draw). At separation 0: the
    fraction of lone sources (of the pair's summed counts) found as two."""
    if model.upscale != 2:
        raise ValueError(f"de-blending scores an SR model; got a {model.task} model")
    fwhm = {r: detection.psf_fwhm_px(instrument, r) for r in (1, 2)}
    fwhm_arcsec = fwhm[1] * instrument.geometry.image_grid(1).pixel_arcsec
    separations = np.asarray(separations_fwhm, dtype=np.float64) * fwhm_arcsec
    psf_1x_on_2x, psf_2x = baselines.psf_kernel(instrument, 1, grid_resolution=2), baselines.psf_kernel(instrument, 2)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for sep_fwhm, sep_arcsec, pair in zip(separations_fwhm, separations, pair_images(instrument, separations)):
        scale = counts / float(pair.primary[1].sum() * exposure_in_s)
        mask = {r: pair.background[r] > 0 for r in (1, 2)}
        for ratio in ratios:
            rate = {r: scale * (pair.primary[r] + pair.secondary[r] / ratio) + pair.background[r] for r in (1, 2)}
            bkg = {r: pair.background[r] * exposure_target_s for r in (1, 2)}
            found = {m: 0 for m in METHODS}
            for _ in range(trials):
                data = rng.poisson(rate[1] * exposure_in_s).astype(np.float64)
                preds = _predictions(model, data, exposure_in_s, exposure_target_s, mask[1], psf_1x_on_2x, psf_2x,
                                     rl_iterations)
                for name, (r, image) in preds.items():
                    found[name] += _is_resolved(image, mask[r], bkg[r], fwhm[r], nsigma, pair.positions[r],
                                                sep_arcsec, instrument, r)
            truth = _is_resolved(rate[2] * exposure_target_s, mask[2], bkg[2], fwhm[2], nsigma, pair.positions[2],
                                 sep_arcsec, instrument, 2)
            found["truth"] = truth * trials
            for name in METHODS:
                rows.append({"separation_fwhm": float(sep_fwhm), "separation_arcsec": float(sep_arcsec),
                             "flux_ratio": float(ratio), "method": name, "trials": trials,
                             "resolved_fraction": found[name] / trials})
    return pd.DataFrame(rows)


def _predictions(model: TrainedModel, data: np.ndarray, exposure_in_s: float, exposure_target_s: float,
                 footprint: np.ndarray, psf_1x_on_2x: np.ndarray, psf_2x: np.ndarray,
                 rl_iterations: int) -> dict[str, tuple[int, np.ndarray]]:
    """Each method's image of one input draw at the target exposure, with its grid's resolution."""
    return {"input": (1, baselines.scaled_input(data, exposure_in_s, exposure_target_s, 1)),
            "richardson_lucy": (2, baselines.richardson_lucy(data, exposure_in_s, exposure_target_s, 2,
                                                            psf_1x_on_2x, rl_iterations, psf_2x)),
            "model": (2, predict_counts(model, data, exposure_in_s, footprint=footprint).astype(np.float64)
                      * exposure_target_s / model.target_exposure_s)}


def _count_near(detections: pd.DataFrame, position: np.ndarray, radius_px: float) -> int:
    """The detections within ``radius_px`` of ``position``."""
    if detections.empty:
        return 0
    return int(np.count_nonzero(np.hypot(detections["x"] - position[0], detections["y"] - position[1]) <= radius_px))


def _is_resolved(image: np.ndarray, mask: np.ndarray, background: np.ndarray, fwhm_px: float, nsigma: float,
                 positions: np.ndarray, separation_arcsec: float, instrument: PnInstrument, resolution: int) -> bool:
    detections = detection.detect_point_sources(image, mask, background, fwhm_px, nsigma, annulus_fwhm=None,
                                                peak_box_fwhm=PEAK_BOX_FWHM)
    pixel = instrument.geometry.image_grid(resolution).pixel_arcsec
    if separation_arcsec == 0.0:   # a lone source: "resolved" is split into two, a false pair
        fwhm_1x_px = detection.psf_fwhm_px(instrument, 1) * instrument.geometry.image_grid(1).pixel_arcsec / pixel
        return _count_near(detections, positions[0], fwhm_1x_px) >= 2
    return resolved(detections, positions, 0.5 * separation_arcsec / pixel)
