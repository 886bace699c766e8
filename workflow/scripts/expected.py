"""Rule expected: noise-free expected count-rate images of one shard at one resolution."""

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.instrument.model import instrument_config_with_inputs
from xmmsr.instrument.model import PnInstrument
from xmmsr.pipeline import expected_shard, logged_to

with logged_to(sm.log[0]):
    instrument_cfg = instrument_config_with_inputs(sm.params.instrument, sm.input)
    expected_shard(sm.input.sky, PnInstrument.from_config(instrument_cfg), sm.params.resolution, sm.output[0])
