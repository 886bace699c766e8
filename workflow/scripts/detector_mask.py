"""Rule detector_mask: the 0/1 active-area mask at one resolution."""

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.config import check_config
from xmmsr.instrument.binning import write_detector_mask
from xmmsr.instrument.model import PnInstrument
from xmmsr.pipeline import logged_to

with logged_to(sm.log[0]):
    cfg = check_config({"instrument": {"geometry": sm.params.geometry}})
    geometry = PnInstrument.from_config(cfg["instrument"]).geometry
    write_detector_mask(geometry, sm.params.resolution, sm.output[0])
