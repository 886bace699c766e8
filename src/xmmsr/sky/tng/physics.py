"""Gas physics of TNG cutouts: temperature, 0.5-2 keV emissivity, and a flux-conserving projection.

Units are cgs unless a name says otherwise. Assumptions (stated in the README as well):

* primordial hydrogen mass fraction X = 0.76, adiabatic index 5/3, fully described by TNG's
  ``ElectronAbundance`` (x_e = n_e / n_H): mu = 4 / (1 + 3X + 4 X x_e), T = (gamma - 1) u mu m_p / k_B;
* emission of an optically thin plasma in collisional ionisation equilibrium with solar abundances,
  n_e n_H Lambda(T), with Lambda from the tabulated band emissivity shipped in
  ``resources/physics/cie_band_emissivity_solar.csv`` (source in its header);
* star-forming cells (their temperature is that of TNG's effective equation of state) and cold gas
  (T below ``min_temperature_k``, 10^5.2 K by default) emit nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import fft as sfft
from scipy import ndimage
from scipy.integrate import trapezoid

from ...errors import InputError

X_HYDROGEN = 0.76
GAMMA = 5.0 / 3.0
PROTON_MASS_G = 1.67262192369e-24
BOLTZMANN_ERG_K = 1.380649e-16
KEV_ERG = 1.602176634e-9
KEV_K = KEV_ERG / BOLTZMANN_ERG_K          # 1 keV in kelvin (1.1605e7 K)
MSUN_G = 1.98841e33
KPC_CM = 3.0856775814913673e21
MIN_TEMPERATURE_K = 10.0**5.2
EMISSIVITY_TABLE = "resources/physics/cie_band_emissivity_solar.csv"


def temperature_k(internal_energy_km2_s2: np.ndarray, electron_abundance: np.ndarray,
                  x_hydrogen: float = X_HYDROGEN) -> np.ndarray:
    """Gas temperature (K) from TNG's specific internal energy ((km/s)^2) and electron abundance."""
    mu = 4.0 / (1.0 + 3.0 * x_hydrogen + 4.0 * x_hydrogen * np.asarray(electron_abundance, dtype=np.float64))
    u_cgs = np.asarray(internal_energy_km2_s2, dtype=np.float64) * 1e10
    return (GAMMA - 1.0) * u_cgs * mu * PROTON_MASS_G / BOLTZMANN_ERG_K


class BandEmissivity:
    """Tabulated cumulative emissivity j(>E, T) (erg cm^3 s^-1, per n_e n_H) and band integrals of it.

    The CSV has a column ``log10_T_K`` and columns ``gt_E`` (emissivity at photon energies above E keV).
    A band [E1, E2] is j(>E1) - j(>E2); band edges between the tabulated thresholds are interpolated
    linearly in (log E, log j). Temperatures are interpolated linearly in (log T, log Lambda); below the
    table the emissivity is 0, above it Lambda is extrapolated along the last interval.
    """

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        try:
            lines = [ln for ln in p.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        except OSError as exc:
            raise InputError(p, "file", f"the emissivity table cannot be read ({exc})",
                             f"give the band-emissivity CSV (default {EMISSIVITY_TABLE})") from exc
        header = [c.strip() for c in lines[0].split(",")] if lines else []
        if not header or header[0] != "log10_T_K" or not all(c.startswith("gt_") for c in header[1:]) or len(header) < 3:
            raise InputError(p, "header", f"expected 'log10_T_K,gt_E1,gt_E2,...', found {header}",
                             "use the format of resources/physics/cie_band_emissivity_solar.csv")
        try:
            table = np.array([[float(v) for v in ln.split(",")] for ln in lines[1:]], dtype=np.float64)
            self.thresholds_kev = np.array([float(c[3:]) for c in header[1:]])
        except ValueError as exc:
            raise InputError(p, "values", f"not all numbers ({exc})", "fix the table") from exc
        if table.ndim != 2 or table.shape[1] != len(header) or len(table) < 2:
            raise InputError(p, "rows", "need at least two rows with one value per column", "fix the table")
        if np.any(np.diff(table[:, 0]) <= 0) or np.any(np.diff(self.thresholds_kev) <= 0) or np.any(table[:, 1:] <= 0):
            raise InputError(p, "values", "log10_T_K and the thresholds must increase and emissivities be > 0",
                             "fix the table (write 1e-99 for zero)")
        self.path = p
        self.log_t = table[:, 0]
        self.log_j = np.log10(table[:, 1:])  # (n_T, n_E)

    def band_table(self, e_lo_kev: float, e_hi_kev: float) -> np.ndarray:
        """Lambda of the band [e_lo, e_hi] keV at the tabulated temperatures (erg cm^3 s^-1)."""
        lo, hi = self.thresholds_kev[0], self.thresholds_kev[-1]
        if not (lo <= e_lo_kev < e_hi_kev <= hi):
            raise InputError(self.path, "band", f"[{e_lo_kev:g}, {e_hi_kev:g}] keV is outside the table's "
                             f"[{lo:g}, {hi:g}] keV", "use a band (and redshift) inside the tabulated energies")
        log_e = np.log10(self.thresholds_kev)

        def cumulative(e_kev: float) -> np.ndarray:
            x = np.log10(e_kev)
            i = int(np.clip(np.searchsorted(log_e, x, side="right") - 1, 0, len(log_e) - 2))
            w = (x - log_e[i]) / (log_e[i + 1] - log_e[i])
            return 10.0 ** ((1.0 - w) * self.log_j[:, i] + w * self.log_j[:, i + 1])

        return np.clip(cumulative(e_lo_kev) - cumulative(e_hi_kev), 0.0, None)

    def band(self, temperature: np.ndarray, e_lo_kev: float, e_hi_kev: float) -> np.ndarray:
        """Lambda(T) of the band [e_lo, e_hi] keV (erg cm^3 s^-1) at ``temperature`` (K)."""
        lam = np.log10(np.maximum(self.band_table(e_lo_kev, e_hi_kev), 1e-99))
        log_t = np.log10(np.maximum(np.asarray(temperature, dtype=np.float64), 1.0))
        out = np.interp(log_t, self.log_t, lam)
        above = log_t > self.log_t[-1]
        if np.any(above):
            slope = (lam[-1] - lam[-2]) / (self.log_t[-1] - self.log_t[-2])
            out[above] = lam[-1] + slope * (log_t[above] - self.log_t[-1])
        result = 10.0 ** out
        result[(log_t < self.log_t[0]) | (out < -90.0)] = 0.0
        return result


@lru_cache(maxsize=4)
def load_emissivity(path: str) -> BandEmissivity:
    """The band-emissivity table at ``path`` (cached per process)."""
    return BandEmissivity(path)


def mean_photon_energy_kev(temperature: np.ndarray, e_lo_kev: float, e_hi_kev: float) -> np.ndarray:
    """Mean photon energy (keV) in [e_lo, e_hi] of a bremsstrahlung continuum (constant Gaunt factor)
    at ``temperature`` (K): int exp(-E/kT) dE / int exp(-E/kT) / E dE; turns band energy into photons."""
    log_t_grid = np.linspace(4.0, 10.0, 241)
    energies = np.geomspace(e_lo_kev, e_hi_kev, 513)
    kt = 10.0 ** log_t_grid / KEV_K
    boltz = np.exp(-(energies[None, :] - e_lo_kev) / kt[:, None])   # offset cancels in the ratio
    energy_int = trapezoid(boltz, energies, axis=1)
    photon_int = trapezoid(boltz / energies[None, :], energies, axis=1)
    table = energy_int / photon_int
    log_t = np.log10(np.maximum(np.asarray(temperature, dtype=np.float64), 1.0))
    return np.interp(log_t, log_t_grid, table)


@dataclass
class CellEmission:
    """Per-cell quantities of the emitting gas (physical units), for the projection."""

    position_kpc: np.ndarray      # (N, 3) physical kpc relative to the centre
    size_kpc: np.ndarray          # cube-root of the cell volume, physical kpc
    luminosity_erg_s: np.ndarray  # band luminosity (rest frame), erg/s
    photons_s: np.ndarray         # band photon rate (rest frame), ph/s
    temperature_k: np.ndarray


def physical_units(coordinates_ckpc_h: np.ndarray, center_ckpc_h: np.ndarray, hubble: float, scale_factor: float,
                   box_size: float | None) -> np.ndarray:
    """Positions relative to the centre in physical kpc, wrapped across the periodic box when known."""
    delta = np.asarray(coordinates_ckpc_h, dtype=np.float64) - np.asarray(center_ckpc_h, dtype=np.float64)[None, :]
    if box_size:
        delta = (delta + 0.5 * box_size) % box_size - 0.5 * box_size
    return delta * (scale_factor / hubble)


def cell_emission(cutout, table: BandEmissivity, band_rest_kev: tuple[float, float],
                  center_ckpc_h: np.ndarray | None = None, min_temperature_k: float = MIN_TEMPERATURE_K) -> CellEmission:
    """Band luminosity and photon rate of every emitting gas cell of ``cutout`` (a :class:`GasCutout`).

    Star-forming cells and cells colder than ``min_temperature_k`` are left out. The centre is
    ``center_ckpc_h`` or, when None, the shrinking-sphere centre of the band luminosity."""
    h, a = cutout.hubble, cutout.scale_factor
    temp = temperature_k(cutout.internal_energy, cutout.electron_abundance)
    keep = (cutout.star_formation_rate <= 0.0) & (temp >= min_temperature_k)
    temp = temp[keep]
    rho = cutout.density[keep] * (1e10 * MSUN_G / h) / (a * KPC_CM / h) ** 3     # g cm^-3, physical
    mass = cutout.masses[keep] * (1e10 * MSUN_G / h)                               # g
    volume = mass / rho                                                           # cm^3 (Voronoi cell)
    n_h = X_HYDROGEN * rho / PROTON_MASS_G
    n_e = cutout.electron_abundance[keep] * n_h
    lum = n_e * n_h * table.band(temp, *band_rest_kev) * volume
    photons = lum / (mean_photon_energy_kev(temp, *band_rest_kev) * KEV_ERG)
    coords = cutout.coordinates[keep]
    if center_ckpc_h is None:
        center_ckpc_h = shrinking_sphere_center(coords, lum, cutout.box_size)
    pos = physical_units(coords, center_ckpc_h, h, a, cutout.box_size)
    return CellEmission(pos, np.cbrt(volume) / KPC_CM, lum, photons, temp)


def shrinking_sphere_center(coords: np.ndarray, weights: np.ndarray, box_size: float | None = None,
                            shrink: float = 0.8, min_cells: int = 100) -> np.ndarray:
    """Weighted shrinking-sphere centre (Power et al. 2003) of ``coords``, in their units."""
    if len(coords) == 0 or not np.sum(weights) > 0:
        return np.mean(coords, axis=0) if len(coords) else np.zeros(3)
    ref = coords[int(np.argmax(weights))]
    rel = coords - ref
    if box_size:
        rel = (rel + 0.5 * box_size) % box_size - 0.5 * box_size
    center = np.average(rel, axis=0, weights=weights)
    radius = float(np.max(np.linalg.norm(rel - center, axis=1)))
    inside = np.ones(len(rel), dtype=bool)
    while inside.sum() > min_cells and radius > 0:
        radius *= shrink
        inside = np.linalg.norm(rel - center, axis=1) <= radius
        if inside.sum() < min_cells or not weights[inside].sum() > 0:
            break
        center = np.average(rel[inside], axis=0, weights=weights[inside])
    return ref + center


SMALL_KERNEL_VAR = 4.0  # px^2: narrower footprint groups are convolved in real space, wider ones by FFT
AXES = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}  # projection axis -> (image x, image y): right-handed, cyclic


def deposit(x_px: np.ndarray, y_px: np.ndarray, weights: np.ndarray, sigma_px: np.ndarray, npix: int,
            max_sigma_px: float | None = None) -> np.ndarray:
    """Sum of Gaussian footprints (one per cell, width ``sigma_px``) on an ``npix`` x ``npix`` grid.

    Pixel i covers [i - 0.5, i + 0.5). Cells are grouped by footprint width (bins of a factor sqrt(2));
    each group is cloud-in-cell deposited and convolved with the Gaussian that, added to the
    cloud-in-cell kernel (variance 1/6 px^2 per axis), gives the group's width: a normalised sampled
    kernel for narrow groups, in Fourier space for wide ones. Both conserve the sum, so the deposit
    conserves the summed weight of the cells whose footprints lie inside the grid; footprints are cut at
    the grid edge (padding, no wrap-around).
    """
    weights = np.asarray(weights, dtype=np.float64)
    sigma = np.asarray(sigma_px, dtype=np.float64)
    cap = max_sigma_px if max_sigma_px is not None else npix / 16.0
    sigma = np.minimum(sigma, cap)
    pad_all = int(np.ceil(4.0 * max(float(sigma.max()) if sigma.size else 0.0, 1.0))) + 2
    keep = (weights > 0) & (x_px > -pad_all) & (x_px < npix - 1 + pad_all) & (y_px > -pad_all) & (y_px < npix - 1 + pad_all)
    x, y, w, s = x_px[keep], y_px[keep], weights[keep], sigma[keep]
    image = np.zeros((npix, npix), dtype=np.float64)
    if not w.size:
        return image
    pad = int(np.ceil(4.0 * max(float(s.max()), 1.0))) + 2
    size = sfft.next_fast_len(npix + 2 * pad, real=True)
    # footprint groups: -1 for sub-pixel cells (cloud-in-cell only), else bins of a factor sqrt(2) from 0.5 px
    group = np.where(s < 0.5, -1, np.floor(2.0 * np.log2(np.maximum(s, 0.5) / 0.5)).astype(np.int64))
    order = np.argsort(group, kind="stable")
    x, y, w, s, group = x[order], y[order], w[order], s[order], group[order]
    bounds = np.flatnonzero(np.diff(group)) + 1
    starts, stops = np.r_[0, bounds], np.r_[bounds, len(group)]
    ky = sfft.fftfreq(size)[:, None]
    kx = sfft.rfftfreq(size)[None, :]
    k2 = ky * ky + kx * kx
    spectrum = None
    direct = np.zeros((size, size), dtype=np.float64)
    for start, stop in zip(starts, stops):
        grid = _cic(x[start:stop] + pad, y[start:stop] + pad, w[start:stop], size)
        g = int(group[start])
        if g < 0:
            direct += grid
            continue
        sigma_group = 0.5 * 2.0 ** ((g + 0.5) / 2.0)
        var = max(sigma_group**2 - 1.0 / 6.0, 0.0)
        if var < SMALL_KERNEL_VAR:   # narrow: a sampled, normalised (positive) kernel in real space
            direct += ndimage.gaussian_filter(grid, np.sqrt(var), mode="constant", truncate=4.0)
            continue
        term = sfft.rfft2(grid, workers=-1) * np.exp(-2.0 * np.pi**2 * var * k2)
        spectrum = term if spectrum is None else spectrum + term
    total = direct
    if spectrum is not None:
        total = total + sfft.irfft2(spectrum, s=(size, size), workers=-1)
    image[:] = total[pad:pad + npix, pad:pad + npix]
    return np.clip(image, 0.0, None)


def _cic(x: np.ndarray, y: np.ndarray, w: np.ndarray, size: int) -> np.ndarray:
    """Cloud-in-cell deposit of weights ``w`` at pixel positions (x, y) onto a ``size`` x ``size`` grid."""
    ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - ix, y - iy
    flat = np.zeros(size * size, dtype=np.float64)
    for dx, wx in ((0, 1.0 - fx), (1, fx)):
        for dy, wy in ((0, 1.0 - fy), (1, fy)):
            cx, cy = ix + dx, iy + dy
            ok = (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)
            flat += np.bincount(cy[ok] * size + cx[ok], weights=(w * wx * wy)[ok], minlength=size * size)
    return flat.reshape(size, size)


def project_cells(cells: CellEmission, axis: str, width_kpc: float, npix: int,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """Project ``weights`` (default: the photon rate) of ``cells`` along ``axis`` onto ``npix``^2 pixels
    covering ``width_kpc`` (physical) centred on the origin; footprint sigma = cell size / sqrt(12)."""
    if axis not in AXES:
        raise InputError(None, "projection axis", f"{axis!r} is unknown", f"use one of {list(AXES)}")
    if not (width_kpc > 0 and npix >= 8):
        raise InputError(None, "width / npix", f"({width_kpc}, {npix})", "give width_kpc > 0 and npix >= 8")
    ix, iy = AXES[axis]
    scale = npix / width_kpc                         # pixels per kpc
    c = (npix - 1) / 2.0
    x_px = cells.position_kpc[:, ix] * scale + c
    y_px = cells.position_kpc[:, iy] * scale + c
    sigma_px = cells.size_kpc * scale / np.sqrt(12.0)
    values = cells.photons_s if weights is None else weights
    return deposit(x_px, y_px, values, sigma_px, npix)
