"""Rule sources: generate the sky models of one shard."""

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.instrument.model import (Background, PatternFractions, PnInstrument, instrument_config_with_inputs,
                                    response_from_config)
from xmmsr.pipeline import logged_to, make_sky_shard

with logged_to(sm.log[0]):
    instrument_cfg = instrument_config_with_inputs(sm.params.instrument, sm.input)
    # source brightness depends only on the background, the pattern fractions and the response (the rule's params)
    instrument = PnInstrument(response=response_from_config(instrument_cfg), background=Background(**instrument_cfg[
        "background"]), patterns=PatternFractions(**instrument_cfg["pattern_fractions"]))
    make_sky_shard(sm.wildcards.kind, sm.params.ids, sm.params.sources, instrument, sm.params.seed, sm.output[0])
