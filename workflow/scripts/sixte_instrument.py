"""Rule sixte_instrument: SIXTE's EPIC-pn instrument at one resolution, written from the instrument model."""

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.instrument.model import PnInstrument, instrument_config_with_inputs
from xmmsr.instrument.sixte_instrument import write_sixte_instrument
from xmmsr.pipeline import logged_to

with logged_to(sm.log[0]):
    instrument = PnInstrument.from_config(instrument_config_with_inputs(sm.params.instrument, sm.input))
    xml = write_sixte_instrument(instrument, sm.params.resolution, sm.output[0], calib=sm.params.calib, overwrite=True)
    print(f"{xml}: SIXTE EPIC-pn instrument at {sm.params.resolution}x")
