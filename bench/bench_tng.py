"""Cutout-to-sky-model time of the IllustrisTNG projection for a generated cutout of 10^6 gas cells.

Usage: python bench/bench_tng.py [--cells N] [--npix 2048] [--width-kpc 1600] [--repeat 3]

The cutout is a cluster-like gas distribution (beta-model density, 10^7.5 K, 5 % star-forming cells) in
the TNG cutout layout. Timed: reading the HDF5 file, temperatures and emissivities, the Gaussian-footprint
deposit onto npix^2 pixels, and writing the sky-model FITS (the same path as `xmmsr tng-project`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from xmmsr.sky.model import write_sky_model  # noqa: E402
from xmmsr.sky.tng.cutout import GasCutout, read_cutout, write_cutout  # noqa: E402
from xmmsr.sky.tng.physics import BOLTZMANN_ERG_K, GAMMA, PROTON_MASS_G, X_HYDROGEN  # noqa: E402
from xmmsr.sky.tng.sky import project_cutout, projection_sky_model  # noqa: E402


def cluster_cutout(n: int, seed: int = 0) -> GasCutout:
    """A cluster-like cutout: cells denser (and smaller) towards the centre, as in a Voronoi mesh."""
    rng = np.random.default_rng(seed)
    h, rc = 0.6774, 150.0
    r = rc * np.sqrt(rng.random(n) ** (-1.0 / 0.9) - 1.0)          # roughly beta = 2/3 number density
    r = np.minimum(r, 3000.0)
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1)[:, None]
    coords = 37500.0 + direction * r[:, None]
    density = 1e-4 * (1.0 + (r / rc) ** 2) ** -1.0
    masses = np.full(n, 1e-3)
    xe = np.full(n, 1.157)
    mu = 4.0 / (1.0 + 3.0 * X_HYDROGEN + 4.0 * X_HYDROGEN * xe)
    u = 10**7.5 * BOLTZMANN_ERG_K / ((GAMMA - 1.0) * mu * PROTON_MASS_G) / 1e10 * rng.lognormal(0.0, 0.3, n)
    sfr = np.where(rng.random(n) < 0.05, 0.1, 0.0)
    return GasCutout(coords, masses, density, u, xe, sfr, h, 0.3089, 0.0, 1.0, 75000.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--npix", type=int, default=2048)
    parser.add_argument("--width-kpc", type=float, default=1600.0)
    parser.add_argument("--redshift", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "TNG300-1_snap099_sub0.hdf5"
        write_cutout(path, cluster_cutout(args.cells))
        project_cutout(read_cutout(path), "z", args.width_kpc, args.redshift, 64)   # imports, table, cosmology
        times = []
        for i in range(args.repeat):
            start = time.perf_counter()
            cutout = read_cutout(path)
            projection = project_cutout(cutout, "xyz"[i % 3], args.width_kpc, args.redshift, args.npix)
            write_sky_model(projection_sky_model(projection, 150.1, 2.2), Path(tmp) / "sky.fits")
            times.append(time.perf_counter() - start)
    print(f"cutout of {args.cells:,} gas cells -> {args.npix}^2 sky model ({args.width_kpc:g} kpc at z = "
          f"{args.redshift:g}): best {min(times):.2f} s, median {np.median(times):.2f} s over {args.repeat} runs")


if __name__ == "__main__":
    main()
