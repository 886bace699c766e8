"""CCD edge strips of real pn images: how much active area real event lists lose along the CCD edges
(a measurement, not a test; it gives ``xmmsr.instrument.exposure.REAL_EDGE_MARGINS``).

For each real DETX/DETY count image the sky is estimated from the pixels at least 2 pixels inside the
CCD layout and the telescope's field of view (a normalised Gaussian convolution, sigma 3 pixels, of counts over layout area); each pixel
along the layout's edges (inside the field of view) should then hold sky x its area. The margins of :class:`EdgeMargins` (both x
edges of every CCD; the y edges below and above the gap between the CCD rows; beside dead pixels) are chosen on a 0.5"
grid to minimise the Poisson deviance of the edge pixels, one margin at a time (twice round). The
counts of the edge pixels against their prediction are printed for the layout alone and with the
margins found (and with ``REAL_EDGE_MARGINS``).

    python bench/ccd_edges.py IMAGE.fits [IMAGE.fits ...]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from xmmsr.instrument.exposure import REAL_EDGE_MARGINS, default_geometry, detector_grid
from xmmsr.instrument.geometry import EdgeMargins, ImageGrid
from xmmsr.learn.predict import read_count_image
from xmmsr.metrics import poisson_deviance

FIELDS = ("x_arcsec", "below_gap_arcsec", "above_gap_arcsec", "dead_arcsec")
STEPS = np.arange(0.0, 8.01, 0.5)


@dataclass
class EdgeImage:
    name: str
    grid: ImageGrid
    counts: np.ndarray   # in the grid's orientation (increasing DETX/DETY)
    sky: np.ndarray      # counts per unit area, from the interior
    edge: np.ndarray     # pixels along the layout's edges with a sky estimate


def load(path: str) -> EdgeImage:
    geometry = default_geometry()
    counts, header, _ = read_count_image(path)
    found = detector_grid(header, counts.shape, path)
    if found is None:
        raise SystemExit(f"{path}: no DETX/DETY keywords (CTYPE1L/CTYPE2L); give a DETX/DETY image")
    grid, flip_x, flip_y = found
    counts = np.asarray(counts, dtype=np.float64)[::-1 if flip_y else 1, ::-1 if flip_x else 1]
    layout = np.asarray(geometry.acceptance(grid))
    in_fov = np.asarray(geometry.fov_fraction(grid)) >= 1.0   # the field's edge is not a CCD edge
    inner = ndimage.binary_erosion((layout >= 0.5) & in_fov, np.ones((5, 5), bool))
    num = ndimage.gaussian_filter(np.where(inner, counts, 0.0), 3.0)
    den = ndimage.gaussian_filter(np.where(inner, layout, 0.0), 3.0)
    sky = np.where(den > 0.05, num / np.maximum(den, 1e-9), 0.0)
    edge = (layout > 0) & ~inner & in_fov & (sky > 0)
    return EdgeImage(path, grid, counts, sky, edge)


def deviance(images: list[EdgeImage], margins: EdgeMargins) -> float:
    geometry = default_geometry()
    total = 0.0
    for im in images:
        mu = np.maximum(im.sky * np.asarray(geometry.acceptance(im.grid, margins=margins)), 1e-6)
        total += poisson_deviance(mu, im.counts, im.edge) * im.edge.sum()
    return total


def fit(images: list[EdgeImage]) -> EdgeMargins:
    margins = EdgeMargins()
    for _ in range(2):
        for name in FIELDS:
            scores = [deviance(images, replace(margins, **{name: float(v)})) for v in STEPS]
            margins = replace(margins, **{name: float(STEPS[int(np.argmin(scores))])})
    return margins


def ratio(im: EdgeImage, margins: EdgeMargins | None) -> float:
    area = np.asarray(default_geometry().acceptance(im.grid, margins=margins))
    return float(im.counts[im.edge].sum() / max((im.sky * area)[im.edge].sum(), 1e-9))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+", help="real pn count images binned in DETX/DETY")
    args = ap.parse_args()
    images = [load(p) for p in args.images]
    found = fit(images)
    print("margins found (arcsec):", {k: getattr(found, k) for k in FIELDS})
    print("REAL_EDGE_MARGINS (arcsec):", {k: getattr(REAL_EDGE_MARGINS, k) for k in FIELDS})
    print("image | edge pixels | counts / prediction: layout alone | margins found | REAL_EDGE_MARGINS")
    for im in images:
        print(f"{im.name} | {int(im.edge.sum())} | {ratio(im, None):.3f} | {ratio(im, found):.3f} | "
              f"{ratio(im, REAL_EDGE_MARGINS):.3f}")


if __name__ == "__main__":
    main()
