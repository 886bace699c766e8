"""The single entry point of the pipeline for sky models: ``generate_source(kind, id, cfg, ...)``.

``cfg`` is the ``sources`` section of the pipeline configuration (see ``config.schema.yaml``).
Every source is generated from its own seed (:func:`source_seed`), so the same arguments give a
bit-identical sky model and shards can be generated in any order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .agn import energy_to_photon_flux, sample_agn
from .augment import boresight_offset, normalise_brightness, zoom_image
from .model import SOURCE_KINDS, FieldBackground, SkyModel, empty_point_table, make_wcs
from .synthetic import CavityPair, Clump, CoolCore, Shock, beta_cluster, filament, snr_shell

EXTENDED_MODELS = ("cluster", "snr", "filament")

Meta = dict[str, float | int | str]


@dataclass(frozen=True)
class BrightnessReference:
    """The background level that sets the brightness scale (sigma_b) of extended sources."""

    background_rate_arcsec2: float   # on-axis background count rate per arcsec^2 (counts s-1 arcsec-2)
    effective_area_cm2: float        # band-averaged on-axis effective area used to turn counts into photon flux


def source_seed(global_seed: int, kind: str, source_id: int) -> int:
    """The seed of one source, derived from the global seed, the source kind and its id."""
    if kind not in SOURCE_KINDS:
        raise InputError(None, "source kind", f"{kind!r} is unknown", f"use one of {list(SOURCE_KINDS)}")
    if int(source_id) < 0 or int(global_seed) < 0:
        raise InputError(None, "source id / seed", f"({source_id}, {global_seed}) must be >= 0",
                         "use non-negative source ids and seeds")
    state = np.random.SeedSequence([int(global_seed), SOURCE_KINDS.index(kind), int(source_id)]).generate_state(1)
    return int(state[0])


# --------------------------------------------------------------------------- config access
# The config is validated once, where it enters (xmmsr.config.check_config: the schema, ranges ordered,
# probabilities summing to 1); here it is only read.

def _pair(value: Any) -> tuple[float, float]:
    """A [low, high] range of the config as floats."""
    return float(value[0]), float(value[1])


def _mix(section: dict[str, Any]) -> np.ndarray:
    """Probabilities of the extended models, in the order of ``EXTENDED_MODELS``."""
    return np.array([float(section["mix"].get(m, 0.0)) for m in EXTENDED_MODELS])


@dataclass(frozen=True)
class _Grid:
    npix: int
    pixel_arcsec: float
    ra: float
    dec: float

    @property
    def center_pix(self) -> tuple[float, float]:
        c = (self.npix - 1) / 2.0
        return c, c

    @property
    def width_arcsec(self) -> float:
        return self.npix * self.pixel_arcsec


def _grid(cfg: dict[str, Any]) -> _Grid:
    sky = cfg["sky"]
    return _Grid(int(sky["npix"]), float(sky["pixel_arcsec"]), float(sky["ra_deg"]), float(sky["dec_deg"]))


@dataclass(frozen=True)
class _AgnConfig:
    flux_min: float
    flux_max: float
    gamma: float
    nh: float


def _agn(cfg: dict[str, Any]) -> _AgnConfig:
    agn = cfg["agn"]
    return _AgnConfig(float(agn["flux_min"]), float(agn["flux_max"]), float(agn["gamma"]), float(agn["nh"]))


def _sample_agn(rng: np.random.Generator, grid: _Grid, agn: _AgnConfig, min_count: int = 0) -> np.ndarray:
    return sample_agn(rng, grid.ra, grid.dec, grid.width_arcsec / 3600.0, agn.flux_min, agn.flux_max,
                      agn.gamma, agn.nh, min_count=min_count)


# --------------------------------------------------------------------------- extended-source models

def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def _cluster(rng: np.random.Generator, grid: _Grid, section: dict[str, Any]) -> tuple[np.ndarray, float, Meta]:
    rc = _uniform(rng, _pair(section["rc_arcsec"]))
    beta = _uniform(rng, _pair(section["beta"]))
    ellip = _uniform(rng, _pair(section["ellipticity"]))
    pa = float(rng.uniform(0.0, 180.0))
    n_lo, n_hi = _pair(section["clumps"])
    n_clumps = int(rng.integers(int(n_lo), int(n_hi) + 1))
    clumps = []
    for _ in range(n_clumps):
        dist, angle = rc * rng.uniform(0.5, 3.0), np.deg2rad(rng.uniform(0.0, 360.0))
        clumps.append(Clump(dx_arcsec=float(dist * np.cos(angle)), dy_arcsec=float(dist * np.sin(angle)),
                            rc_arcsec=float(rc * rng.uniform(0.08, 0.25)), flux_fraction=float(rng.uniform(0.01, 0.05)),
                            ellipticity=float(rng.uniform(0.0, 0.5)),
                            position_angle_deg=float(rng.uniform(0.0, 180.0))))
    meta: Meta = {"MODEL": "cluster", "RC_AS": rc, "BETA": beta, "ELLIP": ellip, "PA_DEG": pa, "NCLUMP": n_clumps}

    cool_core = None
    if rng.random() < float(section["cool_core_prob"]):
        rc_fraction = _uniform(rng, _pair(section["cool_core_rc_fraction"]))
        amplitude = _log_uniform(rng, _pair(section["cool_core_amplitude"]))
        cool_core = CoolCore(rc_arcsec=rc * rc_fraction, amplitude=amplitude)
        meta.update(CC_RC_AS=cool_core.rc_arcsec, CC_AMP=cool_core.amplitude)
    meta["COOLCORE"] = int(cool_core is not None)

    cavities = None
    if rng.random() < float(section["cavity_prob"]):
        cavities = CavityPair(distance_arcsec=rc * float(rng.uniform(0.7, 1.5)),
                              angle_deg=float(rng.uniform(0.0, 180.0)),
                              radius_arcsec=rc * float(rng.uniform(0.3, 0.6)), axis_ratio=float(rng.uniform(0.6, 1.0)),
                              depth=float(rng.uniform(0.3, 0.8)))
        meta.update(CAV_D_AS=cavities.distance_arcsec, CAV_R_AS=cavities.radius_arcsec, CAVDEPTH=cavities.depth)
    meta["CAVITY"] = int(cavities is not None)

    shock = None
    if rng.random() < float(section["shock_prob"]):
        shock = Shock(radius_arcsec=rc * float(rng.uniform(1.5, 4.0)), angle_deg=float(rng.uniform(0.0, 360.0)),
                      half_opening_deg=float(rng.uniform(30.0, 90.0)), jump=float(rng.uniform(1.3, 3.0)))
        meta.update(SHK_R_AS=shock.radius_arcsec, SHK_JUMP=shock.jump)
    meta["SHOCK"] = int(shock is not None)

    kt = _uniform(rng, _pair(section["kT_keV"]))
    image = beta_cluster((grid.npix, grid.npix), grid.pixel_arcsec, grid.center_pix, rc, beta, ellip, pa,
                         clumps=clumps, cool_core=cool_core, cavities=cavities, shock=shock)
    return image, kt, meta


def _snr(rng: np.random.Generator, grid: _Grid, section: dict[str, Any]) -> tuple[np.ndarray, float, Meta]:
    r_out = _uniform(rng, _pair(section["radius_arcsec"]))
    thickness = _uniform(rng, _pair(section["thickness_fraction"]))
    gradient, gradient_pa = float(rng.uniform(0.0, 0.5)), float(rng.uniform(0.0, 360.0))
    kt = _uniform(rng, _pair(section["kT_keV"]))
    r_in = r_out * (1.0 - thickness)
    image = snr_shell((grid.npix, grid.npix), grid.pixel_arcsec, grid.center_pix, r_in, r_out, gradient, gradient_pa)
    return image, kt, {"MODEL": "snr", "RIN_AS": r_in, "ROUT_AS": r_out, "GRAD": gradient, "GRAD_PA": gradient_pa}


def _filament(rng: np.random.Generator, grid: _Grid, section: dict[str, Any]) -> tuple[np.ndarray, float, Meta]:
    length = _uniform(rng, _pair(section["length_arcsec"]))
    width = _uniform(rng, _pair(section["width_arcsec"]))
    pa, bend = float(rng.uniform(0.0, 180.0)), float(rng.uniform(-60.0, 60.0))
    kt = _uniform(rng, _pair(section["kT_keV"]))
    image = filament((grid.npix, grid.npix), grid.pixel_arcsec, grid.center_pix, length, width, pa, bend)
    return image, kt, {"MODEL": "filament", "LEN_AS": length, "WID_AS": width, "PA_DEG": pa, "BEND_DEG": bend}


_BUILDERS: dict[str, Callable[[np.random.Generator, _Grid, dict[str, Any]], tuple[np.ndarray, float, Meta]]] = {
    "cluster": _cluster, "snr": _snr, "filament": _filament,
}


def _choose_model(rng: np.random.Generator, probs: np.ndarray) -> str:
    cumulative = np.cumsum(probs)
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return EXTENDED_MODELS[min(index, int(np.flatnonzero(probs > 0)[-1]))]


SOURCE_ORIGINS = ("synthetic", "tng", "mixed", "images")
TNG_STREAM = 7  # seed key of the synthetic-or-TNG draw of sources.kind "mixed" (leaves the main stream untouched)
FIELD_BACKGROUND_STREAM = 11  # seed key of the per-field background scales (same: the main stream is untouched)
AGN_FIELD_STREAM = 13  # seed key of the per-field AGN flux scale, absorption and target (same)
CCD_EXPOSURE_STREAM = 17  # seed key of the per-field CCD exposure losses (same)
N_CCDS = 12


def _from_tng(cfg: dict[str, Any], seed: int) -> bool:
    """Whether this extended source comes from a TNG cutout (``sources.kind``; ``mixed`` draws it)."""
    origin = cfg.get("kind", "synthetic")
    if origin == "mixed":
        fraction = float(cfg["tng"]["mixed_fraction"])
        return bool(np.random.default_rng([seed, TNG_STREAM]).random() < fraction)
    return origin == "tng"


def field_background(cfg: dict[str, Any], seed: int) -> FieldBackground:
    """The background scales of one field (``sources.field_background``), from their own random stream so
    that the source draws do not depend on them."""
    section = cfg.get("field_background") or {}
    if not section:
        return FieldBackground()
    rng = np.random.default_rng([seed, FIELD_BACKGROUND_STREAM])
    particle = _uniform(rng, _pair(section["particle"]))
    cxb = _uniform(rng, _pair(section["cxb"]))
    galactic = _log_uniform(rng, _pair(section["galactic"]))
    fraction = float(section["soft_proton_fraction"])
    level = _log_uniform(rng, _pair(section["soft_protons"]))
    soft = level if rng.random() < fraction else 0.0
    return FieldBackground(particle=particle, cxb=cxb, galactic=galactic, soft_protons=soft)


def field_ccd_exposure(cfg: dict[str, Any], seed: int) -> dict[str, str]:
    """In a fraction ``sources.field_exposure.fraction`` of the fields, 1 to ``max_ccds`` random CCDs lose a
    fraction (uniform in ``loss``) of the exposure, as when a CCD is switched off or flagged for part of
    an observation; returns the ``CCDLIVE`` keyword (empty when every CCD saw the whole exposure)."""
    section = cfg.get("field_exposure") or {}
    fraction = float(section["fraction"]) if "fraction" in section else 0.0
    rng = np.random.default_rng([seed, CCD_EXPOSURE_STREAM])
    if not rng.random() < fraction:
        return {}
    max_ccds = int(section.get("max_ccds", 1))
    lo, hi = _pair(section["loss"])
    live = np.ones(N_CCDS)
    ccds = rng.choice(N_CCDS, size=int(rng.integers(1, max(1, max_ccds) + 1)), replace=False)
    live[ccds] = 1.0 - rng.uniform(lo, hi, ccds.size)
    return {"CCDLIVE": ",".join(f"{v:.4f}" for v in live)}


def field_agn(points: np.ndarray, cfg: dict[str, Any], seed: int, grid: _Grid,
              with_target: bool) -> tuple[np.ndarray, dict[str, float]]:
    """Per-field AGN properties (``sources.agn``): every flux times a field scale (log-uniform
    ``field_flux_scale``), one absorbing column for the field (log-uniform ``field_nh``) and, in a fraction
    ``target_fraction`` of the fields that may have one, a bright target AGN at the pointing (log-uniform
    ``target_flux``, erg cm-2 s-1), as in pointed observations. Drawn from their own random stream."""
    agn_cfg, agn = cfg["agn"], _agn(cfg)
    rng = np.random.default_rng([seed, AGN_FIELD_STREAM])

    def log_uniform(key: str, default: tuple[float, float]) -> float:
        bounds = _pair(agn_cfg[key]) if key in agn_cfg else default
        return float(f"{_log_uniform(rng, bounds):.6g}")   # exact through a FITS header

    scale = log_uniform("field_flux_scale", (1.0, 1.0))
    nh = log_uniform("field_nh", (agn.nh, agn.nh))
    fraction = float(agn_cfg["target_fraction"]) if "target_fraction" in agn_cfg else 0.0
    target_flux = log_uniform("target_flux", (1e-13, 1e-12))
    out = points.copy()
    out["FLUX"] *= scale
    out["NH"] = nh
    has_target = with_target and rng.random() < fraction
    if has_target:
        target = np.zeros(1, dtype=out.dtype)
        target["RA"], target["DEC"] = grid.ra, grid.dec
        target["FLUX"] = energy_to_photon_flux(np.array([target_flux]), agn.gamma)
        target["GAMMA"], target["NH"] = agn.gamma, nh
        out = np.concatenate([out, target])
    meta = {"AGNSCALE": scale, "AGNNH": nh, "AGNTGT": target_flux if has_target else 0.0}
    pair_fraction = float(agn_cfg.get("pair_fraction", 0.0))
    if pair_fraction > 0:   # no draws otherwise: fields without pairs stay what they were
        companions = close_companions(rng, out, pair_fraction, _pair(agn_cfg["pair_separation_arcsec"]),
                                      _pair(agn_cfg["pair_flux_ratio"]))
        out = np.concatenate([out, companions])
        meta["AGNPAIRS"] = len(companions)
    return out, meta


def close_companions(rng: np.random.Generator, points: np.ndarray, fraction: float,
                     separation_arcsec: tuple[float, float], flux_ratio: tuple[float, float]) -> np.ndarray:
    """Companions of a random ``fraction`` of the AGN ``points`` (the target included): each at a separation
    uniform in ``separation_arcsec`` and a random position angle, fainter by a log-uniform ``flux_ratio``,
    with its primary's spectrum and absorption. Close pairs, below the pn PSF's 6" FWHM and up to a few
    FWHM, are rare in a logN-logS field; a network learns to separate them only when it sees them."""
    chosen = points[rng.random(len(points)) < fraction]
    n = len(chosen)
    separation = rng.uniform(separation_arcsec[0], separation_arcsec[1], n)
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    ratio = np.exp(rng.uniform(np.log(flux_ratio[0]), np.log(flux_ratio[1]), n))
    out = chosen.copy()
    out["DEC"] = chosen["DEC"] + separation * np.sin(angle) / 3600.0
    out["RA"] = np.mod(chosen["RA"] + separation * np.cos(angle) / 3600.0 / np.cos(np.deg2rad(out["DEC"])), 360.0)
    out["FLUX"] = chosen["FLUX"] / ratio
    return out


def _extended(rng: np.random.Generator, grid: _Grid, cfg: dict[str, Any], brightness: BrightnessReference,
              wcs: Any, tng_cutouts: list[dict[str, Any]] | None = None,
              seed: int = 0) -> tuple[np.ndarray, float, float, float, np.ndarray, Meta]:
    section = cfg["extended"]
    probs = _mix(section)
    zoom_range = _pair(section["zoom"])
    sigma_b_range = _pair(section["sigma_b"])
    offset_fraction = float(section["offset_sigma_fraction"])
    central_radius = float(section["central_radius_arcsec"])
    include_agn = section.get("include_agn", True)
    agn = _agn(cfg)
    if cfg.get("kind") == "images":
        from .images import image_extended

        image, kt, meta = image_extended(rng, grid.npix, grid.pixel_arcsec, cfg["images"])
    elif _from_tng(cfg, seed):
        from .tng.sky import tng_extended_image

        if tng_cutouts is None:
            raise InputError(None, "sources.kind", f"is {cfg.get('kind')!r} but no TNG cutout manifest was given",
                             "run the workflow (rule tng_download writes the manifest) or pass the manifest's cutouts")
        image, kt, meta = tng_extended_image(rng, grid.npix, grid.pixel_arcsec, cfg["tng"], tng_cutouts)
    else:
        model = _choose_model(rng, probs)
        image, kt, meta = _BUILDERS[model](rng, grid, section[model])
    zoom = _uniform(rng, zoom_range)
    image = zoom_image(image, zoom, grid.center_pix)
    sigma_b = _log_uniform(rng, sigma_b_range)
    image = normalise_brightness(image, grid.pixel_arcsec, grid.center_pix, sigma_b,
                                 brightness.background_rate_arcsec2, brightness.effective_area_cm2, central_radius)
    # Real pn fields stay below ~100 counts/s in 0.5-2 keV: a bright, large source is scaled down to the
    # cap (its sigma_b becomes the one that reaches it), so bright fields come from compact cores.
    max_rate = float(section["max_count_rate"])
    rate = float(image.sum(dtype=np.float64)) * brightness.effective_area_cm2
    if rate > max_rate:
        image *= np.float32(max_rate / rate)
        sigma_b *= max_rate / rate
    dx, dy = boresight_offset(rng, grid.width_arcsec, offset_fraction)
    cx, cy = grid.center_pix
    ra_pnt, dec_pnt = (float(v) for v in wcs.wcs_pix2world(np.array([[cx + dx / grid.pixel_arcsec,
                                                                     cy + dy / grid.pixel_arcsec]]), 0)[0])
    points = _sample_agn(rng, grid, agn) if include_agn else empty_point_table()
    meta.update(SIGMA_B=sigma_b, ZOOM=zoom, OFFX_AS=dx, OFFY_AS=dy, KT=kt)
    return image, kt, float(np.mod(ra_pnt, 360.0)), dec_pnt, points, meta


# --------------------------------------------------------------------------- entry point

def generate_source(kind: str, source_id: int, cfg: dict[str, Any], brightness: BrightnessReference,
                    global_seed: int, tng_cutouts: list[dict[str, Any]] | None = None) -> SkyModel:
    """Generate sky model ``source_id`` of ``kind`` ("extended", "agn" or "background") from ``cfg``
    (the ``sources`` config section); deterministic in all arguments.

    * extended: a synthetic cluster / SNR / filament (picked by ``mix``), or with ``sources.kind`` tng /
      mixed the projection of an IllustrisTNG cutout of ``tng_cutouts`` (manifest entries), at the grid centre, zoomed,
      scaled to sigma_b times the background, pointed at with a random boresight offset, plus the
      field AGN if ``include_agn``; bremsstrahlung spectrum.
    * agn: blank image with the AGN population (at least one source), pointing at the grid centre.
    * background: blank image, no sources (the simulator adds particle and cosmic background).

    Offsets ``OFFX_AS``/``OFFY_AS`` in ``meta`` are pointing minus source centre along the image x
    (west, as RA decreases with x) and y (north) axes, in arcsec.
    """
    seed = source_seed(global_seed, kind, source_id)
    rng = np.random.default_rng(seed)
    grid = _grid(cfg)
    wcs = make_wcs(grid.ra, grid.dec, (grid.npix, grid.npix), grid.pixel_arcsec)
    blank = np.zeros((grid.npix, grid.npix), dtype=np.float32)
    common = dict(wcs=wcs, kind=kind, source_id=int(source_id), seed=seed)
    field = {**field_background(cfg, seed).as_meta(), **field_ccd_exposure(cfg, seed)}
    if kind == "background":
        return SkyModel(image=blank, ra_pnt=grid.ra, dec_pnt=grid.dec,
                        meta={"MODEL": "none", "OFFX_AS": 0.0, "OFFY_AS": 0.0, "NAGN": 0, **field}, **common)
    if kind == "agn":
        agn = _agn(cfg)
        points = _sample_agn(rng, grid, agn, min_count=1)   # an empty AGN field would not be a valid sky model
        points, agn_meta = field_agn(points, cfg, seed, grid, with_target=True)
        return SkyModel(image=blank, ra_pnt=grid.ra, dec_pnt=grid.dec, spectrum=("powerlaw", agn.gamma), nh=agn.nh,
                        points=points, meta={"MODEL": "none", "OFFX_AS": 0.0, "OFFY_AS": 0.0, "NAGN": len(points),
                                             **field, **agn_meta}, **common)
    image, kt, ra_pnt, dec_pnt, points, meta = _extended(rng, grid, cfg, brightness, wcs, tng_cutouts, seed)
    agn_meta: dict[str, float] = {}
    if len(points):
        points, agn_meta = field_agn(points, cfg, seed, grid, with_target=False)
    meta.update(field)
    meta.update(agn_meta)
    meta["NAGN"] = len(points)
    meta = {k: (v if isinstance(v, str) else (int(v) if isinstance(v, (int, np.integer)) else float(v)))
            for k, v in meta.items()}
    return SkyModel(image=image, ra_pnt=ra_pnt, dec_pnt=dec_pnt, spectrum=("bremss", kt), nh=_agn(cfg).nh,
                    points=points, meta=meta, **common)
