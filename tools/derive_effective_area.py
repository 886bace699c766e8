"""Derive the pn effective-area tables (resources/instrument/pn_{thin,medium}_effective_area.csv) from a
real on-axis thin-filter ARF (SAS arfgen).

The thin table is the ARF's SPECRESP at the bin centres over 0.25-4.5 keV. The medium filter differs from
the thin one by its aluminium layer (80 nm instead of 40 nm on the same 160 nm polyimide, XMM-Newton
Users Handbook section 3.3.6), so the medium table is the thin one times the transmission of 40 nm of
aluminium (density 2.70 g cm-3), with the attenuation coefficients of the xraydb tables (Elam et al.).

    python tools/derive_effective_area.py ARF --thin pn_thin_effective_area.csv --medium pn_medium_effective_area.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from astropy.io import fits

RANGE_KEV = (0.25, 4.5)
EXTRA_ALUMINIUM_NM = 40.0
ALUMINIUM_DENSITY = 2.70


def aluminium_transmission(energy_kev: np.ndarray, thickness_nm: float) -> np.ndarray:
    import xraydb  # a tool-only dependency: pip install xraydb

    mu_per_cm = xraydb.material_mu("Al", energy_kev * 1000.0, density=ALUMINIUM_DENSITY)
    return np.exp(-mu_per_cm * thickness_nm * 1e-7)


def write(path: Path, energy: np.ndarray, area: np.ndarray, lines: list[str]) -> None:
    if path.exists():
        raise SystemExit(f"{path} exists; remove it or choose another output")
    in_band = (energy >= 0.5) & (energy <= 2.0)
    lines = lines + [f"# the on-axis mean over 0.5-2 keV (flat in energy) is {area[in_band].mean():.0f} cm2.",
                     "# energy_keV,area_cm2"]
    rows = [f"{e:.4f},{a:.3f}" for e, a in zip(energy, area)]
    path.write_text("\n".join(lines + rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arf", type=Path)
    parser.add_argument("--thin", type=Path, required=True)
    parser.add_argument("--medium", type=Path, required=True)
    args = parser.parse_args()
    with fits.open(args.arf) as hdul:
        table, header = hdul["SPECRESP"].data, hdul["SPECRESP"].header
        energy = 0.5 * (np.asarray(table["ENERG_LO"], float) + np.asarray(table["ENERG_HI"], float))
        area = np.asarray(table["SPECRESP"], float)
        creator = hdul[0].header.get("CREATOR", header.get("CREATOR", "SAS arfgen"))
    keep = (energy >= RANGE_KEV[0]) & (energy <= RANGE_KEV[1])
    energy, area = energy[keep], area[keep]
    source = (f"# copied from a real SAS arfgen ARF ({args.arf.name}, {creator}; {header.get('TELESCOP')} "
              f"{header.get('INSTRUME')}); SPECRESP at the bin centres, {RANGE_KEV[0]}-{RANGE_KEV[1]} keV;")
    write(args.thin, energy, area,
          ["# EPIC-pn on-axis effective area, thin filter, full frame (mirror x filter x quantum efficiency),", source])
    write(args.medium, energy, area * aluminium_transmission(energy, EXTRA_ALUMINIUM_NM),
          ["# EPIC-pn on-axis effective area, medium filter, full frame: the thin-filter table below",
           source.replace("# copied", "# (copied") + ")",
           f"# times the transmission of the medium filter's extra {EXTRA_ALUMINIUM_NM:.0f} nm of aluminium "
           "(xraydb attenuation, tools/derive_effective_area.py);"])


if __name__ == "__main__":
    main()
