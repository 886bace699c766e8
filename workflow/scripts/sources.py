"""Rule sources: generate the sky models of one shard."""

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.config import check_config
from xmmsr.instrument.model import instrument_config_with_inputs
from xmmsr.instrument.model import PnInstrument
from xmmsr.pipeline import logged_to, make_sky_shard

with logged_to(sm.log[0]):
    instrument_cfg = check_config({"instrument": instrument_config_with_inputs(sm.params.instrument, sm.input)})
    instrument = PnInstrument.from_config(instrument_cfg["instrument"])
    make_sky_shard(sm.wildcards.kind, sm.params.ids, sm.params.sources, instrument, sm.params.seed, sm.output[0])
