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

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats
from scipy.ndimage import gaussian_filter

from ..instrument.events import Pointing
from ..instrument.model import PnInstrument
from ..instrument.psf import PointSourceImages
from ..instrument.simulator import expected_background, expected_image
from ..learn.checkpoint import TrainedModel
from ..learn.predict import predict_counts
from ..sky.model import POINT_COLUMNS, SkyModel, make_wcs
from .. import detection
from . import baselines
from .localisation import NH_CM2, PHOTON_INDEX, point_source_energy_kev

METHODS = ("input", "richardson_lucy", "psf_fit", "model", "truth")
CUTOUT_HALF_PX = 16       # 1x pixels: each pair is scored in a 32 x 32 (1x) / 64 x 64 (2x) cutout
PEAK_BOX_FWHM = 0.5       # local-maximum box of the finder, in PSF FWHM (the default 1 merges close pairs)
REFERENCE_FLUX = 1.0e-3   # photon flux (ph cm-2 s-1) of the unit-flux images, rescaled to counts
SIGMA_PER_FWHM = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


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
               counts: float | Sequence[float], separations_fwhm: list[float], ratios: list[float], trials: int,
               seed: int, nsigma: float, rl_iterations: int) -> pd.DataFrame:
    """The fraction of pairs resolved per separation, primary's input ``counts`` (one level or several),
    flux ratio and method (one row each): ``input`` (the input counts, 1x), ``richardson_lucy``
    (deconvolved onto the 2x grid), ``psf_fit`` (:class:`PsfFit` of the input), ``model`` (the SR model)
    and ``truth`` (the noise-free 2x image at the target exposure; one draw). At separation 0: the
    fraction of lone sources (of the pair's summed counts) found as two."""
    levels = [float(counts)] if np.isscalar(counts) else [float(c) for c in counts]
    if model.upscale != 2:
        raise ValueError(f"de-blending scores an SR model; got a {model.task} model")
    fwhm = {r: detection.psf_fwhm_px(instrument, r) for r in (1, 2)}
    fwhm_arcsec = fwhm[1] * instrument.geometry.image_grid(1).pixel_arcsec
    separations = np.asarray(separations_fwhm, dtype=np.float64) * fwhm_arcsec
    psf_1x_on_2x, psf_2x = baselines.psf_kernel(instrument, 1, grid_resolution=2), baselines.psf_kernel(instrument, 2)
    fit = PsfFit(instrument, nsigma)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for sep_fwhm, sep_arcsec, pair in zip(separations_fwhm, separations, pair_images(instrument, separations)):
        mask = {r: pair.background[r] > 0 for r in (1, 2)}
        bkg = {r: pair.background[r] * exposure_target_s for r in (1, 2)}
        bkg_input = pair.background[1] * exposure_in_s
        for level, ratio in itertools.product(levels, ratios):
            scale = level / float(pair.primary[1].sum() * exposure_in_s)
            rate = {r: scale * (pair.primary[r] + pair.secondary[r] / ratio) + pair.background[r] for r in (1, 2)}
            found = {m: 0 for m in METHODS}
            for _ in range(trials):
                data = rng.poisson(rate[1] * exposure_in_s).astype(np.float64)
                preds = _predictions(model, data, exposure_in_s, exposure_target_s, mask[1], psf_1x_on_2x, psf_2x,
                                     rl_iterations)
                for name, (r, image) in preds.items():
                    found[name] += _is_resolved(image, mask[r], bkg[r], fwhm[r], nsigma, pair.positions[r],
                                                sep_arcsec, instrument, r)
                sources = fit.sources(data, bkg_input, mask[1])
                found["psf_fit"] += _matched(sources, pair.positions[1], sep_arcsec, instrument, 1)
            truth = _is_resolved(rate[2] * exposure_target_s, mask[2], bkg[2], fwhm[2], nsigma, pair.positions[2],
                                 sep_arcsec, instrument, 2)
            found["truth"] = truth * trials
            for name in METHODS:
                rows.append({"separation_fwhm": float(sep_fwhm), "separation_arcsec": float(sep_arcsec),
                             "counts": level, "flux_ratio": float(ratio), "method": name, "trials": trials,
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
    return _matched(detections, positions, separation_arcsec, instrument, resolution)


def _matched(detections: pd.DataFrame, positions: np.ndarray, separation_arcsec: float, instrument: PnInstrument,
             resolution: int) -> bool:
    """Whether ``detections`` (pixels of the ``resolution`` grid) resolve the pair at ``positions``; at
    separation 0, whether they split the lone source into two."""
    pixel = instrument.geometry.image_grid(resolution).pixel_arcsec
    if separation_arcsec == 0.0:   # a lone source: "resolved" is split into two, a false pair
        fwhm_1x_px = detection.psf_fwhm_px(instrument, 1) * instrument.geometry.image_grid(1).pixel_arcsec / pixel
        return _count_near(detections, positions[0], fwhm_1x_px) >= 2
    return resolved(detections, positions, 0.5 * separation_arcsec / pixel)


def _as_sources(params: np.ndarray) -> np.ndarray:
    """Fit parameters (x, y, ln counts per source) as rows of x, y, counts."""
    table = params.reshape(-1, 3)
    return np.column_stack([table[:, :2], np.exp(table[:, 2])])


class PsfFit:
    """Maximum-likelihood PSF fitting of one or two point sources to 1x input counts over a known
    background, the method of SAS ``emldetect`` (which fits PSF models to the counts by the Cash
    statistic and may split a source into several): the second source is kept when it lowers the Cash
    statistic C = 2 sum(m - n ln m) by more than the chi-square value of three more parameters at the
    one-sided ``nsigma`` tail (5 sigma: 33.2), the evaluation's detection threshold. The PSF is the
    instrument's at the aim point (:class:`~xmmsr.instrument.psf.PointSourceImages`), at the mean
    detected energy of the pairs' power law. Pair fits start along the principal axis of the counts
    around the single fit, at 0.3, 0.6 and 1 x the FWHM, and with a companion at the largest smoothed
    residual of the single fit; the best is kept."""

    STARTS_FWHM = (0.3, 0.6, 1.0)

    def __init__(self, instrument: PnInstrument, nsigma: float) -> None:
        g = instrument.geometry
        energy = point_source_energy_kev(instrument)
        azimuth = float(np.arctan2(g.aim_y_arcsec - g.axis_y_arcsec, g.aim_x_arcsec - g.axis_x_arcsec))
        self.images = PointSourceImages(instrument.psf, g.image_grid(1).pixel_arcsec, instrument.aim_offaxis_arcmin,
                                        azimuth, float(energy), 1)
        self.fwhm_px = detection.psf_fwhm_px(instrument, 1)
        self.sigma_px = self.fwhm_px * SIGMA_PER_FWHM   # the Gaussian of the PSF's FWHM, where fits start
        self.threshold = float(stats.chi2.isf(stats.norm.sf(nsigma), 3))

    def _model(self, params: np.ndarray, background: np.ndarray) -> np.ndarray:
        m = background.copy()
        for x, y, log_counts in params.reshape(-1, 3):
            self.images.add(m, float(x), float(y), float(np.exp(log_counts)))
        return m

    def _cash(self, params: np.ndarray, counts: np.ndarray, background: np.ndarray, mask: np.ndarray) -> float:
        m = np.maximum(self._model(params, background)[mask], 1e-12)
        return float(2.0 * np.sum(m - counts[mask] * np.log(m)))

    def _fit(self, start: np.ndarray, counts: np.ndarray, background: np.ndarray,
             mask: np.ndarray) -> tuple[np.ndarray, float]:
        result = optimize.minimize(self._cash, start, args=(counts, background, mask), method="Powell",
                                   options={"xtol": 1e-3, "ftol": 1e-6})
        return result.x, float(result.fun)

    def fit(self, counts: np.ndarray, background: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """The single and the pair fit ((1, 3) and (2, 3) arrays of x, y in pixels and counts) and how much the
        pair lowers the Cash statistic (the evidence for a second source: a chi-square of 3 degrees of
        freedom where there is none)."""
        counts, background = np.asarray(counts, dtype=np.float64), np.asarray(background, dtype=np.float64)
        mask = np.asarray(mask, dtype=bool)
        excess = np.where(mask, counts - background, 0.0)
        yy, xx = np.mgrid[: counts.shape[0], : counts.shape[1]]
        peak = np.unravel_index(np.argmax(gaussian_filter(excess, self.sigma_px)), counts.shape)
        near = np.hypot(yy - peak[0], xx - peak[1]) <= self.fwhm_px
        w = np.clip(excess, 0.0, None) * near
        total = max(float(excess.sum()), 1.0)
        x0, y0 = (float((xx * w).sum() / w.sum()), float((yy * w).sum() / w.sum())) if w.sum() > 0 else peak[::-1]
        single, c_single = self._fit(np.array([x0, y0, np.log(total)]), counts, background, mask)
        # the counts' principal axis around the single fit: where a second source would lie
        dx, dy = xx - single[0], yy - single[1]
        w = np.clip(excess, 0.0, None) * (np.hypot(dx, dy) <= 1.5 * self.fwhm_px)
        cov = np.cov(np.vstack([dx.ravel(), dy.ravel()]), aweights=w.ravel() + 1e-12)
        axis = np.linalg.eigh(cov)[1][:, -1]
        starts = []
        for d in self.STARTS_FWHM:
            half = 0.5 * d * self.fwhm_px * axis
            starts.append(np.array([single[0] + half[0], single[1] + half[1], single[2] - np.log(2.0),
                                    single[0] - half[0], single[1] - half[1], single[2] - np.log(2.0)]))
        # and a faint companion where the single fit leaves the largest smoothed residual
        residual = gaussian_filter(np.where(mask, counts - self._model(single, background), 0.0), self.sigma_px)
        ry, rx = np.unravel_index(np.argmax(residual), residual.shape)
        companion = max(float(residual[ry, rx]) * 2.0 * np.pi * self.sigma_px**2, 1.0)   # that Gaussian's counts
        starts.append(np.array([*single, rx, ry, np.log(companion)]))
        best, c_pair = single, np.inf
        for start in starts:
            params, c = self._fit(start, counts, background, mask)
            if c < c_pair:
                best, c_pair = params, c
        return _as_sources(single), _as_sources(best), float(c_single - c_pair)

    def sources(self, counts: np.ndarray, background: np.ndarray, mask: np.ndarray) -> pd.DataFrame:
        """The fitted sources (``x``, ``y`` in pixels, ``counts``): one, or two where the second is significant."""
        return self.select(*self.fit(counts, background, mask))

    def select(self, single: np.ndarray, pair: np.ndarray, evidence: float) -> pd.DataFrame:
        """Of the fits of :meth:`fit`, the pair where its evidence passes the threshold, else the single source."""
        chosen = pair if evidence > self.threshold else single
        return pd.DataFrame({"x": chosen[:, 0], "y": chosen[:, 1], "counts": chosen[:, 2]})

