"""Close pairs of point sources added to training crops, for de-blending.

Close pairs are rare in simulated fields, and a pixel loss learns to blend what it seldom sees
separated. A fraction of the training crops therefore gets a pair of point sources added: a primary of
``counts`` expected input counts (log-uniform) and a secondary ``flux_ratio`` times fainter (log-uniform),
``separation_arcsec`` apart (uniform) in a uniformly drawn direction, around a point drawn uniformly in
the crop's central half. Their expected images are the instrument's PSF (:meth:`PsfModel.kernel`) at
the crop centre's off-axis angle and azimuth, at the mean detected energy of the AGN power law (as the
simulator's expected image takes it), on a 1" grid shared by both resolutions (1x: the 1x PSF in
4 x 4 blocks; 2x: the 2x PSF, half as wide, in 2 x 2 blocks), times the detector acceptance of the
crop's masks. Counts are Poisson, so the pair's own Poisson draws added to a crop's input and target
counts are exact draws of the summed expectations: the input and the target stay independent
realizations, and the expected images gain the pair's rates. Each source's out-of-time events are part
of its image as the simulator's expected image has them: the out-of-time fraction of its counts
(:attr:`PnInstrument.out_of_time_fraction`) moved from each crop column onto the whole column of its
CCD, of which the crop holds the rows it covers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..instrument.geometry import FrameLayout, coverage_1d
from ..instrument.model import PnInstrument
from ..instrument.psf import PointSourceImages
from ..instrument.simulator import offaxis_direction



@dataclass(frozen=True)
class PairInjection:
    """The ``train.pairs`` settings: which crops get a pair and how it is drawn."""

    fraction: float = 0.0
    counts: tuple[float, float] = (20.0, 2000.0)         # primary's expected counts at the input exposure
    separation_arcsec: tuple[float, float] = (2.0, 20.0)
    flux_ratio: tuple[float, float] = (1.0, 5.0)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> PairInjection:
        cfg = dict(cfg or {})
        out = cls(fraction=float(cfg.get("fraction", 0.0)),
                  counts=tuple(float(v) for v in cfg.get("counts", cls.counts)),
                  separation_arcsec=tuple(float(v) for v in cfg.get("separation_arcsec", cls.separation_arcsec)),
                  flux_ratio=tuple(float(v) for v in cfg.get("flux_ratio", cls.flux_ratio)))
        out.check()
        return out

    def check(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"train.pairs.fraction = {self.fraction} is not a fraction; use a value in [0, 1]")
        for name in ("counts", "separation_arcsec", "flux_ratio"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi:
                raise ValueError(f"train.pairs.{name} = [{lo}, {hi}] is no positive range; give [low, high], "
                                 "0 < low <= high")
        if self.flux_ratio[0] < 1.0:
            raise ValueError(f"train.pairs.flux_ratio starts at {self.flux_ratio[0]} < 1; the secondary is the "
                             "fainter one: use ratios >= 1")


@dataclass(frozen=True)
class InjectedPair:
    """One drawn pair: per resolution its expected counts at the input exposure on the crop (``counts``,
    before the detector acceptance), and the true positions (crop pixels of that resolution, (x, y) of
    primary and secondary)."""

    counts: dict[int, np.ndarray]
    positions: dict[int, np.ndarray]


class PairRenderer:
    """Draws pairs and renders their expected images on crops of the padded training frames (AGN of
    photon index ``gamma`` behind ``nh_cm2``: the training set's ``sources.agn``)."""

    def __init__(self, instrument: PnInstrument, frame_offset_1x: tuple[int, int], settings: PairInjection,
                 gamma: float, nh_cm2: float) -> None:
        self.instrument, self.settings = instrument, settings
        self.layout = FrameLayout(instrument.geometry.image_grid(1), (int(frame_offset_1x[0]), int(frame_offset_1x[1])))
        response = instrument.require_response()
        self.energy_kev = float(response.spectral("powerlaw", gamma, nh_cm2).mean_energy_kev)

    def draw(self, rng: np.random.Generator, origin_1x: tuple[int, int], crop: int, upscale: int) -> InjectedPair:
        """A pair on the crop whose lower-left 1x pixel is frame pixel ``origin_1x`` (row, column)."""
        s = self.settings
        counts = float(np.exp(rng.uniform(*np.log(s.counts))))
        ratio = float(np.exp(rng.uniform(*np.log(s.flux_ratio))))
        separation = float(rng.uniform(*s.separation_arcsec)) / self.layout.grid.pixel_arcsec    # 1x pixels
        angle = float(rng.uniform(0.0, np.pi))
        centre = rng.uniform(crop / 4.0, 3.0 * crop / 4.0, size=2) - 0.5   # (x, y), 1x pixel centres at integers
        half = 0.5 * separation * np.array([np.cos(angle), np.sin(angle)])
        xy_1x = np.array([centre - half, centre + half])
        images = {r: self.render(origin_1x, crop, xy_1x, np.array([counts, counts / ratio]), r) for r in {1, upscale}}
        positions = {r: (xy_1x + 0.5) * r - 0.5 for r in images}
        return InjectedPair(counts=images, positions=positions)

    def render(self, origin_1x: tuple[int, int], crop: int, xy_1x: np.ndarray, counts: np.ndarray,
               resolution: int) -> np.ndarray:
        """Expected counts (at the input exposure) on the crop grid of ``resolution`` of point sources at 1x
        crop positions ``xy_1x`` ((n, 2): x, y), each of ``counts`` over its whole PSF and its readout
        streak, with the PSF of the crop centre."""
        theta, azimuth = self._direction(origin_1x, crop)
        return self._render(origin_1x, np.asarray(xy_1x, dtype=np.float64), np.asarray(counts, dtype=np.float64),
                            crop, theta, azimuth, resolution)

    def _direction(self, origin_1x: tuple[int, int], crop: int) -> tuple[float, float]:
        """Off-axis angle (arcmin) and azimuth (radians from +x) of the crop centre."""
        theta, azimuth = offaxis_direction(self.instrument, *self.layout.detector_arcsec(origin_1x[1] + crop / 2.0,
                                                                                          origin_1x[0] + crop / 2.0))
        return float(theta), float(azimuth)

    def _render(self, origin_1x: tuple[int, int], xy_1x: np.ndarray, counts: np.ndarray, crop: int, theta: float,
                azimuth: float, resolution: int) -> np.ndarray:
        images = PointSourceImages(self.instrument.psf, self.layout.grid.pixel_arcsec, theta, azimuth, self.energy_kev,
                                   resolution)
        f = self.instrument.out_of_time_fraction
        n = crop * resolution
        out = np.zeros((n, n))
        for (x, y), (_, y_1x), c in zip((xy_1x + 0.5) * resolution - 0.5, xy_1x, counts):
            in_time = np.zeros((n, n))
            images.add(in_time, float(x), float(y), float(c))
            out += in_time if f == 0 else (1.0 - f) * in_time + f * self._streak(origin_1x, crop, float(y_1x),
                                                                                   in_time.sum(axis=0), resolution)
        return out

    def _streak(self, origin_1x: tuple[int, int], crop: int, y_1x: float, column_counts: np.ndarray,
                resolution: int) -> np.ndarray:
        """The crop's share of ``column_counts`` (per crop column) spread uniformly along the column of the
        CCD that holds a source at 1x crop row ``y_1x`` (the simulator's out-of-time events)."""
        g, p = self.instrument.geometry, self.layout.grid.pixel_arcsec
        bottom = float(self.layout.detector_arcsec(origin_1x[1], origin_1x[0])[1])     # the crop's lower edge
        ccd = int(np.clip(g.ccd_row(bottom + (y_1x + 0.5) * p), 0, g.ccds_y - 1))
        low = g.ccd_origin(0, ccd)[1]
        edges = bottom + np.arange(crop * resolution + 1) * (p / resolution)
        rows = coverage_1d(edges, [(low, low + g.ccd_height)]) * (p / resolution) / g.ccd_height
        return rows[:, None] * column_counts[None, :]
