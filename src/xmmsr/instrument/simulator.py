"""Built-in EPIC-pn event simulator and the matching noise-free expected image.

The Monte-Carlo path draws photons (vectorized numpy, no per-photon Python): Poisson counts from
sky flux x band-averaged effective area x exposure, vignetting by thinning (per photon energy), PSF
offsets drawn at each photon's off-axis angle, azimuth and energy (elliptical King profile by inverse
CDF, r_c scaled by 1/resolution), field-of-view and CCD geometry, energies with a
Gaussian energy resolution, PATTERN and FLAG. The expected image is the Poisson mean of the binned
counts (PATTERN <= 4, FLAG == 0, PI 500-2000 eV) computed analytically with the same model:
cloud-in-cell deposit on a fine detector grid, FFT convolution with the PSF per group of deposits that
share one kernel (1' of off-axis angle, 50 eV of mean energy, an azimuth sector where it is elongated),
detector acceptance and field of view, and block-summing onto the image grid.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft as sfft

from ..errors import InputError
from ..sky.model import FieldBackground, SkyModel, ccd_live_fractions
from .events import COLUMN_DTYPES, EventList, Pointing, event_header, set_positions
from .geometry import FrameLayout, ImageGrid, coverage_1d
from .model import PATTERN_GOOD_MAX, PnInstrument
from .psf import PsfModel
from .response import SpectralResponse

# the exponents (of u, of v) of the columns of _pixel_to_detector's cubic design matrix
CUBIC_POWERS = ((0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2), (3, 0), (2, 1), (1, 2), (0, 3))


def _pixel_to_detector(sky: SkyModel, frame: Pointing, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Detector position (arcsec) of sky-model pixel centres.

    The exact WCS + gnomonic transformation is evaluated on a coarse lattice and a cubic polynomial in
    pixel coordinates is fitted to it (TAN-to-TAN over a pn field is smooth to far below 0.01"); the
    fit is checked on the lattice and the exact transformation used where it is not good enough.
    The polynomial is evaluated separably: per sky row, its coefficients in the column coordinate
    (rows x 4), then either the whole map by one matrix product (most pixels asked for) or four
    products per pixel (sparse skies): a 1800^2 sky in about 0.2 s where a 10-column design matrix
    per pixel took 2.5 s. The sums run in another order than the design matrix's, so positions differ
    from it by < 1e-12 arcsec.
    """
    ny, nx = sky.image.shape
    lattice_x = np.unique(np.linspace(0, nx - 1, min(nx, 24)).round())
    lattice_y = np.unique(np.linspace(0, ny - 1, min(ny, 24)).round())
    gx, gy = np.meshgrid(lattice_x, lattice_y)
    exact = frame.to_detector(*frame.tangent(*sky.wcs.wcs_pix2world(gx.ravel(), gy.ravel(), 0)))
    u0, v0, su, sv = nx / 2.0, ny / 2.0, nx / 2.0, ny / 2.0

    def design(c: np.ndarray, r: np.ndarray) -> np.ndarray:
        u, v = (c - u0) / su, (r - v0) / sv
        return np.column_stack([np.ones_like(u), u, v, u * u, u * v, v * v, u**3, u * u * v, u * v * v, v**3])

    basis = design(gx.ravel(), gy.ravel())
    coeffs = [np.linalg.lstsq(basis, e, rcond=None)[0] for e in exact]
    worst = max(float(np.abs(basis @ c - e).max()) for c, e in zip(coeffs, exact))
    if worst > 1e-3:  # arcsec; very large or strongly distorted sky models
        return frame.to_detector(*frame.tangent(*sky.wcs.wcs_pix2world(cols.astype(float), rows.astype(float), 0)))
    u_powers = ((np.arange(nx) - u0) / su)[:, None] ** np.arange(4)   # (nx, 4): u^0 .. u^3 per column
    v_powers = ((np.arange(ny) - v0) / sv)[:, None] ** np.arange(4)   # (ny, 4)
    dense = rows.size > 0.3 * nx * ny
    out = []
    for c in coeffs:
        a = np.zeros((4, 4))   # a[i, j] multiplies u^i v^j
        for (i, j), value in zip(CUBIC_POWERS, c):
            a[i, j] = value
        per_row = v_powers @ a.T   # (ny, 4): the polynomial's coefficients in u on each row
        if dense:
            out.append((per_row @ u_powers.T).ravel()[rows * nx + cols])
        else:
            out.append(np.einsum("ni,ni->n", per_row[rows], u_powers[cols]))
    return out[0], out[1]


@dataclass(frozen=True)
class _SkyPixels:
    """Flux and detector position of the sky pixels that can reach the padded image region."""

    flux: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    jacobian: np.ndarray  # d(detector arcsec)/d(sky pixel) at the pointing
    point_dx: np.ndarray  # detector positions of the point sources
    point_dy: np.ndarray


def _sky_pixels(sky: SkyModel, frame: Pointing, region: ImageGrid) -> _SkyPixels:
    nx = sky.image.shape[1]
    flat = sky.image.ravel()
    nz = np.flatnonzero(flat > 0)
    c0 = sky.wcs.wcs_world2pix([[frame.ra_pnt, frame.dec_pnt]], 0)[0]
    probe = np.array([c0, c0 + [1.0, 0.0], c0 + [0.0, 1.0]])
    px, py = frame.to_detector(*frame.tangent(*sky.wcs.wcs_pix2world(probe[:, 0], probe[:, 1], 0)))
    jac = np.array([[px[1] - px[0], px[2] - px[0]], [py[1] - py[0], py[2] - py[0]]])
    qx, qy = _point_positions(sky, frame)
    if nz.size == 0:
        return _SkyPixels(np.zeros(0), np.zeros(0), np.zeros(0), jac, qx, qy)
    rows, cols = np.divmod(nz, nx)
    dx, dy = _pixel_to_detector(sky, frame, cols, rows)
    ex, ey = region.edges()
    keep = (dx >= ex[0]) & (dx < ex[-1]) & (dy >= ey[0]) & (dy < ey[-1])
    return _SkyPixels(flat[nz[keep]].astype(np.float64), dx[keep], dy[keep], jac, qx, qy)


def _point_positions(sky: SkyModel, frame: Pointing) -> tuple[np.ndarray, np.ndarray]:
    if len(sky.points) == 0:
        return np.zeros(0), np.zeros(0)
    return frame.to_detector(*frame.tangent(sky.points["RA"], sky.points["DEC"]))


def _spectrum_groups(sky: SkyModel) -> dict[tuple[float, float], np.ndarray]:
    """Indices of point sources sharing one spectrum (photon index, NH)."""
    groups: dict[tuple[float, float], list[int]] = {}
    for i, (g, nh) in enumerate(zip(sky.points["GAMMA"], sky.points["NH"])):
        groups.setdefault((float(g), float(nh)), []).append(i)
    return {k: np.asarray(v) for k, v in groups.items()}


def offaxis_arcmin(instrument: PnInstrument, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Angle (arcmin) from the optical axis, which sets vignetting and PSF."""
    g = instrument.geometry
    return np.hypot(dx - np.float32(g.axis_x_arcsec), dy - np.float32(g.axis_y_arcsec)) / np.float32(60.0)


def offaxis_direction(instrument: PnInstrument, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Off-axis angle (arcmin, :func:`offaxis_arcmin`) and azimuth (radians from +x, counter-clockwise
    around the optical axis) of detector positions (arcsec): what selects the PSF at a position."""
    g = instrument.geometry
    return offaxis_arcmin(instrument, dx, dy), np.arctan2(dy - g.axis_y_arcsec, dx - g.axis_x_arcsec)


def check_exposure(exposure_s: float, resolution: int) -> None:
    """Refuse an exposure that is not a positive number of seconds, or a resolution other than 1 or 2."""
    if not (np.isfinite(exposure_s) and exposure_s > 0):
        raise InputError(None, "exposure", f"{exposure_s!r} s is not a positive number of seconds",
                         "give the exposure in seconds, e.g. 20000")
    if resolution not in (1, 2):
        raise InputError(None, "resolution", f"{resolution!r} is not allowed", "use 1 (real pn) or 2 (2x)")


BYTES_PER_PHOTON = 72   # peak memory per drawn photon, with a margin (measured: 42 over 10^8 photons, resident)


def expected_photons(sky: SkyModel, pixels: "_SkyPixels", instrument: PnInstrument, exposure_s: float,
                     background: bool, field: FieldBackground = FieldBackground()) -> float:
    """Mean number of photons and background events :func:`detect_photons` will draw (before vignetting)."""
    response = instrument.require_response()
    geom, bkg = instrument.geometry, instrument.background
    total = 0.0
    if pixels.flux.size:
        total += float(pixels.flux.sum()) * response.spectral(*sky.spectrum, sky.nh).band_area_cm2 * exposure_s
    for (gamma, nh), idx in _spectrum_groups(sky).items():
        total += float(sky.points["FLUX"][idx].sum()) * response.spectral("powerlaw", gamma, nh).band_area_cm2 * exposure_s
    if background:
        fov_area = np.pi * geom.fov_radius_arcmin**2
        total += bkg.cxb_flux_arcmin2 * field.cxb * fov_area * exposure_s * response.spectral(
            "powerlaw", bkg.cxb_gamma, bkg.cxb_nh).band_area_cm2
        total += bkg.galactic_flux_arcmin2 * field.galactic * fov_area * exposure_s * response.spectral(
            "bremss", bkg.galactic_kt_kev, 0.0).band_area_cm2
        total += bkg.particle_rate_arcmin2 * field.particle * geom.array_width * geom.array_height / 3600.0 * exposure_s
        total += bkg.soft_proton_rate_arcmin2 * field.soft_protons * fov_area * exposure_s
    return total


def memory_limit_bytes() -> int:
    """Half the machine's physical memory (the most one simulation may plan to use)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2
    except (ValueError, OSError, AttributeError):  # not reported on this platform
        return 8 << 30


def _check_memory(n_photons: float, exposure_s: float, limit_bytes: int | None) -> None:
    limit = memory_limit_bytes() if limit_bytes is None else limit_bytes
    need = n_photons * BYTES_PER_PHOTON
    if need > limit:
        raise InputError(None, "exposure", f"{exposure_s:g} s of this sky means about {n_photons:.3g} photons, "
                         f"{need / 2**30:.1f} GiB of memory where {limit / 2**30:.1f} GiB is the limit (half of "
                         "this machine's memory)", f"simulate a shorter exposure (at most ~{exposure_s * limit / need:.3g} s) "
                         "or a fainter sky, and add independent realizations of it if needed")


def simulate_events(sky: SkyModel, instrument: PnInstrument, exposure_s: float, resolution: int,
                    seed: int, background: bool = True, tstart: float = 0.0,
                    memory_limit: int | None = None) -> EventList:
    """Simulate the pn event list of ``sky`` observed for ``exposure_s`` at resolution multiplier 1 or 2.

    Refuses (:class:`InputError`, before drawing anything) a simulation whose photons would need more than
    ``memory_limit`` bytes (default: half the physical memory)."""
    check_exposure(exposure_s, resolution)
    rng = np.random.default_rng(seed)
    frame = Pointing.of(sky, instrument)
    grid = instrument.geometry.image_grid(resolution)
    reach = grid.refine(1, int(np.ceil(instrument.psf.max_radius_arcsec / grid.pixel_arcsec)))
    pixels = _sky_pixels(sky, frame, reach)
    field = FieldBackground.of(sky.meta)
    n_expected = expected_photons(sky, pixels, instrument, exposure_s, background, field)
    _check_memory(n_expected, exposure_s, memory_limit)
    live = ccd_live(sky, instrument)
    slots = TimeSlots(rng, time_slot_count(n_expected))
    n_sky_photons = detect_photons(rng, sky, pixels, instrument, exposure_s, resolution, background, slots.add, field)
    columns = _event_columns(rng, slots, instrument, frame, exposure_s, resolution, tstart, live)
    header = event_header(sky, instrument, frame, exposure_s, resolution, seed, background, tstart)
    for ccd, fraction in enumerate(live, start=1):
        header[f"ONTIME{ccd:02d}"] = (float(exposure_s * fraction), f"[s] on time of CCD {ccd}")
    header["NSKYPHOT"] = (n_sky_photons, "sky photons before vignetting and geometry")
    return EventList(columns, header)


def detect_photons(rng: np.random.Generator, sky: SkyModel, pixels: "_SkyPixels", instrument: PnInstrument,
                   exposure_s: float, resolution: int, background: bool,
                   sink: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
                   field: FieldBackground = FieldBackground()) -> int:
    """The per-photon core: draw photons and background events and keep those detected.

    Hands the detected ones to ``sink`` in cache-sized pieces, as detector positions (arcsec, float32) and
    true energies (keV, float32), and returns the number of sky photons drawn.
    """
    response = instrument.require_response()
    geom = instrument.geometry
    n_sky_photons = 0

    def detect(base_x: np.ndarray, base_y: np.ndarray, spec: SpectralResponse, focused: bool,
               jitter: np.ndarray | None = None) -> None:
        """Process one component in chunks (temporaries stay cache-sized): sub-pixel jitter, energies,
        vignetting, PSF, field of view and CCDs."""
        nonlocal n_sky_photons
        n_sky_photons += base_x.size
        for a, b in _chunks(base_x.size):
            x, y = base_x[a:b].copy(), base_y[a:b].copy()
            if jitter is not None:  # uniform within the sky pixel
                du = rng.random(b - a, dtype=np.float32) - np.float32(0.5)
                dv = rng.random(b - a, dtype=np.float32) - np.float32(0.5)
                x += jitter[0, 0] * du + jitter[0, 1] * dv
                y += jitter[1, 0] * du + jitter[1, 1] * dv
            energy = spec.sample_energies(rng, b - a)
            sink(*_focus_and_detect(rng, x, y, energy, (b - a) if focused else 0, instrument, resolution))

    # Extended emission: Poisson counts per sky pixel, uniform within the pixel.
    if pixels.flux.size:
        ext = response.spectral(*sky.spectrum, sky.nh)
        counts = rng.poisson(pixels.flux * (ext.band_area_cm2 * exposure_s))
        hit = np.flatnonzero(counts)
        detect(np.repeat(pixels.dx[hit].astype(np.float32), counts[hit]),
               np.repeat(pixels.dy[hit].astype(np.float32), counts[hit]), ext, True,
               pixels.jacobian.astype(np.float32))

    # Point sources, grouped by spectrum.
    for (gamma, nh), idx in _spectrum_groups(sky).items():
        spec = response.spectral("powerlaw", gamma, nh)
        counts = rng.poisson(sky.points["FLUX"][idx] * spec.band_area_cm2 * exposure_s)
        detect(np.repeat(pixels.point_dx[idx].astype(np.float32), counts),
               np.repeat(pixels.point_dy[idx].astype(np.float32), counts), spec, True)

    bkg = instrument.background
    if background:
        # Unresolved cosmic X-ray background and Galactic foreground: uniform over the field-of-view disc
        # (a uniform sky stays uniform through the PSF, so no PSF is applied), vignetted.
        fov_area = np.pi * geom.fov_radius_arcmin**2
        for flux, spec in ((bkg.cxb_flux_arcmin2 * field.cxb, response.spectral("powerlaw", bkg.cxb_gamma, bkg.cxb_nh)),
                           (bkg.galactic_flux_arcmin2 * field.galactic,
                            response.spectral("bremss", bkg.galactic_kt_kev, 0.0))):
            n = int(rng.poisson(flux * fov_area * spec.band_area_cm2 * exposure_s))
            cx, cy = _uniform_disc(rng, n, geom)
            detect(cx, cy, spec, False)
        # Particle background: flat over the CCD array, not vignetted, not focused.
        n = int(rng.poisson(bkg.particle_rate_arcmin2 * field.particle * geom.array_width * geom.array_height
                            / 3600.0 * exposure_s))
        px = np.float32(geom.array_x0) + rng.random(n, dtype=np.float32) * np.float32(geom.array_width)
        py = np.float32(geom.array_y0) + rng.random(n, dtype=np.float32) * np.float32(geom.array_height)
        pe = np.float32(0.5) + np.float32(1.5) * rng.random(n, dtype=np.float32)
        on = geom.on_chip(px, py)
        sink(px[on], py[on], pe[on])
        # Soft-proton residual: inside the field of view, a flat energy spectrum, thinned by its own profile.
        if field.soft_protons > 0:
            n = int(rng.poisson(bkg.soft_proton_rate_arcmin2 * field.soft_protons * fov_area * exposure_s))
            sx, sy = _uniform_disc(rng, n, geom)
            theta = offaxis_arcmin(instrument, sx, sy)
            keep = (rng.random(n, dtype=np.float32) < bkg.soft_proton_profile(theta)) & geom.on_chip(sx, sy)
            se = np.float32(0.5) + np.float32(1.5) * rng.random(n, dtype=np.float32)
            sink(sx[keep], sy[keep], se[keep])
    return n_sky_photons


def ccd_live(sky: SkyModel, instrument: PnInstrument) -> np.ndarray:
    """Fraction of the exposure each CCD of the field was live (its CCDLIVE keyword; all 1 without)."""
    g = instrument.geometry
    try:
        return ccd_live_fractions(sky.meta, g.ccds_x * g.ccds_y)
    except ValueError as exc:
        raise InputError(None, "CCDLIVE", str(exc), "regenerate the sky model") from exc


def _ccd_index(instrument: PnInstrument, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """0-based CCD index of on-chip positions (arcsec)."""
    g = instrument.geometry
    ix = np.clip(np.floor((x - g.array_x0) / (g.ccd_width + g.gap_x_arcsec)), 0, g.ccds_x - 1).astype(np.int64)
    iy = np.clip(np.floor((y - g.array_y0) / (g.ccd_height + g.gap_y_arcsec)), 0, g.ccds_y - 1).astype(np.int64)
    return iy * g.ccds_x + ix


def _uniform_disc(rng: np.random.Generator, n: int, geom) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positions (arcsec, float32) uniform over the field-of-view disc."""
    r = np.float32(geom.fov_radius_arcmin * 60.0) * np.sqrt(rng.random(n, dtype=np.float32))
    phi = rng.random(n, dtype=np.float32) * np.float32(2 * np.pi)
    return np.float32(geom.fov_center_x_arcsec) + r * np.cos(phi), np.float32(geom.fov_center_y_arcsec) + r * np.sin(phi)


def _out_of_time(rng: np.random.Generator, y: np.ndarray, instrument: PnInstrument) -> None:
    """Out-of-time events: a fraction of the events arrive during readout and are registered at a
    random row of their CCD column (the readout streaks of bright sources). Modifies ``y`` in place."""
    g = instrument.geometry
    moved = np.flatnonzero(rng.random(y.size, dtype=np.float32) < np.float32(instrument.out_of_time_fraction))
    pitch_y = np.float32(g.ccd_height + g.gap_y_arcsec)
    row = g.ccd_row(y[moved])
    y[moved] = (np.float32(g.array_y0) + row * pitch_y
                + rng.random(moved.size, dtype=np.float32) * np.float32(g.ccd_height))


_CHUNK = 1 << 18


def _chunks(n: int) -> list[tuple[int, int]]:
    return [(a, min(a + _CHUNK, n)) for a in range(0, n, _CHUNK)]


def _focus_and_detect(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, energy: np.ndarray, n_focused: int,
                      instrument: PnInstrument, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin by vignetting, add PSF offsets to the first ``n_focused`` photons, keep those detected."""
    geom, psf = instrument.geometry, instrument.psf
    ax, ay = np.float32(geom.axis_x_arcsec), np.float32(geom.axis_y_arcsec)
    theta2 = np.square(x - ax)
    theta2 += np.square(y - ay)
    theta2 *= np.float32(1.0 / 3600.0)  # arcmin^2
    keep = rng.random(x.size, dtype=np.float32) < instrument.vignetting.of_squared(theta2, energy)
    n_focused = int(np.count_nonzero(keep[:n_focused]))
    x, y, energy = x[keep], y[keep], energy[keep]
    # PSF offsets of the focused photons (a prefix of the arrays), at their own angle, azimuth and energy.
    fx, fy = x[:n_focused] - ax, y[:n_focused] - ay
    theta_as = np.hypot(fx, fy)
    safe = np.maximum(theta_as, np.float32(1e-6))
    ux = np.where(theta_as > 0, fx / safe, np.float32(1.0))
    uy = fy / safe
    ox, oy = psf.sample_offsets(rng, ux, uy, theta_as * np.float32(1.0 / 60.0), energy[:n_focused], resolution)
    x[:n_focused] += ox
    y[:n_focused] += oy
    fov_r2 = np.float32((geom.fov_radius_arcmin * 60.0) ** 2)
    cx, cy = np.float32(geom.fov_center_x_arcsec), np.float32(geom.fov_center_y_arcsec)
    detected = (np.square(x - cx) + np.square(y - cy) <= fov_r2) & geom.on_chip(x, y)
    return x[detected], y[detected], energy[detected]


PHOTONS_PER_SLOT = 1 << 17   # detected events per time slot (aimed at): a slot's events fit in the cache
MAX_TIME_SLOTS = 4096


def time_slot_count(n_photons: float) -> int:
    """Time slots for a simulation expected to draw ``n_photons`` (1 for small skies, at most 4096)."""
    return int(np.clip(np.ceil(n_photons / PHOTONS_PER_SLOT), 1, MAX_TIME_SLOTS))


class TimeSlots:
    """Detected events gathered into equal slots of the exposure as they are made.

    Every event gets a slot drawn uniformly at random when it arrives (:meth:`add`), independent of its
    position, energy and component; each piece is sorted by slot locally (it is cache-sized), so no
    pass over the whole list ever gathers at random. :meth:`slots` then hands out each slot's events in
    a uniformly random order, to be given that slot's sorted arrival times: every event's TIME is then
    uniform over the exposure and independent of everything else, as if drawn on its own and sorted,
    and a TIME split of the list gives independent Poisson images."""

    def __init__(self, rng: np.random.Generator, n_slots: int):
        self.rng, self.n_slots = rng, int(n_slots)
        self._pieces: list[tuple[np.ndarray, np.ndarray]] = []   # (events sorted by slot, slot edges)
        self.total = 0

    def add(self, x: np.ndarray, y: np.ndarray, energy: np.ndarray) -> None:
        """Take detected events: detector positions (arcsec) and true energies (keV), float32."""
        if x.size == 0:
            return
        packed = np.zeros((x.size, 4), dtype=np.float32)   # x, y, energy and padding: one 16-byte item per event
        packed[:, 0], packed[:, 1], packed[:, 2] = x, y, energy
        items = packed.view(np.complex128).ravel()
        if self.n_slots == 1:
            edges = np.array([0, x.size])
        else:
            slot = self.rng.integers(0, self.n_slots, x.size, dtype=np.uint16)
            items = items[np.argsort(slot, kind="stable")]
            edges = np.concatenate([[0], np.cumsum(np.bincount(slot, minlength=self.n_slots))])
        self._pieces.append((items, edges))
        self.total += x.size

    def slots(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Per slot, in time order: (slot index, x, y, energy) of its events in a uniformly random order."""
        for k in range(self.n_slots):
            parts = [p[e[k]:e[k + 1]] for p, e in self._pieces if e[k + 1] > e[k]]
            items = np.concatenate(parts) if parts else np.zeros(0, np.complex128)
            if items.size > 1:
                items = items[self.rng.permutation(items.size)]   # whole 16-byte items: one gather
            block = items.view(np.float32).reshape(-1, 4)
            yield k, block[:, 0].copy(), block[:, 1].copy(), block[:, 2].copy()


def _event_columns(rng: np.random.Generator, slots: TimeSlots, instrument: PnInstrument, frame: Pointing,
                   exposure_s: float, resolution: int, tstart: float, live: np.ndarray) -> dict[str, np.ndarray]:
    """Event-list columns of the detected events, in time order, slot by slot: out-of-time events moved
    along their CCD column, CCDs that saw part of the exposure thinned (at the registered position), then
    arrival times (the slot's sorted uniform times), positions, PI and PATTERN."""
    columns = {name: np.empty(slots.total, dtype=dtype) for name, dtype in COLUMN_DTYPES.items()}
    thin = bool(np.any(live < 1.0))
    slot_s = exposure_s / slots.n_slots
    a = 0
    for k, cx, cy, ce in slots.slots():
        _out_of_time(rng, cy, instrument)
        if thin:   # CCDs that saw part of the exposure: their events thinned (registered position)
            keep = rng.random(cx.size, dtype=np.float32) < live[_ccd_index(instrument, cx, cy)].astype(np.float32)
            cx, cy, ce = cx[keep], cy[keep], ce[keep]
        b = a + cx.size
        columns["TIME"][a:b] = tstart + slot_s * (k + _sorted_uniforms(rng, b - a))
        xi, eta = frame.to_tangent(cx, cy)
        set_positions(columns, slice(a, b), cx, cy, xi, eta, instrument, resolution)
        columns["PI"][a:b] = instrument.require_response().to_pi(rng, ce)
        columns["PATTERN"][a:b] = _draw_patterns(rng, b - a, instrument)
        columns["ENERGY"][a:b] = ce * np.float32(1000.0)
        a = b
    return {name: values[:a] for name, values in columns.items()}


def _sorted_uniforms(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` sorted uniform values in [0, 1) drawn directly as order statistics (normalised partial sums of
    n + 1 exponential spacings), without sorting."""
    if n == 0:
        return np.zeros(0)
    spacings = rng.standard_exponential(n + 1)
    sums = np.cumsum(spacings)
    return sums[:-1] / sums[-1]


def _draw_patterns(rng: np.random.Generator, n: int, instrument: PnInstrument) -> np.ndarray:
    p = instrument.patterns
    u = rng.random(n, dtype=np.float32)
    pattern = np.zeros(n, dtype=np.int16)
    double = (u >= p.single) & (u < p.single + p.double)
    multi = u >= p.single + p.double
    pattern[double] = rng.integers(1, PATTERN_GOOD_MAX + 1, int(double.sum()), dtype=np.int16)
    pattern[multi] = rng.integers(5, 13, int(multi.sum()), dtype=np.int16)
    return pattern


def expected_image(sky: SkyModel, instrument: PnInstrument, exposure_s: float, resolution: int,
                   background: bool = True) -> np.ndarray:
    """Poisson mean of the binned 0.5-2 keV counts (PATTERN <= 4, FLAG == 0), float64, image-grid shape."""
    check_exposure(exposure_s, resolution)
    image = _expected_fine_sources(sky, instrument, exposure_s, resolution)
    if background:
        image += _expected_fine_background(instrument, exposure_s, resolution, FieldBackground.of(sky.meta))
    return _finish(image, instrument, resolution, ccd_live(sky, instrument))


def expected_image_and_background(sky: SkyModel, instrument: PnInstrument, exposure_s: float,
                                  resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`expected_image` and :func:`expected_background` of the sky model's field, the background
    model evaluated once (the same arrays as the two calls)."""
    check_exposure(exposure_s, resolution)
    background = _expected_fine_background(instrument, exposure_s, resolution, FieldBackground.of(sky.meta))
    live = ccd_live(sky, instrument)
    image = _expected_fine_sources(sky, instrument, exposure_s, resolution)
    image += background
    return _finish(image, instrument, resolution, live), _finish(background, instrument, resolution, live)


def expected_background(instrument: PnInstrument, exposure_s: float, resolution: int,
                        field: FieldBackground = FieldBackground(), ccd_live: np.ndarray | None = None) -> np.ndarray:
    """Poisson mean of the binned background counts alone (image-grid shape), with the field's scales and
    the CCDs' live fractions."""
    check_exposure(exposure_s, resolution)
    fine = _expected_fine_background(instrument, exposure_s, resolution, field)
    return _finish(fine, instrument, resolution, ccd_live)


def _finish(fine: np.ndarray, instrument: PnInstrument, resolution: int,
            ccd_live: np.ndarray | None = None) -> np.ndarray:
    """Out-of-time events, then the dead pixels and the CCDs' live fractions (both where the event is
    registered), then binning."""
    core = instrument.geometry.image_grid(resolution).refine(instrument.oversample)
    moved = _with_out_of_time(fine, instrument, resolution)
    if instrument.geometry.dead_pixels:
        moved = moved * instrument.geometry.live(core)
    if ccd_live is not None and np.any(ccd_live < 1.0):
        cx, cy = core.centers()
        gx, gy = np.meshgrid(cx, cy)
        moved = moved * ccd_live[_ccd_index(instrument, gx, gy)]
    return _block_sum(moved, instrument.oversample)


def _with_out_of_time(fine: np.ndarray, instrument: PnInstrument, resolution: int) -> np.ndarray:
    """Expected counts after moving the out-of-time fraction uniformly along each CCD's columns."""
    f = instrument.out_of_time_fraction
    if f == 0:
        return fine
    streaks = _column_streaks(fine, instrument, instrument.geometry.image_grid(resolution).refine(instrument.oversample))
    return (1.0 - f) * fine + f * streaks


def _column_streaks(image: np.ndarray, instrument: PnInstrument, grid) -> np.ndarray:
    """Each CCD's column sums of ``image`` (on ``grid``) spread uniformly along the column."""
    g = instrument.geometry
    _, ey = grid.edges()
    streaks = np.zeros_like(image)
    for iy in range(g.ccds_y):
        _, y0 = g.ccd_origin(0, iy)
        cover = coverage_1d(ey, [(y0, y0 + g.ccd_height)])
        rows = cover > 0
        streaks[rows] += image[rows].sum(axis=0)[None, :] * (cover[rows] / cover[rows].sum())[:, None]
    return streaks


def out_of_time_streaks(counts: np.ndarray, instrument: PnInstrument, resolution: int) -> np.ndarray:
    """The out-of-time (readout) streaks of a count or expected-count image on the ``resolution`` grid:
    the out-of-time fraction of each CCD column's counts, spread along the column. The image's own
    counts stand in for the in-time ones (they hold the streaks already: an error of the out-of-time
    fraction, 6 % in full frame, on the streaks). An image larger than the grid holds it centred, as
    the training set's frames do (the 1x offset rounded down, the 2x offset twice it); a smaller one
    (a cutout, whose columns are not whole) gets no streaks (zeros)."""
    f = instrument.out_of_time_fraction
    image = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    grid = instrument.geometry.image_grid(1)
    s = int(resolution)
    h1, w1 = image.shape[0] // s, image.shape[1] // s
    out = np.zeros_like(image)
    if f == 0 or h1 < grid.ny or w1 < grid.nx:
        return out
    y0, x0 = (s * o for o in FrameLayout.centred(grid, (h1, w1)).offset_1x)
    h, w = s * grid.ny, s * grid.nx
    out[y0:y0 + h, x0:x0 + w] = f * _column_streaks(image[y0:y0 + h, x0:x0 + w], instrument,
                                                    instrument.geometry.image_grid(s))
    return out


def _block_sum(fine: np.ndarray, s: int) -> np.ndarray:
    ny, nx = fine.shape[0] // s, fine.shape[1] // s
    return fine.reshape(ny, s, nx, s).sum(axis=(1, 3))


def _expected_fine_sources(sky: SkyModel, instrument: PnInstrument, exposure_s: float, resolution: int) -> np.ndarray:
    """Expected counts of the sky model on the fine (oversampled) image grid."""
    response = instrument.require_response()
    frame = Pointing.of(sky, instrument)
    geom, psf = instrument.geometry, instrument.psf
    grid = geom.image_grid(resolution)
    s = instrument.oversample
    fine_pixel = grid.pixel_arcsec / s
    margin = int(np.ceil(psf.max_radius_arcsec / fine_pixel))
    fine = grid.refine(s, margin)
    good = instrument.patterns.good

    pixels = _sky_pixels(sky, frame, fine)
    ext = response.spectral(*sky.spectrum, sky.nh)
    weights = [pixels.flux * _count_factor(response, sky.spectrum, sky.nh) * exposure_s * good]
    energies = [np.full(pixels.flux.size, ext.mean_energy_kev)]
    dxs, dys = [pixels.dx], [pixels.dy]
    qx, qy = pixels.point_dx, pixels.point_dy
    for (gamma, nh), idx in _spectrum_groups(sky).items():
        weights.append(sky.points["FLUX"][idx] * _count_factor(response, ("powerlaw", gamma), nh) * exposure_s * good)
        energies.append(np.full(idx.size, response.spectral("powerlaw", gamma, nh).mean_energy_kev))
        dxs.append(qx[idx])
        dys.append(qy[idx])
    w = np.concatenate(weights)
    dx, dy = np.concatenate(dxs), np.concatenate(dys)
    theta = offaxis_arcmin(instrument, dx, dy)
    energy = np.concatenate(energies)
    # vignetting at the spectrum's mean detected energy (the pn CCF varies by < 0.3 % over 0.5-2 keV)
    w = w * instrument.vignetting(theta, energy)
    azimuth = np.arctan2(dy - geom.axis_y_arcsec, dx - geom.axis_x_arcsec)
    focused = np.zeros(fine.shape)
    for (band, e_key, sector, n_sectors), sel in _psf_groups(psf, theta, azimuth, energy).items():
        theta_c = (band + 0.5) * PSF_BAND_ARCMIN
        az_c = -np.pi + (sector + 0.5) * 2.0 * np.pi / n_sectors
        kernel = _compensated_kernel(psf, fine_pixel, theta_c, az_c, e_key * PSF_ENERGY_STEP_KEV, resolution)
        _add_convolved(focused, fine, dx[sel], dy[sel], w[sel], kernel)
    core = grid.refine(s)
    np.clip(focused, 0.0, None, out=focused)
    inner = (slice(margin, margin + core.ny), slice(margin, margin + core.nx))
    return focused[inner] * geom.acceptance(core, dead=False) * geom.fov_fraction(core)


PSF_BAND_ARCMIN = 1.0        # the expected image uses one PSF per 1' of off-axis angle ...
PSF_ENERGY_STEP_KEV = 0.05   # ... per 50 eV of mean energy, and per azimuth sector where the PSF is elongated


def _psf_groups(psf: PsfModel, theta: np.ndarray, azimuth: np.ndarray,
                energy: np.ndarray) -> dict[tuple[int, int, int, int], np.ndarray]:
    """Indices of deposits sharing one PSF kernel: (off-axis band, energy step, azimuth sector, sectors)."""
    band = np.floor(theta / PSF_BAND_ARCMIN).astype(np.int64)
    e_key = np.rint(energy / PSF_ENERGY_STEP_KEV).astype(np.int64)
    groups: dict[tuple[int, int, int, int], np.ndarray] = {}
    key = band * 1000 + e_key
    order = np.argsort(key, kind="stable")
    uniq, starts = np.unique(key[order], return_index=True)
    for k, idx in zip(uniq, np.split(order, starts[1:])):
        b, e = int(k // 1000), int(k % 1000)
        q = float(psf.parameters((b + 0.5) * PSF_BAND_ARCMIN, e * PSF_ENERGY_STEP_KEV, 1)[2])
        n_sectors = 1 if q <= 1.01 else (6 if q < 1.05 else (12 if q < 1.3 else 24))
        if n_sectors == 1:
            groups[(b, e, 0, 1)] = idx
            continue
        sector = np.floor((azimuth[idx] + np.pi) / (2.0 * np.pi / n_sectors)).astype(np.int64) % n_sectors
        for sec in np.unique(sector):
            groups[(b, e, int(sec), n_sectors)] = idx[sector == sec]
    return groups


def _add_convolved(out: np.ndarray, grid: ImageGrid, x: np.ndarray, y: np.ndarray, w: np.ndarray,
                   kernel: np.ndarray) -> None:
    """Add the cloud-in-cell deposit of (x, y, w) convolved with ``kernel`` to ``out`` (the pixels of
    ``grid``), working on the deposit's bounding box only; what falls off the grid is dropped."""
    p = grid.pixel_arcsec
    i0 = np.floor((x - grid.x0_arcsec) / p - 0.5).astype(np.int64)
    j0 = np.floor((y - grid.y0_arcsec) / p - 0.5).astype(np.int64)
    ilo, jlo = int(i0.min()), int(j0.min())
    box = ImageGrid(int(i0.max()) - ilo + 2, int(j0.max()) - jlo + 2, p, grid.x0_arcsec + ilo * p,
                    grid.y0_arcsec + jlo * p)
    deposit = _cloud_in_cell(box, x, y, w)
    h = kernel.shape[0] // 2
    cells = np.flatnonzero(deposit)
    if cells.size <= DIRECT_DEPOSITS:   # a few point sources: shifted kernels, cheaper than an FFT of the box
        scaled = np.empty_like(kernel)   # one buffer for all cells (a fresh array per cell costs page faults)
        for cell in cells:
            r, c = divmod(int(cell), box.nx)
            np.multiply(kernel, deposit[r, c], out=scaled)
            _add_clipped(out, scaled, jlo + r - h, ilo + c - h)
        return
    _add_clipped(out, fft_convolve(deposit, kernel), jlo - h, ilo - h)


def fft_convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Full linear convolution of two real 2-D arrays by real FFTs of the next fast lengths: the arithmetic
    of ``scipy.signal.fftconvolve(image, kernel, mode="full")`` (the same bits, for arrays of at least
    2 x 2), without importing scipy.signal (seconds of start-up: it imports scipy.stats)."""
    shape = (image.shape[0] + kernel.shape[0] - 1, image.shape[1] + kernel.shape[1] - 1)
    fshape = [sfft.next_fast_len(n, True) for n in shape]
    product = sfft.rfftn(image, fshape, axes=(0, 1)) * sfft.rfftn(kernel, fshape, axes=(0, 1))
    return sfft.irfftn(product, fshape, axes=(0, 1))[: shape[0], : shape[1]]


DIRECT_DEPOSITS = 32   # deposit cells up to which the kernel is added cell by cell instead of by FFT


def _add_clipped(out: np.ndarray, patch: np.ndarray, r0: int, c0: int) -> None:
    """Add ``patch`` to ``out`` with its [0, 0] at row ``r0``, column ``c0``; what falls outside is dropped."""
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + patch.shape[0], out.shape[0]), min(c0 + patch.shape[1], out.shape[1])
    if rs < re and cs < ce:
        out[rs:re, cs:ce] += patch[rs - r0: re - r0, cs - c0: ce - c0]


@lru_cache(maxsize=1024)
def _compensated_kernel(psf: PsfModel, pixel: float, theta: float, azimuth: float, energy: float,
                        resolution: int) -> np.ndarray:
    """The PSF kernel divided (in Fourier space) by the transfer function of the cloud-in-cell deposit, so
    that deposited positions act as exact sub-pixel positions; the kernel grown by 8 pixels a side.

    The division runs on the kernel zero-padded to the next odd length with small prime factors (with the
    default 300" truncation the grown sizes, 317 at 1x and 617 at 2x, are primes, whose FFTs took most of
    the time), then is cut back to the grown size."""
    kernel = psf.kernel(pixel, theta, azimuth, energy, resolution)
    n = kernel.shape[0]
    m = _odd_fast_length(n + 2 * COMPENSATION_MARGIN)
    before = (m - n) // 2
    padded = np.pad(kernel, (before, m - n - before))
    cic = (np.sinc(sfft.fftfreq(m))[:, None] * np.sinc(sfft.rfftfreq(m))[None, :]) ** 2
    full = sfft.fftshift(sfft.irfft2(sfft.rfft2(sfft.ifftshift(padded)) / cic, s=(m, m)))
    h, c = n // 2 + COMPENSATION_MARGIN, m // 2
    out = full[c - h: c + h + 1, c - h: c + h + 1].copy()
    out.setflags(write=False)
    return out


COMPENSATION_MARGIN = 8   # pixels a compensated kernel reaches beyond the PSF kernel (its ringing)


def _odd_fast_length(n: int) -> int:
    """The smallest odd length >= n whose FFT is fast (factors 2, 3, 5, 7, 11 only; odd keeps the centre)."""
    while n % 2 == 0 or sfft.next_fast_len(n, True) != n:
        n += 1
    return n


def _expected_fine_background(instrument: PnInstrument, exposure_s: float, resolution: int,
                               field: FieldBackground = FieldBackground()) -> np.ndarray:
    """Expected background counts (all components, with the field's scales) on the fine image grid."""
    response = instrument.require_response()
    bkg = instrument.background
    maps = _background_maps(instrument, resolution)
    area_arcmin2 = maps.pixel_arcsec**2 / 3600.0 * exposure_s * instrument.patterns.good
    sky = np.zeros(maps.in_fov.shape)
    for flux, spec, vignetting in (
            (bkg.cxb_flux_arcmin2 * field.cxb, response.spectral("powerlaw", bkg.cxb_gamma, bkg.cxb_nh), maps.cxb_vignetting),
            (bkg.galactic_flux_arcmin2 * field.galactic, response.spectral("bremss", bkg.galactic_kt_kev, 0.0),
             maps.galactic_vignetting)):
        sky += flux * spec.band_area_cm2 * vignetting
    counts = sky * area_arcmin2 * maps.in_fov
    counts += bkg.particle_rate_arcmin2 * field.particle * area_arcmin2 * maps.acceptance
    if field.soft_protons > 0:
        counts += (bkg.soft_proton_rate_arcmin2 * field.soft_protons * area_arcmin2
                   * maps.soft_proton_profile * maps.in_fov)
    return counts


@dataclass(frozen=True)
class _BackgroundMaps:
    """What the background expectation needs on the fine grid that no field changes (computed once)."""

    pixel_arcsec: float
    cxb_vignetting: np.ndarray
    galactic_vignetting: np.ndarray
    acceptance: np.ndarray       # CCD area (dead pixels not applied)
    in_fov: np.ndarray           # CCD area inside the field of view
    soft_proton_profile: np.ndarray


@lru_cache(maxsize=4)
def _background_maps(instrument: PnInstrument, resolution: int) -> _BackgroundMaps:
    response = instrument.require_response()
    geom, bkg = instrument.geometry, instrument.background
    core = geom.image_grid(resolution).refine(instrument.oversample)
    cx, cy = core.centers()
    theta = offaxis_arcmin(instrument, cx[None, :], cy[:, None])
    accept = geom.acceptance(core, dead=False)
    maps = _BackgroundMaps(
        core.pixel_arcsec,
        instrument.vignetting(theta, response.spectral("powerlaw", bkg.cxb_gamma, bkg.cxb_nh).mean_energy_kev),
        instrument.vignetting(theta, response.spectral("bremss", bkg.galactic_kt_kev, 0.0).mean_energy_kev),
        accept, accept * geom.fov_fraction(core), bkg.soft_proton_profile(theta))
    for array in (maps.cxb_vignetting, maps.galactic_vignetting, maps.in_fov, maps.soft_proton_profile):
        array.setflags(write=False)
    return maps


def _count_factor(response, spectrum: tuple[str, float], nh: float) -> float:
    """Binned counts per unit photon flux and second on axis (in-band counts per band photon)."""
    return response.spectral(spectrum[0], spectrum[1], nh).band_area_cm2


def _cloud_in_cell(grid: ImageGrid, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Deposit weights at positions (arcsec) bilinearly onto ``grid`` pixels (mass-conserving inside)."""
    fx = (x - grid.x0_arcsec) / grid.pixel_arcsec - 0.5
    fy = (y - grid.y0_arcsec) / grid.pixel_arcsec - 0.5
    i0 = np.floor(fx).astype(np.int64)
    j0 = np.floor(fy).astype(np.int64)
    tx, ty = fx - i0, fy - j0
    out = np.zeros(grid.nx * grid.ny)
    for di, wx in ((0, 1.0 - tx), (1, tx)):
        for dj, wy in ((0, 1.0 - ty), (1, ty)):
            i, j = i0 + di, j0 + dj
            ok = (i >= 0) & (i < grid.nx) & (j >= 0) & (j < grid.ny)
            out += np.bincount(j[ok] * grid.nx + i[ok], weights=(w * wx * wy)[ok], minlength=out.size)
    return out.reshape(grid.ny, grid.nx)
