"""Compare the built-in simulator with SIXTE on the same sky model (for users who have SIXTE).

Prints the 0.5-2 keV counts of both backends, their ratio, and the radial profile of the counts about
the source centre; writes a side-by-side image (PNG). Run:

    python bench/compare_backends.py [SKY.fits] [--exposure 20000] [--resolution 1] [--xml pn.xml] \\
        [--output compare.png]

Without SKY.fits a synthetic cluster with AGN is generated from the embedded default config. Needs
``sixtesim`` on PATH and the XMM EPIC-pn instrument files (``--xml`` or the SIXTE environment variable).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from xmmsr.config import default_config
from xmmsr.errors import InputError
from xmmsr.instrument.binning import bin_counts, select_good
from xmmsr.instrument.model import PnInstrument
from xmmsr.instrument.simulator import simulate_events
from xmmsr.instrument.sixte import instrument_xml, simulate_events_sixte
from xmmsr.pipeline import brightness_reference
from xmmsr.sky.generate import generate_source
from xmmsr.sky.model import read_sky_model

REPO = Path(__file__).resolve().parents[1]


def counts_image(events, instrument: PnInstrument, resolution: int) -> np.ndarray:
    """Bin an in-memory event list with the standard 0.5-2 keV selection."""
    c = events.columns
    good = select_good(c["PATTERN"], c["FLAG"], c["PI"])
    return bin_counts(c["DETX"][good], c["DETY"][good], instrument.geometry.image_grid(resolution))


def radial_profile(image: np.ndarray, edges_px: np.ndarray) -> np.ndarray:
    """Counts per pixel in annuli about the image's brightest 5x5 block."""
    from scipy import ndimage

    smooth = ndimage.uniform_filter(image.astype(float), 5)
    cy, cx = np.unravel_index(np.argmax(smooth), image.shape)
    yy, xx = np.indices(image.shape)
    r = np.hypot(yy - cy, xx - cx)
    return np.array([image[(r >= a) & (r < b)].mean() for a, b in zip(edges_px[:-1], edges_px[1:])])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sky", nargs="?", help="sky-model FITS (default: a generated cluster)")
    parser.add_argument("--exposure", type=float, default=20000.0)
    parser.add_argument("--resolution", type=int, choices=(1, 2), default=1)
    parser.add_argument("--xml", help="SIXTE EPIC-pn instrument XML (default: from $SIXTE)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", default="compare_backends.png")
    args = parser.parse_args()
    cfg = default_config()
    instrument = PnInstrument.from_config(cfg["instrument"], base_dir=REPO)
    sky = read_sky_model(args.sky) if args.sky else generate_source(
        "extended", 0, cfg["sources"], brightness_reference(instrument), cfg["seed"])
    try:
        xml = instrument_xml(args.xml)
        builtin = simulate_events(sky, instrument, args.exposure, args.resolution, args.seed)
        with tempfile.TemporaryDirectory() as work, open(Path(work) / "sixte.log", "w") as log:
            sixte = simulate_events_sixte(sky, instrument, args.exposure, args.resolution, args.seed, 0.0, xml,
                                          Path(work), log)
    except InputError as exc:
        print(f"compare_backends: {exc}", file=sys.stderr)
        return 2
    images = {name: counts_image(ev, instrument, args.resolution) for name, ev in (("builtin", builtin),
                                                                                    ("sixte", sixte))}
    n = {k: int(v.sum()) for k, v in images.items()}
    print(f"0.5-2 keV counts: builtin {n['builtin']}, sixte {n['sixte']}, ratio sixte/builtin "
          f"{n['sixte'] / max(n['builtin'], 1):.3f}")
    edges = np.array([0, 2, 4, 8, 16, 32, 64, 128]) * args.resolution
    profiles = {k: radial_profile(v, edges) for k, v in images.items()}
    print("radius [px]   builtin   sixte   (counts per pixel)")
    for a, b, p1, p2 in zip(edges[:-1], edges[1:], profiles["builtin"], profiles["sixte"]):
        print(f"{a:4d}-{b:<4d}   {p1:9.4f} {p2:9.4f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    vmax = np.arcsinh(max(np.percentile(v, 99.9) for v in images.values()))
    for ax, (name, image) in zip(axes, images.items()):
        im = ax.imshow(np.arcsinh(image), origin="lower", cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(f"{name}: {n[name]} counts, {args.exposure / 1000:g} ks, {args.resolution}x")
    fig.colorbar(im, ax=axes, label="asinh(counts per pixel)")
    fig.savefig(args.output, dpi=100)
    print(f"image: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
