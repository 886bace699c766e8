"""Derive the pn dead-pixel table (resources/instrument/pn_dead_pixels_1x.csv) from real SAS products.

Inputs: a SAS ``eexpmap`` exposure map in DETX/DETY binned by 80 (403 x 411, zero outside the field of
view and on dead pixels) and real SAS ``evselect`` DETX/DETY images on the same grid. A column is dead
in a CCD row (lower: image rows < 205, upper: >= 205) when it is zero in the exposure map over that
half's whole field of view; a row is dead when it is zero over the middle of the array; the remaining
zero pixels of the exposure map inside the field of view are isolated dead pixels. Every dead column
and row is checked against the real images (zero counts there in > 90 % of the pixels of the stack).

    python tools/derive_dead_pixels.py EXPMAP.fits REAL_IMAGE.fits [...] --output pn_dead_pixels_1x.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from astropy.io import fits

SPLIT_ROW = 205         # first image row of the upper CCD row
FOV_RADIUS_PX = 221.0   # inner edge of the field of view used to tell isolated dead pixels from the outside


def runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted integers as (first, last)."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def derive(expmap: np.ndarray, real: list[np.ndarray]) -> list[tuple[int, int, int, int, str]]:
    ny, nx = expmap.shape
    live = expmap > 0
    regions: list[tuple[int, int, int, int, str]] = []
    dead_rows = [int(r) for r in np.flatnonzero(live[:, nx // 4: 3 * nx // 4].mean(axis=1) < 0.02)]
    for a, b in runs(dead_rows):
        regions.append((a, b, 0, nx - 1, "row"))
    stack = np.sum([im / im.sum() for im in real], axis=0) if real else None
    for name, rows in (("lower", slice(0, SPLIT_ROW)), ("upper", slice(SPLIT_ROW, ny))):
        half = live[rows]
        seen = half.any(axis=0) | (expmap[rows] == 0).any(axis=0)
        dead_cols = [int(c) for c in np.flatnonzero((half.mean(axis=0) < 0.02) & seen)]
        if stack is not None:
            zero = (stack[rows] == 0).mean(axis=0) > 0.9
            dead_cols = [c for c in dead_cols if zero[c]]
        lo, hi = rows.start, (rows.stop or ny) - 1
        for a, b in runs(dead_cols):
            regions.append((lo, hi, a, b, f"column ({name} CCD row)"))
    covered = np.zeros_like(live)
    for r0, r1, c0, c1, _ in regions:
        covered[r0:r1 + 1, c0:c1 + 1] = True
    yy, xx = np.mgrid[0:ny, 0:nx]
    centre = np.array([yy[live].mean(), xx[live].mean()])
    inside = np.hypot(yy - centre[0], xx - centre[1]) < FOV_RADIUS_PX
    for r, c in np.argwhere(inside & ~live & ~covered):
        regions.append((int(r), int(r), int(c), int(c), "pixel"))
    return regions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("expmap")
    parser.add_argument("real", nargs="*")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    expmap = fits.getdata(args.expmap).astype(float)
    real = [fits.getdata(p).astype(float) for p in args.real]
    real = [im for im in real if im.shape == expmap.shape]
    regions = derive(expmap, real)
    out = Path(args.output)
    if out.exists():
        raise SystemExit(f"{out} exists; remove it first")
    header = fits.getheader(args.expmap)
    lines = [
        "# EPIC-pn dead pixels on the SAS evselect DETX/DETY grid binned by 80 (403 x 411 pixels of 4\",",
        "# lower-left pixel edge at DETX = -18283.5, DETY = -17527.5); 0-based, inclusive rectangles.",
        f"# Derived by tools/derive_dead_pixels.py from a SAS eexpmap exposure map (OBS_ID {header.get('OBS_ID', '?')},",
        f"# {header.get('CREATOR', '?')}) and checked against {len(real)} real evselect images",
        "# (XMM-Newton observations 0506260401, 0827240501, 0840940101, 0884120101).",
        "row_min,row_max,col_min,col_max,kind",
    ]
    lines += [f"{a},{b},{c},{d},{k}" for a, b, c, d, k in regions]
    out.write_text("\n".join(lines) + "\n")
    print(f"{out}: {len(regions)} regions, {sum((b - a + 1) * (d - c + 1) for a, b, c, d, _ in regions)} pixels")


if __name__ == "__main__":
    main()
