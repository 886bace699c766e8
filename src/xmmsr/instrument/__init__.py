"""The built-in EPIC-pn instrument model: geometry, PSF, response, event simulation and binning."""
