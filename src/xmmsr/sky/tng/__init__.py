"""IllustrisTNG extended sources: web-API client, cutout reader, X-ray physics and projection to sky models."""

from .client import (
    API_KEY_ENV,
    TngApiError,
    TngClient,
    download_selection,
    local_manifest,
    read_manifest,
    write_manifest,
)
from .cutout import REQUIRED_FIELDS, GasCutout, read_cutout, write_cutout
from .physics import BandEmissivity, temperature_k
from .sky import Projection, project_cutout, projection_sky_model, tng_extended_image

__all__ = [
    "API_KEY_ENV", "REQUIRED_FIELDS", "BandEmissivity", "GasCutout", "Projection", "TngApiError", "TngClient",
    "download_selection", "local_manifest", "project_cutout", "projection_sky_model", "read_cutout", "read_manifest",
    "temperature_k", "tng_extended_image", "write_cutout", "write_manifest",
]
