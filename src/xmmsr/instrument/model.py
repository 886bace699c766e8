"""The pn instrument assembled from the ``instrument`` section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import resolve_resource
from ..errors import InputError
from .geometry import PnGeometry, read_dead_pixels
from .psf import EllbetaPsf, PsfModel, psf_from_config
from .response import Redistribution, Response, read_effective_area

PATTERN_GOOD_MAX = 4
# pn imaging modes: frame time (s) and out-of-time event fraction (XMM-Newton Users Handbook, EPIC-pn modes)
SUBMODES = {"PrimeFullWindow": (0.0734, 0.063), "PrimeFullWindowExtended": (0.1991, 0.023)}


@dataclass(frozen=True)
class Vignetting:
    """Fraction of the on-axis effective area at off-axis angle theta and energy E: a table of theta
    (arcmin) x energy (keV), bilinear (by default the XRT3_XAREAEF CCF of the pn telescope)."""

    theta_arcmin: tuple[float, ...] = (0.0, 15.6)
    energy_kev: tuple[float, ...] = (1.0,)
    factors: tuple[tuple[float, ...], ...] = ((1.0, 1.0),)   # one row per energy

    @classmethod
    def from_file(cls, path: str | Path) -> "Vignetting":
        """Read ``theta_arcmin,v_<E>keV,...`` (``#`` comments), e.g. resources/instrument/pn_vignetting_*.csv."""
        p = Path(path)
        try:
            lines = [line for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
            header = [h.strip() for h in lines[0].split(",")]
            table = np.loadtxt(lines[1:], delimiter=",", ndmin=2)
            energies = [float(h.removeprefix("v_").removesuffix("keV")) for h in header[1:]]
        except (OSError, IndexError, ValueError) as exc:
            raise InputError(p, "instrument.vignetting.file", f"cannot be read as a vignetting table ({exc})",
                             "give a CSV with a header theta_arcmin,v_0.5keV,v_1.0keV,... and one row per angle") from exc
        if header[0] != "theta_arcmin" or table.shape[1] != len(header) or np.any(np.diff(table[:, 0]) <= 0) \
                or np.any(np.diff(energies) <= 0) or np.any((table[:, 1:] < 0) | (table[:, 1:] > 1.0 + 1e-6)):
            raise InputError(p, "vignetting table", "needs increasing theta_arcmin and energies and factors in [0, 1]",
                             "check the header (theta_arcmin,v_<E>keV,...) and the values")
        return cls(tuple(table[:, 0]), tuple(energies), tuple(tuple(col) for col in table[:, 1:].T))

    def __call__(self, offaxis_arcmin: np.ndarray, energy_kev: float | np.ndarray = 1.0) -> np.ndarray:
        return self.of_squared(np.square(offaxis_arcmin), energy_kev)

    def of_squared(self, offaxis2_arcmin2: np.ndarray, energy_kev: float | np.ndarray = 1.0) -> np.ndarray:
        """Vignetting as a function of the squared off-axis angle (arcmin^2) and energy, in the precision
        of the angles; beyond the table the last value holds."""
        x2 = np.asarray(offaxis2_arcmin2)
        t = x2.dtype.type if x2.dtype.kind == "f" else np.float64
        theta = np.sqrt(x2)
        grid = np.asarray(self.theta_arcmin, dtype=t)

        def row(i: int) -> np.ndarray:
            return np.interp(theta, grid, np.asarray(self.factors[i], dtype=t)).astype(t, copy=False)

        if len(self.factors) == 1:
            return row(0)
        e = np.clip(np.asarray(energy_kev, dtype=t), self.energy_kev[0], self.energy_kev[-1])
        k = np.clip(np.searchsorted(np.asarray(self.energy_kev, dtype=t), e) - 1, 0, len(self.factors) - 2)
        lo = np.asarray(self.energy_kev, dtype=t)[k]
        hi = np.asarray(self.energy_kev, dtype=t)[k + 1]
        w = (e - lo) / (hi - lo)
        lower, upper = (row(int(k)), row(int(k) + 1)) if np.ndim(k) == 0 else self._rows_at(theta, k, t)
        return lower * (t(1) - w) + upper * w

    def _rows_at(self, theta: np.ndarray, k: np.ndarray, t: type) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``k`` and ``k + 1`` of the table interpolated at ``theta``, each element only in the two rows it
        needs: the values of ``np.interp`` (the same float64 arithmetic on the tables in the angles'
        precision), with one search for all rows."""
        grid = np.asarray(self.theta_arcmin, dtype=t).astype(np.float64)
        table = np.asarray(self.factors, dtype=t).astype(np.float64)          # (energies, angles)
        slopes = np.diff(table, axis=1) / np.diff(grid)                          # as np.interp computes them
        x = theta.astype(np.float64)
        j = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, grid.size - 2)
        offset = x - grid[j]
        beyond = x >= grid[-1]
        slope_at, start_at = slopes.ravel(), table[:, :-1].ravel()   # flat (energy, interval) look-ups
        out = []
        for row in (k, k + 1):
            at = row * (grid.size - 1) + j
            value = slope_at[at] * offset + start_at[at]
            value = np.where(beyond, table[row, -1], value)
            out.append(value.astype(t, copy=False))
        return out[0], out[1]


@dataclass(frozen=True)
class Background:
    """Background components at field scale 1: particle (flat over the CCDs, not vignetted), unresolved
    cosmic X-ray background and Galactic foreground (vignetted), soft-proton residual (inside the field
    of view, flatter than the photon vignetting; level 1 gives ``soft_proton_rate_arcmin2`` on axis)."""

    particle_rate_arcmin2: float = 2.0e-3   # counts s-1 arcmin-2 over the detector, 0.5-2 keV, all patterns
    cxb_flux_arcmin2: float = 1.07e-6      # ph cm-2 s-1 arcmin-2, 0.5-2 keV
    cxb_gamma: float = 1.4
    cxb_nh: float = 3e20
    galactic_flux_arcmin2: float = 0.6e-6  # ph cm-2 s-1 arcmin-2, 0.5-2 keV
    galactic_kt_kev: float = 0.2
    soft_proton_rate_arcmin2: float = 1.0e-3   # counts s-1 arcmin-2 on axis at level 1, all patterns
    soft_proton_vignetting_15arcmin: float = 0.6   # relative rate at 15' (linear in angle)

    def soft_proton_profile(self, offaxis_arcmin: np.ndarray) -> np.ndarray:
        """Relative soft-proton rate with off-axis angle."""
        return 1.0 - (1.0 - self.soft_proton_vignetting_15arcmin) * np.clip(np.asarray(offaxis_arcmin) / 15.0, 0, 1)


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


def geometry_from_config(g: dict[str, Any], base_dir: str | Path | None = None) -> PnGeometry:
    """The detector geometry of the validated ``instrument.geometry`` config section."""
    dead = read_dead_pixels(resolve_resource(g["dead_pixels_file"], base_dir)) if g["dead_pixels_file"] else ()
    return PnGeometry(
        pixel_arcsec=g["pixel_arcsec"], ccd_columns=g["ccd_columns"], ccd_rows=g["ccd_rows"],
        ccds_x=g["ccds_x"], ccds_y=g["ccds_y"], gap_x_arcsec=g["gap_x_arcsec"], gap_y_arcsec=g["gap_y_arcsec"],
        array_center_x_arcsec=g["array_center_arcsec"][0], array_center_y_arcsec=g["array_center_arcsec"][1],
        aim_x_arcsec=g["aim_point_arcsec"][0], aim_y_arcsec=g["aim_point_arcsec"][1],
        axis_x_arcsec=g["optical_axis_arcsec"][0], axis_y_arcsec=g["optical_axis_arcsec"][1],
        fov_center_x_arcsec=g["fov_center_arcsec"][0], fov_center_y_arcsec=g["fov_center_arcsec"][1],
        fov_radius_arcmin=g["fov_radius_arcmin"],
        image_origin_det=(float(g["image_origin_det"][0]), float(g["image_origin_det"][1])),
        bad_columns=tuple((int(c), int(x)) for c, x in g["bad_columns"]),
        flag_ccd_border=g["flag_ccd_border"],
        dead_pixels=dead,
    )


@dataclass(frozen=True)
class PnInstrument:
    """Everything the built-in simulator needs to know about EPIC-pn."""

    geometry: PnGeometry = field(default_factory=PnGeometry)
    psf: PsfModel = field(default_factory=EllbetaPsf)
    response: Response | None = None
    vignetting: Vignetting = field(default_factory=Vignetting)
    background: Background = field(default_factory=Background)
    patterns: PatternFractions = field(default_factory=PatternFractions)
    roll_deg: float = 0.0
    submode: str = "PrimeFullWindow"
    frame_time_s: float = 0.0734
    out_of_time_fraction: float = 0.063
    oversample: int = 2   # fine-grid factor of the expected image

    @classmethod
    def from_config(cls, cfg: dict[str, Any], base_dir: str | Path | None = None) -> "PnInstrument":
        """Build from the ``instrument`` config section (schema: ``xmmsr/data/config.schema.yaml``)."""
        g = cfg["geometry"]
        geometry = geometry_from_config(g, base_dir)
        aim = np.array([[geometry.aim_x_arcsec], [geometry.aim_y_arcsec]], dtype=np.float32)
        if not geometry.on_chip(aim[0], aim[1])[0] or geometry.locate(aim[0], aim[1], 1)[3][0] != 0:
            raise InputError(None, "instrument.geometry.aim_point_arcsec", f"{list(g['aim_point_arcsec'])} is not on an "
                             "active, unflagged CCD pixel", "put the optical axis on a CCD, clear of gaps and borders "
                             "(the default is [5.6, -7.4], where SAS pn images have their targets)")
        return cls(
            geometry=geometry,
            psf=psf_from_config(cfg["psf"]),
            response=response_from_config(cfg, base_dir),
            vignetting=Vignetting.from_file(resolve_resource(cfg["vignetting"]["file"], base_dir)),
            background=Background(**cfg["background"]),
            patterns=PatternFractions(**cfg["pattern_fractions"]),
            roll_deg=cfg["roll_deg"],
            submode=cfg["submode"],
            frame_time_s=SUBMODES[cfg["submode"]][0] if cfg["frame_time_s"] is None else cfg["frame_time_s"],
            out_of_time_fraction=(SUBMODES[cfg["submode"]][1] if cfg["out_of_time_fraction"] is None
                                  else cfg["out_of_time_fraction"]),
            oversample=cfg["expected_oversample"],
        )

    def background_rate_arcsec2(self) -> float:
        """On-axis background count rate per arcsec^2 after the standard filters (PATTERN<=4, PI 0.5-2 keV)."""
        r = self.require_response()
        b = self.background
        cxb = r.spectral("powerlaw", b.cxb_gamma, b.cxb_nh)
        gal = r.spectral("bremss", b.galactic_kt_kev, 0.0)
        rate_arcmin2 = (b.particle_rate_arcmin2 + b.cxb_flux_arcmin2 * cxb.band_area_cm2
                        + b.galactic_flux_arcmin2 * gal.band_area_cm2)
        return rate_arcmin2 * self.patterns.good / 3600.0

    @property
    def aim_offaxis_arcmin(self) -> float:
        """Off-axis angle (arcmin) of the aim point, where targets sit."""
        g = self.geometry
        return float(np.hypot(g.aim_x_arcsec - g.axis_x_arcsec, g.aim_y_arcsec - g.axis_y_arcsec) / 60.0)

    def require_response(self) -> Response:
        if self.response is None:
            raise ValueError("the instrument has no effective area; build it with PnInstrument.from_config")
        return self.response


def instrument_files(cfg: dict[str, Any], base_dir: str | Path | None = None) -> dict[str, Path]:
    """Calibration files the instrument section names: ``effective_area`` (the filter's shipped table
    unless effective_area_file is given) and ``redistribution`` (absent for a Gaussian resolution)."""
    area = cfg.get("effective_area_file") or f"resources/instrument/pn_{cfg.get('filter', 'thin')}_effective_area.csv"
    files = {"effective_area": resolve_resource(area, base_dir)}
    if cfg.get("redistribution_file"):
        files["redistribution"] = resolve_resource(cfg["redistribution_file"], base_dir)
    return files


def response_from_config(cfg: dict[str, Any], base_dir: str | Path | None = None) -> Response:
    """The spectral response of an ``instrument`` section: the effective area and the redistribution file
    of :func:`instrument_files` (or a Gaussian of ``energy_resolution_fwhm_ev`` without one)."""
    files = instrument_files(cfg, base_dir)
    energy, area = read_effective_area(files["effective_area"])
    redistribution = (Redistribution.from_file(files["redistribution"]) if "redistribution" in files
                      else Redistribution.gaussian(cfg["energy_resolution_fwhm_ev"]))
    return Response(energy, area, redistribution)


def instrument_config_with_inputs(cfg: dict[str, Any], inputs: Any) -> dict[str, Any]:
    """The instrument section with its calibration files replaced by a workflow job's input paths
    (named as in :func:`instrument_files`)."""
    return dict(cfg, effective_area_file=str(inputs.effective_area),
                redistribution_file=str(inputs.redistribution) if hasattr(inputs, "redistribution") else None)
