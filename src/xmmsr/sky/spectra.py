"""Source spectra: the absorbed photon spectra N(E) of the sky's sources (power law, thermal
bremsstrahlung) and the flux band. The sky owns them; the instrument folds them through its response."""

from __future__ import annotations

import numpy as np

BAND_KEV = (0.5, 2.0)   # the band in which sky fluxes are given and images are made


def absorption_cross_section(energy_kev: np.ndarray) -> np.ndarray:
    """Photo-electric cross-section per H atom (cm^2), power-law approximation of
    Morrison & McCammon (1983) in 0.5-2 keV: 2.4e-22 (E / keV)^(-8/3)."""
    return 2.4e-22 * np.power(energy_kev, -8.0 / 3.0)


def photon_spectrum(model: str, parameter: float, nh: float, energy_kev: np.ndarray) -> np.ndarray:
    """Unnormalised photon spectrum N(E) (ph cm-2 s-1 keV-1) of a power law (photon index) or of
    thermal bremsstrahlung (kT in keV; Gaunt factor approximated by (E/kT)^-0.4), absorbed by ``nh``."""
    if model == "powerlaw":
        spec = np.power(energy_kev, -parameter)
    elif model == "bremss":
        spec = np.power(energy_kev / parameter, -0.4) * np.exp(-energy_kev / parameter) / energy_kev
    else:
        raise ValueError(f"unknown spectral model {model!r}; use 'powerlaw' or 'bremss'")
    return spec * np.exp(-nh * absorption_cross_section(energy_kev))
