"""Throughput of the built-in simulator, the expected image and binning (a benchmark, not a test).

Prints, for a bright cluster giving ~10^7 photons: the phases of one ``simulate_events`` call (sky
projection, per-photon core, time ordering and event columns) with the event-list write and the
command's start-up; the whole call from 10^5 to ``--max-photons`` photons with its peak memory; binned
events per second; the expected image per source of the default configuration's fields (cold, as
shard jobs see it: each field's PSF kernels are mostly new) and of the bright cluster (kernels cached);
and with ``--shard N`` a shard of N sources per kind (simulation at 100 ks and expected image, both
resolutions, each in a fresh process): time per source and peak memory, to size shards of 1000.
Times are CPU seconds of this process (one core; other work on the machine slows them less than wall
time). Run: python bench/bench_simulator.py [--max-photons 1e8] [--shard 20]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from xmmsr.config import default_config
from xmmsr.instrument.binning import bin_counts, select_good
from xmmsr.instrument.events import Pointing, write_events
from xmmsr.instrument.model import PnInstrument
from xmmsr.instrument.simulator import (TimeSlots, _event_columns, _sky_pixels, ccd_live, detect_photons,
                                        expected_image, expected_photons, simulate_events, time_slot_count)
from xmmsr.sky.model import FieldBackground, SkyModel, empty_point_table, make_wcs

REPO = Path(__file__).resolve().parents[1]
EXPOSURE_S = 100_000.0
PHOTONS_PER_FLUX = 1.08e8   # photons drawn per unit total flux of the bright field at 100 ks (measured)
# the start of every child process's code: the default configuration ``cfg`` and its instrument ``inst``
CHILD_SETUP = ("from pathlib import Path; from xmmsr.config import default_config; "
               "from xmmsr.instrument.model import PnInstrument; cfg = default_config(); "
               f"inst = PnInstrument.from_config(cfg['instrument'], base_dir=Path({str(REPO)!r})); ")


def bright_field(total_flux: float, npix: int = 1800) -> SkyModel:
    """A beta-model cluster bright enough to give millions of photons."""
    yy, xx = np.mgrid[:npix, :npix]
    r = np.hypot(xx - npix / 2, yy - npix / 2)
    image = (1 + (r / 60.0) ** 2) ** (-1.5)
    image = (image / image.sum() * total_flux).astype(np.float32)
    return SkyModel(image, make_wcs(150.0, 2.0, (npix, npix), 1.0), 150.0, 2.0, "extended", points=empty_point_table())


def cpu_best(fn, repeat: int = 3) -> float:
    """Least CPU time of ``repeat`` calls (seconds)."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def phases(instrument: PnInstrument, photons: float) -> None:
    """The phases of one simulate_events call, and the write and start-up around it."""
    sky = bright_field(photons / PHOTONS_PER_FLUX)
    frame = Pointing.of(sky, instrument)
    grid = instrument.geometry.image_grid(1)
    reach = grid.refine(1, int(np.ceil(instrument.psf.max_radius_arcsec / grid.pixel_arcsec)))
    field = FieldBackground.of(sky.meta)
    pixels = _sky_pixels(sky, frame, reach)
    n_expected = expected_photons(sky, pixels, instrument, EXPOSURE_S, True, field)
    t_projection = cpu_best(lambda: _sky_pixels(sky, frame, reach))
    holder: dict[str, TimeSlots] = {}

    def core() -> None:
        rng = np.random.default_rng(1)
        holder["slots"] = TimeSlots(rng, time_slot_count(n_expected))
        holder["rng"] = rng
        detect_photons(rng, sky, pixels, instrument, EXPOSURE_S, 1, True, holder["slots"].add, field)

    t_core = cpu_best(core)
    live = ccd_live(sky, instrument)

    def columns() -> None:
        core()
        _event_columns(holder["rng"], holder["slots"], instrument, frame, EXPOSURE_S, 1, 0.0, live)

    t_columns = cpu_best(columns) - t_core
    events = simulate_events(sky, instrument, EXPOSURE_S, 1, seed=1)
    n = int(events.header["NSKYPHOT"][0])
    t_total = cpu_best(lambda: simulate_events(sky, instrument, EXPOSURE_S, 1, seed=1))
    with tempfile.TemporaryDirectory() as tmp:
        t_write = cpu_best(lambda: write_events(events, Path(tmp) / "events.fits"))
    t_start = min(_child_cpu("import xmmsr.cli; from xmmsr.instrument.simulator import simulate_events; "
                             "from xmmsr.instrument.binning import bin_event_file")[0] for _ in range(3))
    rows = [("sky projection (1800² sky)", t_projection), ("per-photon core (draws, vignetting, PSF, energies, FoV, "
            "CCDs, time slots)", t_core), ("time ordering and event columns", t_columns),
            ("whole simulate_events call", t_total), ("write_events (FITS, checksums)", t_write),
            ("start-up of simulate/bin (imports)", t_start)]
    print(f"\nsimulate_events on {n / 1e6:.1f} M photons ({len(events) / 1e6:.1f} M events), CPU seconds:")
    print("| phase | s | share of call + write + start-up |")
    print("|---|---|---|")
    whole = t_total + t_write + t_start
    for name, t in rows:
        share = "" if name.startswith("whole") else f"{100 * t / whole:.0f} %"
        print(f"| {name} | {t:.2f} | {share} |")
    print(f"whole call: {n / t_total / 1e6:.1f} M photons/s; per-photon core {n / t_core / 1e6:.1f} M photons/s; "
          f"write {len(events) / t_write / 1e6:.1f} M events/s")


def _child_cpu(code: str) -> tuple[float, float, list[str]]:
    """CPU seconds, peak resident memory (GB) and printed words of ``code`` run in a fresh Python process."""
    probe = ("import resource, sys; exec(sys.argv[1]); u = resource.getrusage(resource.RUSAGE_SELF); "
             "hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')]; "
             "print(u.ru_utime + u.ru_stime, hwm[0] if hwm else 'nan')")   # VmHWM: this process's own peak (kB)
    out = subprocess.run([sys.executable, "-c", probe, code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[-2]), float(out[-1]) / 2**20, out[:-2]


def scaling(max_photons: float) -> None:
    """Whole simulate_events calls from 10^5 photons up, each in a fresh process (peak memory)."""
    print("\n| photons drawn | events | CPU s | M photons/s | peak memory GB |")
    print("|---|---|---|---|---|")
    for exponent in range(5, int(np.log10(max_photons)) + 1):
        code = (CHILD_SETUP + f"import sys, time; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                "from bench_simulator import bright_field, PHOTONS_PER_FLUX, EXPOSURE_S; "
                "from xmmsr.instrument.simulator import simulate_events; "
                f"sky = bright_field({10.0 ** exponent} / PHOTONS_PER_FLUX); t = time.process_time(); "
                "ev = simulate_events(sky, inst, EXPOSURE_S, 1, seed=1); "
                "print(ev.header['NSKYPHOT'][0], len(ev), time.process_time() - t)")
        _, peak, out = _child_cpu(code)
        n, events, t = int(out[0]), int(out[1]), float(out[2])
        print(f"| 10^{exponent} ({n:.3g}) | {events:.3g} | {t:.2f} | {n / t / 1e6:.1f} | {peak:.2f} |")


def binning(instrument: PnInstrument) -> None:
    rng = np.random.default_rng(0)
    n = 50_000_000
    detx = rng.integers(-16500, 16500, n).astype(np.int16)
    dety = rng.integers(-16800, 16800, n).astype(np.int16)
    pi = rng.integers(200, 12000, n).astype(np.int16)
    pattern = rng.integers(0, 13, n).astype(np.int16)
    flag = (rng.random(n) < 0.02).astype(np.int32)
    grid = instrument.geometry.image_grid(1)
    t_bin = cpu_best(lambda: bin_counts(detx, dety, grid))

    def selected() -> None:
        good = select_good(pattern, flag, pi)
        bin_counts(detx[good], dety[good], grid)

    t_sel = cpu_best(selected)
    print(f"\nbinning: {n / t_bin / 1e6:.0f} M events/s (bin_counts), {n / t_sel / 1e6:.0f} M events/s with the "
          f"PATTERN/FLAG/PI selection")


def expected(instrument: PnInstrument) -> None:
    """Expected image per source: default fields cold (fresh process), the bright cluster warm."""
    for resolution in (1, 2):
        code = (CHILD_SETUP + "from xmmsr.pipeline import brightness_reference; "
                "from xmmsr.sky.generate import generate_source; from xmmsr.instrument.simulator import expected_image; "
                "import time; b = brightness_reference(inst); skies = [generate_source(k, i, cfg['sources'], b, cfg['seed']) "
                "for k in ('extended', 'agn', 'background') for i in range(3)]; t = time.process_time(); "
                f"[expected_image(s, inst, 1.0, {resolution}) for s in skies]; "
                "print((time.process_time() - t) / len(skies))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        print(f"expected image {resolution}x, default fields (3 of each kind), cold kernels: {float(out[-1]):.2f} s per source")
    sky = bright_field(0.25)
    for resolution in (1, 2):
        expected_image(sky, instrument, EXPOSURE_S, resolution)  # warm the PSF-kernel cache
        t = cpu_best(lambda res=resolution: expected_image(sky, instrument, EXPOSURE_S, res), repeat=2)
        print(f"expected image {resolution}x, bright cluster, cached kernels: {t:.2f} s")


def shard(n_sources: int) -> None:
    """A shard of ``n_sources`` per kind: simulation (100 ks) and expected image per source, and peak memory."""
    print(f"\nshard of {n_sources} sources per kind (fresh process per job): CPU s per source, peak memory GB")
    print("| kind | simulate 100 ks 1x | simulate 100 ks 2x | expected 1x | expected 2x |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("extended", "agn", "background"):
            sky_dir = Path(tmp) / kind
            subprocess.run([sys.executable, "-c", CHILD_SETUP + "from xmmsr.pipeline import make_sky_shard; "
                            f"make_sky_shard({kind!r}, range({n_sources}), cfg['sources'], inst, cfg['seed'], "
                            f"{str(sky_dir)!r})"], check=True, capture_output=True)
            cells = []
            for job in ("simulate", "expected"):
                for resolution in (1, 2):
                    out = Path(tmp) / f"{kind}_{job}_{resolution}"
                    call = (f"simulate_shard({str(sky_dir)!r}, inst, {EXPOSURE_S}, {resolution}, 1, {str(out)!r})"
                            if job == "simulate" else
                            f"expected_shard({str(sky_dir)!r}, inst, {resolution}, {str(out) + '.fits'!r})")
                    t, peak, _ = _child_cpu(CHILD_SETUP + f"from xmmsr.pipeline import {job}_shard; " + call)
                    cells.append(f"{t / n_sources:.2f} s, {peak:.1f} GB")
            print(f"| {kind} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-photons", type=float, default=1e7, help="largest sky of the scaling table")
    parser.add_argument("--shard", type=int, default=0, help="sources per kind of the shard measurement (0: none)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="sections to run (phases scaling binning expected shard); default all")
    args = parser.parse_args()
    instrument = PnInstrument.from_config(default_config()["instrument"], base_dir=REPO)
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, numpy {np.__version__}")
    sections = set(args.only or ("phases", "scaling", "binning", "expected", "shard"))
    if "phases" in sections:
        phases(instrument, 1e7)
    if "scaling" in sections:
        scaling(args.max_photons)
    if "binning" in sections:
        binning(instrument)
    if "expected" in sections:
        expected(instrument)
    if "shard" in sections and args.shard > 0:
        shard(args.shard)


if __name__ == "__main__":
    main()
