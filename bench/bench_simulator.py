"""Throughput of the built-in simulator and of binning (a benchmark, not a test).

Prints simulated photons per second (whole simulate_events call and its per-photon core, which
excludes the per-source sky projection), binned events per second, and the expected-image time.
Run: python bench/bench_simulator.py  (single process; FFTs may use both cores)
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from xmmsr.config import default_config
from xmmsr.instrument.binning import bin_counts, select_good
from xmmsr.instrument.model import PnInstrument
from xmmsr.instrument.events import Pointing
from xmmsr.instrument.simulator import _sky_pixels, detect_photons, expected_image, simulate_events
from xmmsr.sky.model import SkyModel, empty_point_table, make_wcs

REPO = Path(__file__).resolve().parents[1]


def bright_field(total_flux: float, npix: int = 1800) -> SkyModel:
    """A beta-model cluster bright enough to give millions of photons."""
    yy, xx = np.mgrid[:npix, :npix]
    r = np.hypot(xx - npix / 2, yy - npix / 2)
    image = (1 + (r / 60.0) ** 2) ** (-1.5)
    image = (image / image.sum() * total_flux).astype(np.float32)
    return SkyModel(image, make_wcs(150.0, 2.0, (npix, npix), 1.0), 150.0, 2.0, "extended", points=empty_point_table())


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    instrument = PnInstrument.from_config(default_config()["instrument"], base_dir=REPO)
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, numpy {np.__version__}")
    sky = bright_field(0.25)
    exposure = 100_000.0
    events = simulate_events(sky, instrument, exposure, 1, seed=1)
    photons = events.header["NSKYPHOT"][0]
    t_total = best_of(lambda: simulate_events(sky, instrument, exposure, 1, seed=1))
    region = instrument.geometry.image_grid(1).refine(1, 75)
    t_projection = best_of(lambda: _sky_pixels(sky, Pointing.of(sky, instrument), region))
    pixels = _sky_pixels(sky, Pointing.of(sky, instrument), region)
    t_core = best_of(lambda: detect_photons(np.random.default_rng(1), sky, pixels, instrument, exposure, 1, True))
    print(f"simulate_events: {photons / 1e6:.1f} M photons in {t_total:.2f} s -> {photons / t_total / 1e6:.1f} M photons/s "
          f"for the whole call (sky projection {t_projection:.2f} s, per-photon core {t_core:.2f} s, "
          f"time ordering and event columns {t_total - t_core - t_projection:.2f} s)")
    print(f"per-photon core (draw, vignetting, PSF, energies, field of view, CCDs): {photons / t_core / 1e6:.1f} M photons/s")
    import subprocess
    import sys
    import tempfile

    from xmmsr.instrument.events import write_events

    with tempfile.TemporaryDirectory() as tmp:
        t_write = best_of(lambda: write_events(events, Path(tmp) / "events.fits"))
    print(f"write_events: {len(events) / 1e6:.1f} M events in {t_write:.2f} s ({len(events) / t_write / 1e6:.1f} M events/s)")
    t_import = best_of(lambda: subprocess.run([sys.executable, "-c", "import xmmsr.cli"], check=True))
    print(f"start-up: python -c 'import xmmsr.cli' {t_import:.2f} s")

    rng = np.random.default_rng(0)
    n = 50_000_000
    detx = rng.integers(-16500, 16500, n).astype(np.int16)
    dety = rng.integers(-16800, 16800, n).astype(np.int16)
    pi = rng.integers(200, 12000, n).astype(np.int16)
    pattern = rng.integers(0, 13, n).astype(np.int16)
    flag = (rng.random(n) < 0.02).astype(np.int32)
    grid = instrument.geometry.image_grid(1)
    t_bin = best_of(lambda: bin_counts(detx, dety, grid))
    t_sel = best_of(lambda: bin_counts(detx[select_good(pattern, flag, pi)], dety[select_good(pattern, flag, pi)], grid))
    print(f"binning: {n / t_bin / 1e6:.0f} M events/s (bin_counts), {n / t_sel / 1e6:.0f} M events/s with the "
          f"PATTERN/FLAG/PI selection")

    for resolution in (1, 2):
        expected_image(sky, instrument, exposure, resolution)  # warm the PSF-kernel cache
        t = best_of(lambda res=resolution: expected_image(sky, instrument, exposure, res), repeat=2)
        print(f"expected_image {resolution}x: {t:.2f} s per source (after the per-process kernel cache)")


if __name__ == "__main__":
    main()
