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


# --------------------------------------------------------------------------- config access and checks

def _section(cfg: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = cfg.get(key) if isinstance(cfg, dict) else None
    if not isinstance(value, dict):
        raise InputError(None, f"{where}.{key}", "is missing or not a mapping", f"give the '{where}.{key}' section")
    return value


def _number(section: dict[str, Any], key: str, where: str, low: float | None = None, high: float | None = None,
            strict_low: bool = False) -> float:
    name = f"{where}.{key}"
    if key not in section:
        raise InputError(None, name, "is missing", f"give '{name}'")
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise InputError(None, name, f"{value!r} is not a finite number", "give a number")
    _check_bounds(name, float(value), float(value), low, high, strict_low)
    return float(value)


def _check_bounds(name: str, lo: float, hi: float, low: float | None, high: float | None, strict_low: bool) -> None:
    """Raise if ``lo`` is below ``low`` (or equal, when strict) or ``hi`` above ``high``."""
    if low is not None and (lo <= low if strict_low else lo < low):
        raise InputError(None, name, f"{lo} is {'<=' if strict_low else '<'} {low}",
                         f"give values {'>' if strict_low else '>='} {low}")
    if high is not None and hi > high:
        raise InputError(None, name, f"{hi} exceeds {high}", f"give values <= {high}")


def _range(section: dict[str, Any], key: str, where: str, low: float | None = None, high: float | None = None,
           strict_low: bool = False, integer: bool = False) -> tuple[float, float]:
    name = f"{where}.{key}"
    if key not in section:
        raise InputError(None, name, "is missing", f"give '{name}' as [low, high]")
    value = section[key]
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) for v in value)):
        raise InputError(None, name, f"{value!r} is not a [low, high] pair of numbers", "give [low, high]")
    lo, hi = float(value[0]), float(value[1])
    if lo > hi:
        raise InputError(None, name, f"low {value[0]} > high {value[1]}", "give [low, high] with low <= high")
    if integer and not (lo.is_integer() and hi.is_integer()):
        raise InputError(None, name, f"{value} are not integers", "give integer counts")
    _check_bounds(name, lo, hi, low, high, strict_low)
    return lo, hi


def _mix(section: dict[str, Any]) -> np.ndarray:
    """Probabilities of the extended models, in the order of ``EXTENDED_MODELS``."""
    where = "sources.extended.mix"
    mix = _section(section, "mix", "sources.extended")
    unknown = sorted(set(mix) - set(EXTENDED_MODELS))
    if unknown:
        raise InputError(None, where, f"unknown model(s) {unknown}", f"use the models {list(EXTENDED_MODELS)}")
    probs = np.array([_number(mix, m, where, low=0.0, high=1.0) if m in mix else 0.0 for m in EXTENDED_MODELS])
    if abs(probs.sum() - 1.0) > 1e-6:
        raise InputError(None, where, f"the probabilities {dict(mix)} sum to {probs.sum():.6g}",
                         "give probabilities that sum to 1")
    return probs


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
    sky = _section(cfg, "sky", "sources")
    npix = _number(sky, "npix", "sources.sky", low=1.0)
    if not npix.is_integer():
        raise InputError(None, "sources.sky.npix", f"{sky['npix']} is not an integer", "give a pixel count")
    return _Grid(int(npix), _number(sky, "pixel_arcsec", "sources.sky", low=0.0, strict_low=True),
                 _number(sky, "ra_deg", "sources.sky", low=0.0, high=360.0),
                 _number(sky, "dec_deg", "sources.sky", low=-90.0, high=90.0))


@dataclass(frozen=True)
class _AgnConfig:
    flux_min: float
    flux_max: float
    gamma: float
    nh: float


def _agn(cfg: dict[str, Any]) -> _AgnConfig:
    agn = _section(cfg, "agn", "sources")
    where = "sources.agn"
    flux_min = _number(agn, "flux_min", where, low=0.0, strict_low=True)
    flux_max = _number(agn, "flux_max", where, low=0.0, strict_low=True)
    if flux_min >= flux_max:
        raise InputError(None, f"{where}.flux_min", f"{flux_min} is not below flux_max {flux_max}",
                         "give flux_min < flux_max (erg cm-2 s-1, 0.5-2 keV)")
    return _AgnConfig(flux_min, flux_max, _number(agn, "gamma", where), _number(agn, "nh", where, low=0.0))


def _sample_agn(rng: np.random.Generator, grid: _Grid, agn: _AgnConfig, min_count: int = 0) -> np.ndarray:
    return sample_agn(rng, grid.ra, grid.dec, grid.width_arcsec / 3600.0, agn.flux_min, agn.flux_max,
                      agn.gamma, agn.nh, min_count=min_count)


# --------------------------------------------------------------------------- extended-source models

def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def _cluster(rng: np.random.Generator, grid: _Grid, section: dict[str, Any]) -> tuple[np.ndarray, float, Meta]:
    where = "sources.extended.cluster"
    rc = _uniform(rng, _range(section, "rc_arcsec", where, low=0.0, strict_low=True))
    beta = _uniform(rng, _range(section, "beta", where, low=0.0, strict_low=True))
    ellip = _uniform(rng, _range(section, "ellipticity", where, low=0.0, high=0.95))
    pa = float(rng.uniform(0.0, 180.0))
    n_lo, n_hi = _range(section, "clumps", where, low=0.0, integer=True)
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
    if rng.random() < _number(section, "cool_core_prob", where, low=0.0, high=1.0):
        rc_fraction = _uniform(rng, _range(section, "cool_core_rc_fraction", where, low=0.0, strict_low=True))
        amplitude = _log_uniform(rng, _range(section, "cool_core_amplitude", where, low=0.0, strict_low=True))
        cool_core = CoolCore(rc_arcsec=rc * rc_fraction, amplitude=amplitude)
        meta.update(CC_RC_AS=cool_core.rc_arcsec, CC_AMP=cool_core.amplitude)
    meta["COOLCORE"] = int(cool_core is not None)

    cavities = None
    if rng.random() < _number(section, "cavity_prob", where, low=0.0, high=1.0):
        cavities = CavityPair(distance_arcsec=rc * float(rng.uniform(0.7, 1.5)),
                              angle_deg=float(rng.uniform(0.0, 180.0)),
                              radius_arcsec=rc * float(rng.uniform(0.3, 0.6)), axis_ratio=float(rng.uniform(0.6, 1.0)),
                              depth=float(rng.uniform(0.3, 0.8)))
        meta.update(CAV_D_AS=cavities.distance_arcsec, CAV_R_AS=cavities.radius_arcsec, CAVDEPTH=cavities.depth)
    meta["CAVITY"] = int(cavities is not None)

    shock = None
    if rng.random() < _number(section, "shock_prob", where, low=0.0, high=1.0):
        shock = Shock(radius_arcsec=rc * float(rng.uniform(1.5, 4.0)), angle_deg=float(rng.uniform(0.0, 360.0)),
                      half_opening_deg=float(rng.uniform(30.0, 90.0)), jump=float(rng.uniform(1.3, 3.0)))
        meta.update(SHK_R_AS=shock.radius_arcsec, SHK_JUMP=shock.jump)
    meta["SHOCK"] = int(shock is not None)

    kt = _uniform(rng, _range(section, "kT_keV", where, low=0.0, strict_low=True))
    image = beta_cluster((grid.npix, grid.npix), grid.pixel_arcsec, grid.center_pix, rc, beta, ellip, pa,
                         clumps=clumps, cool_core=cool_core, cavities=cavities, shock=shock)
    return image, kt, meta


def _snr(rng: np.random.Generator, grid: _Grid, section: dict[str, Any]) -> tuple[np.ndarray, float, Meta]:
    where = "sources.extended.snr"
    r_out = _uniform(rng, _range(section, "radius_arcsec", where, low=0.0, strict_low=True))
    thickness = _uniform(rng, _range(section, "thickness_fraction", where, low=0.0, high=1.0, strict_low=True))
    gradient, gradient_pa = float(rng.uniform(0.0, 0.5)), float(rng.uniform(0.0, 360.0))
    kt = _uniform(rng, _range(section, "kT_keV", where, low=0.0, strict_low=True))
    r_in = r_out * (1.0 - thickness)
    image = snr_shell((grid.npix, grid.npix), grid.pixel_arcsec, grid.center_pix, r_in, r_out, gradient, gradient_pa)
    return image, kt, {"MODEL": "snr", "RIN_AS": r_in, "ROUT_AS": r_out, "GRAD": gradient, "GRAD_PA": gradient_pa}


def _filament(rng: np.random.Generator, grid: _Grid, section: dict[str, Any]) -> tuple[np.ndarray, float, Meta]:
    where = "sources.extended.filament"
    length = _uniform(rng, _range(section, "length_arcsec", where, low=0.0, strict_low=True))
    width = _uniform(rng, _range(section, "width_arcsec", where, low=0.0, strict_low=True))
    pa, bend = float(rng.uniform(0.0, 180.0)), float(rng.uniform(-60.0, 60.0))
    kt = _uniform(rng, _range(section, "kT_keV", where, low=0.0, strict_low=True))
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
    if origin not in SOURCE_ORIGINS:
        raise InputError(None, "sources.kind", f"{origin!r} is unknown", f"use one of {list(SOURCE_ORIGINS)}")
    if origin == "mixed":
        fraction = _number(_section(cfg, "tng", "sources"), "mixed_fraction", "sources.tng", low=0.0, high=1.0)
        return bool(np.random.default_rng([seed, TNG_STREAM]).random() < fraction)
    return origin == "tng"


def field_background(cfg: dict[str, Any], seed: int) -> FieldBackground:
    """The background scales of one field (``sources.field_background``), from their own random stream so
    that the source draws do not depend on them."""
    where = "sources.field_background"
    section = cfg.get("field_background") or {}
    if not section:
        return FieldBackground()
    rng = np.random.default_rng([seed, FIELD_BACKGROUND_STREAM])
    particle = _uniform(rng, _range(section, "particle", where, low=0.0, strict_low=True))
    cxb = _uniform(rng, _range(section, "cxb", where, low=0.0, strict_low=True))
    galactic = _log_uniform(rng, _range(section, "galactic", where, low=0.0, strict_low=True))
    fraction = _number(section, "soft_proton_fraction", where, low=0.0, high=1.0)
    level = _log_uniform(rng, _range(section, "soft_protons", where, low=0.0, strict_low=True))
    soft = level if rng.random() < fraction else 0.0
    return FieldBackground(particle=particle, cxb=cxb, galactic=galactic, soft_protons=soft)


def field_ccd_exposure(cfg: dict[str, Any], seed: int) -> dict[str, str]:
    """In a fraction ``sources.field_exposure.fraction`` of the fields, 1 to ``max_ccds`` random CCDs lose a
    fraction (uniform in ``loss``) of the exposure, as when a CCD is switched off or flagged for part of
    an observation; returns the ``CCDLIVE`` keyword (empty when every CCD saw the whole exposure)."""
    where = "sources.field_exposure"
    section = cfg.get("field_exposure") or {}
    fraction = _number(section, "fraction", where, low=0.0, high=1.0) if "fraction" in section else 0.0
    rng = np.random.default_rng([seed, CCD_EXPOSURE_STREAM])
    if not rng.random() < fraction:
        return {}
    max_ccds = int(section.get("max_ccds", 1))
    lo, hi = _range(section, "loss", where, low=0.0, high=1.0)
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
    where = "sources.agn"
    agn_cfg, agn = _section(cfg, "agn", "sources"), _agn(cfg)
    rng = np.random.default_rng([seed, AGN_FIELD_STREAM])

    def log_uniform(key: str, default: tuple[float, float]) -> float:
        bounds = _range(agn_cfg, key, where, low=0.0, strict_low=True) if key in agn_cfg else default
        return float(f"{_log_uniform(rng, bounds):.6g}")   # exact through a FITS header

    scale = log_uniform("field_flux_scale", (1.0, 1.0))
    nh = log_uniform("field_nh", (agn.nh, agn.nh))
    fraction = _number(agn_cfg, "target_fraction", where, low=0.0, high=1.0) if "target_fraction" in agn_cfg else 0.0
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
    return out, {"AGNSCALE": scale, "AGNNH": nh, "AGNTGT": target_flux if has_target else 0.0}


def _extended(rng: np.random.Generator, grid: _Grid, cfg: dict[str, Any], brightness: BrightnessReference,
              wcs: Any, tng_cutouts: list[dict[str, Any]] | None = None,
              seed: int = 0) -> tuple[np.ndarray, float, float, float, np.ndarray, Meta]:
    where = "sources.extended"
    section = _section(cfg, "extended", "sources")
    probs = _mix(section)
    zoom_range = _range(section, "zoom", where, low=1.0)
    sigma_b_range = _range(section, "sigma_b", where, low=0.0, strict_low=True)
    offset_fraction = _number(section, "offset_sigma_fraction", where, low=0.0)
    central_radius = _number(section, "central_radius_arcsec", where, low=0.0, strict_low=True)
    include_agn = section.get("include_agn", True)
    if not isinstance(include_agn, bool):
        raise InputError(None, f"{where}.include_agn", f"{include_agn!r} is not a boolean", "give true or false")
    agn = _agn(cfg)
    if cfg.get("kind") == "images":
        from .images import image_extended

        image, kt, meta = image_extended(rng, grid.npix, grid.pixel_arcsec, _section(cfg, "images", "sources"))
    elif _from_tng(cfg, seed):
        from .tng.sky import tng_extended_image

        if tng_cutouts is None:
            raise InputError(None, "sources.kind", f"is {cfg.get('kind')!r} but no TNG cutout manifest was given",
                             "run the workflow (rule tng_download writes the manifest) or pass the manifest's cutouts")
        image, kt, meta = tng_extended_image(rng, grid.npix, grid.pixel_arcsec, _section(cfg, "tng", "sources"),
                                             tng_cutouts)
    else:
        model = _choose_model(rng, probs)
        image, kt, meta = _BUILDERS[model](rng, grid, _section(section, model, where))
    zoom = _uniform(rng, zoom_range)
    image = zoom_image(image, zoom, grid.center_pix)
    sigma_b = _log_uniform(rng, sigma_b_range)
    image = normalise_brightness(image, grid.pixel_arcsec, grid.center_pix, sigma_b,
                                 brightness.background_rate_arcsec2, brightness.effective_area_cm2, central_radius)
    # Real pn fields stay below ~100 counts/s in 0.5-2 keV: a bright, large source is scaled down to the
    # cap (its sigma_b becomes the one that reaches it), so bright fields come from compact cores.
    max_rate = _number(section, "max_count_rate", where, low=0.0, strict_low=True)
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
