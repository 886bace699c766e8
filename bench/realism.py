"""Real versus simulated EPIC-pn images, side by side (a benchmark, not a test).

Reads the real SAS evselect DETX/DETY images (403 x 411, bin 80) of REAL_DIR, simulates fields of each
configured kind (extended with field AGN, AGN, blank background) with the built-in simulator at the
real images' median exposure, bins them like the real ones, and prints one table of what a network
sees: background by off-axis annulus (about the aim point) and in the out-of-FOV corners, zero
fraction, total counts per 20 ks, the brightest 20" box over the background, point sources per field,
the PSF of bright isolated point sources by off-axis bin (HEW and tangential/radial axis ratio), the
stacked PSF wings of compact sources against the model PSF, the detector-mask agreement and where the
targets sit. Images on other grids (sky X/Y, 1" pixels) are listed as skipped.

    python bench/realism.py REAL_DIR [--config CONFIG.yaml] [--fields 3] [--seed 1]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy import ndimage

from xmmsr.config import default_config, load_config
from xmmsr.instrument.binning import bin_counts, exposure_of, select_good
from xmmsr.instrument.model import PnInstrument
from xmmsr.instrument.simulator import simulate_events
from xmmsr.pipeline import brightness_reference
from xmmsr.sky.generate import generate_source

REPO = Path(__file__).resolve().parents[1]
ANNULI_ARCMIN = ((0.0, 4.0), (4.0, 8.0), (8.0, 10.0), (10.0, 12.0))


@dataclass
class Regions:
    """Pixel sets of the 1x grid shared by real and simulated images."""

    mask: np.ndarray
    annuli: list[np.ndarray]
    corners: np.ndarray
    aim_pixel: tuple[float, float]

    @classmethod
    def of(cls, instrument: PnInstrument) -> "Regions":
        g = instrument.geometry
        grid = g.image_grid(1)
        cx, cy = grid.centers()
        x, y = np.meshgrid(cx, cy)
        mask = g.detector_mask(1) > 0
        from_aim = np.hypot(x - g.aim_x_arcsec, y - g.aim_y_arcsec) / 60.0
        from_fov = np.hypot(x - g.fov_center_x_arcsec, y - g.fov_center_y_arcsec) / 60.0
        inside = from_fov < g.fov_radius_arcmin - 0.5
        annuli = [mask & inside & (from_aim >= a) & (from_aim < b) for a, b in ANNULI_ARCMIN]
        corners = mask & (from_fov > g.fov_radius_arcmin + 0.5)
        aim = ((g.aim_x_arcsec - grid.x0_arcsec) / grid.pixel_arcsec - 0.5,
               (g.aim_y_arcsec - grid.y0_arcsec) / grid.pixel_arcsec - 0.5)
        return cls(mask, annuli, corners, aim)


def clipped_mean(values: np.ndarray) -> float:
    """Mean of the values below their 99th percentile (background without the brightest sources)."""
    if values.size == 0:
        return float("nan")
    return float(values[values <= np.percentile(values, 99)].mean())


def measure(image: np.ndarray, exposure_ks: float, regions: Regions) -> dict[str, float]:
    """The compared quantities of one 1x count image."""
    m = regions.mask
    bkg = clipped_mean(image[regions.annuli[-1]]) / exposure_ks
    box = ndimage.uniform_filter(image.astype(float) * m, size=5, mode="constant") * 25   # 20" boxes
    corners = image[regions.corners]
    row = {f"bkg {a:g}-{b:g}'": clipped_mean(image[r]) / exposure_ks for (a, b), r in zip(ANNULI_ARCMIN, regions.annuli)}
    row.update({
        "corners": float(corners.mean()) / exposure_ks if corners.size and corners.sum() > 0 else float("nan"),
        "zero fraction (20 ks)": float(np.mean(np.random.default_rng(0).binomial(image[m].astype(np.int64),
                                                                                 min(1.0, 20.0 / exposure_ks)) == 0)),
        "counts per 20 ks": float(image[m].sum()) * 20.0 / exposure_ks,
        "brightest 20\" box / bkg": float(box.max()) / (bkg * exposure_ks * 25) if bkg > 0 else float("nan"),
        "counts outside mask": float(image[~m].sum()) / max(float(image.sum()), 1.0),
    })
    sources = point_sources(image, m)
    disc = regions.annuli[0] | regions.annuli[1] | regions.annuli[2] | regions.annuli[3]
    in_disc = [s for s in sources if disc[int(s["y"]), int(s["x"])]]
    scale = 20.0 / exposure_ks
    row["sources >= 20 counts / 20 ks"] = float(sum(s["net"] * scale >= 20 for s in in_disc))
    row["sources >= 100 counts / 20 ks"] = float(sum(s["net"] * scale >= 100 for s in in_disc))
    row["_sources"] = sources
    return row


OFFAXIS_BINS = ((0.0, 6.0), (6.0, 10.0), (10.0, 12.5), (12.5, 15.0))


def point_sources(image: np.ndarray, mask: np.ndarray, pixel_arcsec: float = 4.0) -> list[dict[str, float]]:
    """Isolated point-like peaks: local maxima of the 1-pixel-smoothed image with no brighter peak within
    60", net counts within 60" (local level from the 60-90" annulus median), half-energy width (of the
    counts within 60") and second moments within 30" (background subtracted)."""
    smooth = ndimage.gaussian_filter(image.astype(float), 1.0)
    peaks = (smooth == ndimage.maximum_filter(smooth, size=int(2 * 60 / pixel_arcsec) + 1)) & mask & (smooth > 1.0)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    out = []
    for y, x in np.argwhere(peaks):
        r = np.hypot(xx - x, yy - y) * pixel_arcsec
        ring = mask & (r >= 60) & (r < 90)
        if ring.sum() < 50:
            continue
        level = float(np.median(image[ring])) if np.median(image[ring]) > 0 else float(image[ring].mean())
        inner = mask & (r < 60)
        if inner.sum() < 0.9 * np.pi * (60 / pixel_arcsec) ** 2:   # cut by the mask: skip
            continue
        net = float(image[inner].sum() - level * inner.sum())
        if net < 20:
            continue
        order = np.argsort(r[inner])
        cum = np.cumsum(image[inner][order] - level)
        hew = 2.0 * float(r[inner][order][np.searchsorted(cum, 0.5 * net)]) if net >= 200 else float("nan")
        core = mask & (r < 30)
        w = np.clip(image[core] - level, 0.0, None)
        dx, dy = (xx[core] - x) * pixel_arcsec, (yy[core] - y) * pixel_arcsec
        out.append({"x": float(x), "y": float(y), "net": net, "hew": hew,
                    "mxx": float((w * dx * dx).sum() / w.sum()), "myy": float((w * dy * dy).sum() / w.sum()),
                    "mxy": float((w * dx * dy).sum() / w.sum())})
    return out


def psf_by_offaxis(sources: list[dict[str, float]], instrument: PnInstrument,
                   min_net: float = 200.0) -> dict[str, tuple[float, float, int]]:
    """Median HEW and tangential/radial axis ratio (from the second moments) of sources with at least
    ``min_net`` counts, per off-axis bin (angle from the optical axis)."""
    g = instrument.geometry
    grid = g.image_grid(1)
    rows: dict[str, list[tuple[float, float]]] = {f"{a:g}-{b:g}'": [] for a, b in OFFAXIS_BINS}
    for src in sources:
        if src["net"] < min_net:
            continue
        px = grid.x0_arcsec + (src["x"] + 0.5) * grid.pixel_arcsec - g.axis_x_arcsec
        py = grid.y0_arcsec + (src["y"] + 0.5) * grid.pixel_arcsec - g.axis_y_arcsec
        theta = float(np.hypot(px, py)) / 60.0
        ur = np.array([px, py]) / max(np.hypot(px, py), 1e-9)
        m = np.array([[src["mxx"], src["mxy"]], [src["mxy"], src["myy"]]])
        radial = float(ur @ m @ ur)
        tangential = float(np.array([-ur[1], ur[0]]) @ m @ np.array([-ur[1], ur[0]]))
        for a, b in OFFAXIS_BINS:
            if a <= theta < b and radial > 0:
                rows[f"{a:g}-{b:g}'"].append((src["hew"], float(np.sqrt(tangential / radial))))
    return {k: (float(np.nanmedian([h for h, _ in v])) if v and np.isfinite([h for h, _ in v]).any() else float("nan"),
                float(np.median([q for _, q in v])) if v else float("nan"), len(v)) for k, v in rows.items()}


WING_ANNULI_ARCSEC = ((20.0, 40.0), (40.0, 60.0))


def psf_wings(image: np.ndarray, mask: np.ndarray, sources: list[dict[str, float]], instrument: PnInstrument,
              energy_kev: float = 1.2) -> np.ndarray:
    """Per compact point source (>= 80 net counts within 12", at least 30 % of its net counts there):
    rows of (core counts, then per wing annulus of :data:`WING_ANNULI_ARCSEC`: net counts, the counts the
    model PSF at the source's off-axis angle and azimuth predicts from the core, the local level's counts).
    The local level is the mean in the 90-130" annulus."""
    g = instrument.geometry
    grid = g.image_grid(1)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    out = []
    for src in sources:
        x, y = src["x"], src["y"]
        r = np.hypot(xx - x, yy - y) * grid.pixel_arcsec
        ring = mask & (r >= 90) & (r < 130)
        if ring.sum() < 50:
            continue
        level = float(image[ring].mean())
        inner = mask & (r < 12)
        core = float(image[inner].sum() - level * inner.sum())
        if core < 80 or core < 0.3 * src["net"]:
            continue
        px = grid.x0_arcsec + (x + 0.5) * grid.pixel_arcsec - g.axis_x_arcsec
        py = grid.y0_arcsec + (y + 0.5) * grid.pixel_arcsec - g.axis_y_arcsec
        kernel = instrument.psf.kernel(grid.pixel_arcsec, float(np.hypot(px, py)) / 60.0, float(np.arctan2(py, px)),
                                       energy_kev, 1)
        h = kernel.shape[0] // 2
        ky, kx = np.mgrid[-h: h + 1, -h: h + 1]
        kr = np.hypot(kx, ky) * grid.pixel_arcsec
        row = [core]
        for lo, hi in WING_ANNULI_ARCSEC:
            ann = mask & (r >= lo) & (r < hi)
            per_pixel = kernel[(kr >= lo) & (kr < hi)].mean() / kernel[kr < 12].sum()
            row += [float(image[ann].sum() - level * ann.sum()), float(per_pixel * core * ann.sum()),
                    level * float(ann.sum())]
        out.append(row)
    return np.array(out).reshape(-1, 1 + 3 * len(WING_ANNULI_ARCSEC))


def target_position(image: np.ndarray) -> tuple[float, float]:
    """Centroid (0-based x, y) of the brightest smoothed peak."""
    smooth = ndimage.gaussian_filter(image.astype(float), 6)
    y, x = np.unravel_index(np.argmax(smooth), smooth.shape)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    w = smooth * (np.hypot(xx - x, yy - y) < 25)
    return float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())


def dead_in_real(stack: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of simulated active pixels with no real counts where the real stack expects > 5."""
    smooth = ndimage.median_filter(np.where(mask, stack, 0).astype(float), size=9)
    confident = mask & (smooth > 5)
    return float(np.mean(stack[confident] == 0)) if confident.any() else float("nan")


def simulate_fields(cfg: dict, instrument: PnInstrument, exposure_s: float, fields: int,
                    seed: int) -> dict[str, list[np.ndarray]]:
    brightness = brightness_reference(instrument)
    grid = instrument.geometry.image_grid(1)
    out: dict[str, list[np.ndarray]] = {}
    for kind in ("extended", "agn", "background"):
        out[kind] = []
        for i in range(fields):
            sky = generate_source(kind, i, cfg["sources"], brightness, seed)
            c = simulate_events(sky, instrument, exposure_s, 1, seed=seed * 1000 + i).columns
            good = select_good(c["PATTERN"], c["FLAG"], c["PI"])
            out[kind].append(bin_counts(c["DETX"][good], c["DETY"][good], grid))
    return out


def fmt(v: float) -> str:
    if not np.isfinite(v):
        return "—"
    return f"{v:.4f}" if abs(v) < 1 else (f"{v:.2f}" if abs(v) < 100 else f"{v:,.0f}")


def span(values: list[float]) -> str:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return "—"
    lo, hi = min(finite), max(finite)
    return fmt(lo) if np.isclose(lo, hi) else f"{fmt(lo)} – {fmt(hi)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("real_dir", type=Path)
    parser.add_argument("--config", default=None)
    parser.add_argument("--fields", type=int, default=3, help="simulated fields per kind")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    cfg = load_config(args.config) if args.config else default_config()
    instrument = PnInstrument.from_config(cfg["instrument"], base_dir=REPO)
    regions = Regions.of(instrument)

    real: dict[str, tuple[np.ndarray, float]] = {}
    for path in sorted(args.real_dir.glob("*.fits*")):
        with fits.open(path) as hdul:
            header, data = hdul[0].header, hdul[0].data
            on_grid = data is not None and data.shape == regions.mask.shape and header.get("CTYPE1L") == "DETX"
            if not on_grid:
                print(f"skipped {path.name}: not a DETX/DETY image on the 403 x 411 evselect grid")
                continue
            real[path.name.split("_")[0]] = (data.astype(np.int64), exposure_of(header, path) / 1000.0)
    if not real:
        raise SystemExit(f"{args.real_dir}: no real DETX/DETY images found")
    exposure_s = float(np.median([e for _, e in real.values()])) * 1000.0
    sims = simulate_fields(cfg, instrument, exposure_s, args.fields, args.seed)

    real_rows = {name: measure(im, e, regions) for name, (im, e) in real.items()}
    sim_rows = {kind: [measure(im, exposure_s / 1000.0, regions) for im in ims] for kind, ims in sims.items()}
    groups = {"real": list(real_rows.values()), **{f"sim {k}": v for k, v in sim_rows.items()}}
    psf = {name: psf_by_offaxis([s for row in rows for s in row.pop("_sources")], instrument)
           for name, rows in groups.items()}
    keys = [k for k in next(iter(real_rows.values())) if not k.startswith("_")]
    names = list(real_rows)
    print(f"\nReal: {len(real)} SAS images ({', '.join(names)}); simulated: {args.fields} fields per kind at "
          f"{exposure_s / 1000:.1f} ks. Background in counts / 4\" pixel / ks (annuli about the aim point).\n")
    print("| quantity | " + " | ".join(names) + " | sim extended | sim AGN | sim blank |")
    print("|---" * (len(names) + 4) + "|")
    for k in keys:
        cells = [fmt(real_rows[n][k]) for n in names] + [span([r[k] for r in sim_rows[kind]])
                                                       for kind in ("extended", "agn", "background")]
        print(f"| {k} | " + " | ".join(cells) + " |")

    print("\nPSF of isolated point sources with >= 200 net counts (HEW of the counts within 60\", arcsec; "
          "tangential/radial axis ratio from the second moments within 30\"; medians; n sources), by angle "
          "from the optical axis:\n")
    print("| off axis | " + " | ".join(f"{g} HEW | {g} ratio | n" for g in psf) + " |")
    print("|---" * (1 + 3 * len(psf)) + "|")
    for k in next(iter(psf.values())):
        print(f"| {k} | " + " | ".join(f"{fmt(psf[g][k][0])} | {fmt(psf[g][k][1])} | {psf[g][k][2]}" for g in psf) + " |")

    print("\nPSF wings of compact point sources (>= 80 net counts within 12\"), stacked: net surface brightness "
          "in each annulus relative to the core, over the model PSF's (at each source's off-axis angle and "
          "azimuth, 1.2 keV; ± Poisson error):\n")
    wing_groups = {"real": [(im, regions.mask) for im, _ in real.values()],
                   **{f"sim {k}": [(im, regions.mask) for im in ims] for k, ims in sims.items()}}
    print("| annulus | " + " | ".join(f"{g} (n)" for g in wing_groups) + " |")
    print("|---" * (1 + len(wing_groups)) + "|")
    wing_rows = {g: np.concatenate([psf_wings(im, m, point_sources(im, m), instrument) for im, m in pairs])
                 for g, pairs in wing_groups.items()}
    for i, (lo, hi) in enumerate(WING_ANNULI_ARCSEC):
        cells = []
        for g, w in wing_rows.items():
            if len(w) == 0:
                cells.append("—")
                continue
            net, model, level = w[:, 1 + 3 * i].sum(), w[:, 2 + 3 * i].sum(), w[:, 3 + 3 * i].sum()
            cells.append(f"{net / model:.2f} ± {np.sqrt(max(net, 0.0) + 2.0 * level) / model:.2f} ({len(w)})")
        print(f"| {lo:g}-{hi:g}\" | " + " | ".join(cells) + " |")

    stack = np.sum([im for im, _ in real.values()], axis=0)
    positions = [target_position(real[n][0]) for n in names]
    print(f"\nMask: {100 * dead_in_real(stack, regions.mask):.2f} % of simulated active pixels have no real counts "
          f"where the real stack expects > 5; {100 * float(stack[~regions.mask].sum() / stack.sum()):.2f} % of real "
          f"counts fall outside the simulated mask.")
    print("Brightest source (0-based x, y): " + ", ".join(f"{n} ({x:.1f}, {y:.1f})" for n, (x, y) in zip(names, positions))
          + f"; simulated aim point ({regions.aim_pixel[0]:.1f}, {regions.aim_pixel[1]:.1f}).")
    extended = [target_position(im) for im in sims["extended"]]
    print("Simulated extended targets: " + ", ".join(f"({x:.1f}, {y:.1f})" for x, y in extended))


if __name__ == "__main__":
    main()
