"""Rule detector_mask: the 0/1 active-area mask at one resolution."""

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.instrument.binning import write_detector_mask
from xmmsr.instrument.model import geometry_from_config
from xmmsr.pipeline import logged_to

with logged_to(sm.log[0]):
    geometry = geometry_from_config(sm.params.geometry)
    write_detector_mask(geometry, sm.params.resolution, sm.output[0])
