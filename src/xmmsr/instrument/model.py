"""The pn instrument assembled from the ``instrument`` section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import resolve_resource
from ..errors import InputError
from .geometry import PnGeometry
from .psf import KingPsf
from .response import Response, read_effective_area

PATTERN_GOOD_MAX = 4


@dataclass(frozen=True)
class Vignetting:
    """Fraction of on-axis effective area at off-axis angle theta: 1 - (1 - v_ref) (theta/theta_ref)^power."""

    reference_offaxis_arcmin: float = 12.0
    value_at_reference: float = 0.65
    power: float = 1.6

    def __call__(self, offaxis_arcmin: np.ndarray) -> np.ndarray:
        return self.of_squared(np.square(offaxis_arcmin))

    def of_squared(self, offaxis2_arcmin2: np.ndarray) -> np.ndarray:
        """Vignetting as a function of the squared off-axis angle (arcmin^2), in its precision."""
        x2 = np.asarray(offaxis2_arcmin2)
        t = x2.dtype.type if x2.dtype.kind == "f" else np.float64
        v = np.power(x2 * t(1.0 / self.reference_offaxis_arcmin**2), t(self.power / 2.0))
        v *= t(-(1.0 - self.value_at_reference))
        v += t(1.0)
        return np.clip(v, t(0.0), t(1.0))


@dataclass(frozen=True)
class Background:
    """Particle (flat, not vignetted) and unresolved cosmic X-ray background (vignetted)."""

    particle_rate_arcmin2: float = 5.0e-4   # counts s-1 arcmin-2 over the detector, 0.5-2 keV, all patterns
    cxb_flux_arcmin2: float = 1.2e-6       # ph cm-2 s-1 arcmin-2, 0.5-2 keV
    cxb_gamma: float = 1.4
    cxb_nh: float = 3e20


@dataclass(frozen=True)
class PatternFractions:
    """Fractions of events with PATTERN 0 (single), 1-4 (double) and 5-12 (triple, quadruple)."""

    single: float = 0.72
    double: float = 0.24
    triple_quadruple: float = 0.04

    @property
    def good(self) -> float:
        """Fraction with PATTERN <= 4."""
        return self.single + self.double


@dataclass(frozen=True)
class PnInstrument:
    """Everything the built-in simulator needs to know about EPIC-pn."""

    geometry: PnGeometry = field(default_factory=PnGeometry)
    psf: KingPsf = field(default_factory=KingPsf)
    response: Response | None = None
    vignetting: Vignetting = field(default_factory=Vignetting)
    background: Background = field(default_factory=Background)
    patterns: PatternFractions = field(default_factory=PatternFractions)
    roll_deg: float = 0.0
    frame_time_s: float = 0.0734
    out_of_time_fraction: float = 0.063
    oversample: int = 2   # fine-grid factor of the expected image

    @classmethod
    def from_config(cls, cfg: dict[str, Any], base_dir: str | Path | None = None) -> "PnInstrument":
        """Build from the ``instrument`` config section (see workflow/schemas/config.schema.yaml)."""
        g = cfg["geometry"]
        geometry = PnGeometry(
            pixel_arcsec=g["pixel_arcsec"], ccd_columns=g["ccd_columns"], ccd_rows=g["ccd_rows"],
            ccds_x=g["ccds_x"], ccds_y=g["ccds_y"], gap_x_arcsec=g["gap_x_arcsec"], gap_y_arcsec=g["gap_y_arcsec"],
            aim_x_arcsec=g["aim_point_arcsec"][0], aim_y_arcsec=g["aim_point_arcsec"][1],
            fov_radius_arcmin=g["fov_radius_arcmin"],
            bad_columns=tuple((int(c), int(x)) for c, x in g["bad_columns"]),
            flag_ccd_border=g["flag_ccd_border"],
        )
        aim = np.array([[geometry.aim_x_arcsec], [geometry.aim_y_arcsec]], dtype=np.float32)
        if not geometry.on_chip(aim[0], aim[1])[0] or geometry.locate(aim[0], aim[1], 1)[3][0] != 0:
            raise InputError(None, "instrument.geometry.aim_point_arcsec", f"{list(g['aim_point_arcsec'])} is not on an "
                             "active, unflagged CCD pixel", "put the optical axis on a CCD, clear of gaps and borders "
                             "(the default is [-60.0, 70.0])")
        energy, area = read_effective_area(resolve_resource(cfg["effective_area_file"], base_dir))
        return cls(
            geometry=geometry,
            psf=KingPsf(**cfg["psf"]),
            response=Response(energy, area, cfg["energy_resolution_fwhm_ev"]),
            vignetting=Vignetting(**cfg["vignetting"]),
            background=Background(**cfg["background"]),
            patterns=PatternFractions(**cfg["pattern_fractions"]),
            roll_deg=cfg["roll_deg"],
            frame_time_s=cfg["frame_time_s"],
            out_of_time_fraction=cfg["out_of_time_fraction"],
            oversample=cfg["expected_oversample"],
        )

    def background_rate_arcsec2(self) -> float:
        """On-axis background count rate per arcsec^2 after the standard filters (PATTERN<=4, PI 0.5-2 keV)."""
        r = self.require_response()
        cxb = r.spectral("powerlaw", self.background.cxb_gamma, self.background.cxb_nh)
        rate_arcmin2 = (self.background.particle_rate_arcmin2 * particle_pi_fraction(r)
                        + self.background.cxb_flux_arcmin2 * cxb.mean_area_cm2 * cxb.pi_fraction)
        return rate_arcmin2 * self.patterns.good / 3600.0

    def require_response(self) -> Response:
        if self.response is None:
            raise ValueError("the instrument has no effective area; build it with PnInstrument.from_config")
        return self.response


def particle_pi_fraction(response: Response) -> float:
    """Fraction of particle events (flat in energy over 0.5-2 keV) whose PI stays in [500, 2000]."""
    return response.flat_pi_fraction()
