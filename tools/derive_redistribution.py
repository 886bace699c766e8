"""Derive the pn PI redistribution table (resources/instrument/pn_redistribution_pi500_2000.csv) from a
real EPIC-pn OGIP response matrix (RMF).

For true energies 0.40-4.00 keV (10 eV steps) the table holds the probability that a photon gets a PI
value in the 0.5-2 keV band (PI 500-2000 eV inclusive, as ``evselect`` selects it) and the PI of the
in-band events at 64 equally spaced levels of their cumulative distribution (PI quantiles, eV). RMF
channel ``c`` holds PI values 5c .. 5c+4 eV; within a channel PI is spread uniformly. Rows of the matrix
are read at their centre energies and interpolated linearly onto the 10 eV grid.

    python tools/derive_redistribution.py RMF --output pn_redistribution_pi500_2000.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from astropy.io import fits

ENERGY_GRID_KEV = np.round(np.arange(0.40, 4.0001, 0.01), 4)
PI_BAND_EV = (500, 2000)
LEVELS = 64
EV_PER_CHANNEL = 5


def dense_matrix(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Centre energies (keV) of the RMF rows and the dense matrix (rows x channels)."""
    with fits.open(path) as hdul:
        m = hdul["MATRIX"].data
        n_chan = int(hdul["MATRIX"].header["DETCHANS"])
        first = int(hdul["MATRIX"].header.get("TLMIN4", 0))
        centre = 0.5 * (np.asarray(m["ENERG_LO"], float) + np.asarray(m["ENERG_HI"], float))
        dense = np.zeros((len(m), n_chan))
        for i in range(len(m)):
            values, k = m["MATRIX"][i], 0
            for g in range(int(m["N_GRP"][i])):
                f, n = int(m["F_CHAN"][i][g]) - first, int(m["N_CHAN"][i][g])
                dense[i, f:f + n] = values[k:k + n]
                k += n
    return centre, dense


def in_band_pi(row: np.ndarray) -> tuple[float, np.ndarray]:
    """Band probability and PI quantiles (eV) of the in-band events of one matrix row."""
    lo, hi = PI_BAND_EV
    c_lo, c_hi = lo // EV_PER_CHANNEL, hi // EV_PER_CHANNEL
    # Probability per integer PI value in the band: each channel's weight spread over its 5 values.
    pi_values = np.arange(lo, hi + 1)
    per_value = row[pi_values // EV_PER_CHANNEL] / EV_PER_CHANNEL
    assert c_hi == pi_values[-1] // EV_PER_CHANNEL and c_lo == pi_values[0] // EV_PER_CHANNEL
    total = per_value.sum()
    row_sum = row.sum()
    band = total / row_sum if row_sum > 0 else 0.0
    if total <= 0:
        return band, np.linspace(lo - 0.5, hi + 0.5, LEVELS + 1)
    # Continuous CDF: value v occupies [v - 0.5, v + 0.5) uniformly.
    edges = np.concatenate([[lo - 0.5], pi_values + 0.5])
    cdf = np.concatenate([[0.0], np.cumsum(per_value) / total])
    levels = np.linspace(0.0, 1.0, LEVELS + 1)
    keep = np.concatenate([[True], np.diff(cdf) > 0])  # strictly increasing for the inverse
    return band, np.interp(levels, cdf[keep], edges[keep])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rmf", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    if args.output.exists():
        raise SystemExit(f"{args.output} exists; remove it or choose another --output")
    centre, dense = dense_matrix(args.rmf)
    rows = []
    for e in ENERGY_GRID_KEV:
        j = int(np.clip(np.searchsorted(centre, e), 1, centre.size - 1))
        t = (e - centre[j - 1]) / (centre[j] - centre[j - 1])
        band, q = in_band_pi((1 - t) * dense[j - 1] + t * dense[j])
        rows.append([e, band, *q])
    with fits.open(args.rmf) as hdul:
        h = hdul["MATRIX"].header
        source = f"{args.rmf.name} (TELESCOP={h.get('TELESCOP')}, INSTRUME={h.get('INSTRUME')}, CHANTYPE={h.get('CHANTYPE')})"
    header = [
        "# EPIC-pn PI redistribution for the 0.5-2 keV band (PI 500-2000 eV), derived with",
        f"# tools/derive_redistribution.py from the real SAS canned response matrix {source}:",
        "# full frame, single+double patterns. band_fraction: probability that a photon of true energy",
        "# energy_keV gets PI in the band; q00..q64: PI (eV) of the in-band events at CDF = k/64.",
        "energy_keV,band_fraction," + ",".join(f"q{k:02d}" for k in range(LEVELS + 1)),
    ]
    lines = [",".join([f"{r[0]:.2f}", f"{r[1]:.6f}", *(f"{v:.1f}" for v in r[2:])]) for r in rows]
    args.output.write_text("\n".join(header + lines) + "\n")


if __name__ == "__main__":
    main()
