"""Compare the built-in simulator with SIXTE on the same sky models and instrument model.

For extended (cluster + AGN), AGN-only and blank fields of the embedded default config, at 1x and 2x, both
backends simulate the same sky with the same instrument model (SIXTE's instrument is written from it by
``xmmsr sixte-instrument``), so the differences are SIXTE's detector physics. Printed (and written as CSV):

* counts in PI 0.5-2 keV (FLAG 0), all patterns and PATTERN <= 4, and their ratio SIXTE / built-in;
* pattern fractions (single, double, triple + quadruple) in the band;
* background per pixel (blank fields: counts per active 1x-pixel area);
* wall time per source of each backend;
* encircled energy of a point source (5e-4 ph cm-2 s-1, at the aim point and 10' off axis) at 8", 16"
  and 32", relative to 120"; and a source ten times brighter at the aim point, where SIXTE's pile-up shows.

Run (SIXTE on PATH, e.g. after ``. .ci/sixte-env.sh`` in a checkout beside ../shared/sixte):

    python bench/compare_backends.py [--fields 3] [--exposure 20000] [--output compare_backends.csv]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from xmmsr.config import default_config
from xmmsr.errors import InputError
from xmmsr.instrument.events import EventList, Pointing
from xmmsr.instrument.model import PnInstrument
from xmmsr.instrument.simulator import simulate_events
from xmmsr.instrument.sixte import find_sixte, sixte_version, simulate_events_sixte
from xmmsr.instrument.sixte_instrument import write_sixte_instrument
from xmmsr.pipeline import brightness_reference
from xmmsr.sky.generate import generate_source
from xmmsr.sky.model import SkyModel, empty_point_table, make_wcs

REPO = Path(__file__).resolve().parents[1]
EE_RADII = (8.0, 16.0, 32.0)
EE_REFERENCE = 120.0


def band(events: EventList, patterns_max: int = 12) -> np.ndarray:
    c = events.columns
    return (c["PI"] >= 500) & (c["PI"] <= 2000) & (c["FLAG"] == 0) & (c["PATTERN"] <= patterns_max)


def pattern_fractions(events: EventList) -> tuple[float, float, float]:
    p = events.columns["PATTERN"][band(events)]
    n = max(p.size, 1)
    return float(np.sum(p == 0) / n), float(np.sum((p >= 1) & (p <= 4)) / n), float(np.sum(p >= 5) / n)


def point_field(instrument: PnInstrument, flux: float, offaxis_arcmin: float) -> SkyModel:
    """One point source ``offaxis_arcmin`` from the optical axis (towards the array centre), no background."""
    ra0, dec0 = 150.0, 2.0
    sky = SkyModel(np.zeros((16, 16), np.float32), make_wcs(ra0, dec0, (16, 16), 4.0), ra0, dec0, "agn")
    frame = Pointing.of(sky, instrument)
    g = instrument.geometry
    direction = np.array([g.array_center_x_arcsec - g.axis_x_arcsec, g.array_center_y_arcsec - g.axis_y_arcsec])
    direction = direction / np.hypot(*direction) if offaxis_arcmin > 0 else np.zeros(2)
    dx, dy = g.axis_x_arcsec + direction[0] * offaxis_arcmin * 60, g.axis_y_arcsec + direction[1] * offaxis_arcmin * 60
    if offaxis_arcmin == 0:
        dx, dy = g.aim_x_arcsec, g.aim_y_arcsec
    ra, dec = frame.to_sky(*frame.to_tangent(np.array([dx]), np.array([dy])))
    points = np.zeros(1, dtype=empty_point_table().dtype)
    points["RA"], points["DEC"], points["FLUX"], points["GAMMA"], points["NH"] = ra[0], dec[0], flux, 1.9, 3e20
    return dataclasses.replace(sky, points=points)


def encircled(events: EventList, radii: tuple[float, ...]) -> np.ndarray:
    """Fraction of the band events within each radius (arcsec) of the source (median position), over 120"."""
    c = events.columns
    m = band(events, 4)
    x, y = c["DETX"][m] * 0.05, c["DETY"][m] * 0.05
    r = np.hypot(x - np.median(x), y - np.median(y))
    total = np.sum(r <= EE_REFERENCE)
    return np.array([np.sum(r <= rad) / total for rad in radii])


def run_both(sky: SkyModel, instrument: PnInstrument, exposure: float, resolution: int, seed: int,
             xml: Path, background: bool = True) -> tuple[dict, dict]:
    out = {}
    t0 = time.perf_counter()
    out["builtin"] = simulate_events(sky, instrument, exposure, resolution, seed, background)
    t_builtin = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        out["sixte"] = simulate_events_sixte(sky, instrument, exposure, resolution, seed, 0.0, xml, Path(work),
                                             io.StringIO(), background)
        t_sixte = time.perf_counter() - t0
    return out, {"builtin": t_builtin, "sixte": t_sixte}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=3, help="fields per kind (extended, agn, background)")
    parser.add_argument("--exposure", type=float, default=20000.0)
    parser.add_argument("--output", default="compare_backends.csv")
    args = parser.parse_args()
    cfg = default_config()
    instrument = PnInstrument.from_config(cfg["instrument"], base_dir=REPO)
    try:
        exe = find_sixte()
    except InputError as exc:
        print(f"compare_backends: {exc}", file=sys.stderr)
        return 2
    print(f"SIXTE {sixte_version(exe)} ({exe.name}); {args.exposure / 1000:g} ks; {args.fields} fields per kind")
    rows = []
    with tempfile.TemporaryDirectory() as root:
        xmls = {r: write_sixte_instrument(instrument, r, Path(root) / f"pn{r}") for r in (1, 2)}
        for resolution in (1, 2):
            for kind in ("extended", "agn", "background"):
                for source_id in range(args.fields):
                    sky = generate_source(kind, source_id, cfg["sources"], brightness_reference(instrument), cfg["seed"])
                    ev, t = run_both(sky, instrument, args.exposure, resolution, 1000 + source_id, xmls[resolution])
                    row = {"kind": kind, "id": source_id, "resolution": resolution}
                    for name, events in ev.items():
                        row[f"{name}_all"] = int(band(events).sum())
                        row[f"{name}_good"] = int(band(events, 4).sum())
                        row[f"{name}_single"], row[f"{name}_double"], row[f"{name}_multi"] = pattern_fractions(events)
                        row[f"{name}_seconds"] = round(t[name], 2)
                    rows.append(row)
                    print(f"{kind:10s} {source_id} {resolution}x: counts {row['builtin_all']} / {row['sixte_all']} "
                          f"(sixte/builtin {row['sixte_all'] / max(row['builtin_all'], 1):.3f}; PATTERN<=4 "
                          f"{row['sixte_good'] / max(row['builtin_good'], 1):.3f}); time {t['builtin']:.1f} s / "
                          f"{t['sixte']:.1f} s", flush=True)
            for offaxis, flux in ((0.0, 5e-4), (10.0, 5e-4), (0.0, 5e-3)):
                sky = point_field(instrument, flux, offaxis)
                ev, t = run_both(sky, instrument, args.exposure, resolution, 7, xmls[resolution], background=False)
                ee = {name: encircled(events, EE_RADII) for name, events in ev.items()}
                label = f"point {offaxis:g}'" + (" bright" if flux > 1e-3 else "")
                row = {"kind": label, "id": 0, "resolution": resolution}
                for name, events in ev.items():
                    row[f"{name}_all"] = int(band(events).sum())
                    row[f"{name}_good"] = int(band(events, 4).sum())
                    row[f"{name}_single"], row[f"{name}_double"], row[f"{name}_multi"] = pattern_fractions(events)
                    row[f"{name}_seconds"] = round(t[name], 2)
                    for rad, value in zip(EE_RADII, ee[name]):
                        row[f"{name}_ee{rad:g}"] = round(float(value), 4)
                rows.append(row)
                print(f"{label} {resolution}x: counts {row['builtin_all']} / {row['sixte_all']}; EE(8/16/32\") / EE(120\") builtin "
                      f"{' '.join(f'{v:.3f}' for v in ee['builtin'])}, sixte {' '.join(f'{v:.3f}' for v in ee['sixte'])}",
                      flush=True)
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("kind", "id", "resolution"), k))
    with open(args.output, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    g = instrument.geometry
    active = g.ccds_x * g.ccds_y * g.ccd_columns * g.ccd_rows
    print(f"\n{summary_table(rows, args.exposure, active)}\nper field: {args.output}")
    return 0


def summary_table(rows: list[dict], exposure_s: float, active_pixels: int) -> str:
    """The README table: medians per kind and resolution; blank fields also give the background per 1x pixel."""
    lines = ["| field | res | counts SIXTE / built-in (all patterns) | PATTERN <= 4 | singles / doubles / 3+4 "
             "(built-in; SIXTE) | EE 8\"/16\"/32\" (built-in; SIXTE) | background per 1x pixel per ks "
             "(built-in; SIXTE) | s per source (built-in; SIXTE) |", "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["resolution"]), []).append(r)
    for (kind, res), rs in groups.items():
        def med(key: str) -> float:
            return float(np.median([r[key] for r in rs]))
        ratio_all = np.median([r["sixte_all"] / max(r["builtin_all"], 1) for r in rs])
        ratio_good = np.median([r["sixte_good"] / max(r["builtin_good"], 1) for r in rs])
        fr = (f"{med('builtin_single'):.2f}/{med('builtin_double'):.2f}/{med('builtin_multi'):.2f}; "
              f"{med('sixte_single'):.2f}/{med('sixte_double'):.2f}/{med('sixte_multi'):.2f}")
        ee = "-"
        if f"builtin_ee{EE_RADII[0]:g}" in rs[0]:
            ee = "; ".join("/".join(f"{rs[0][f'{n}_ee{rad:g}']:.3f}" for rad in EE_RADII) for n in ("builtin", "sixte"))
        bkg = "-"
        if kind == "background":
            per = active_pixels * exposure_s / 1000.0
            bkg = f"{med('builtin_all') / per:.4f}; {med('sixte_all') / per:.4f}"
        lines.append(f"| {kind} | {res}x | {ratio_all:.3f} | {ratio_good:.3f} | {fr} | {ee} | {bkg} | "
                     f"{med('builtin_seconds'):.2f}; {med('sixte_seconds'):.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
