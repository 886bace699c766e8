"""Rule simulate: event lists of one shard at one exposure and resolution (built-in simulator or SIXTE)."""

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.instrument.model import instrument_config_with_inputs
from xmmsr.instrument.model import PnInstrument
from xmmsr.pipeline import logged_to, simulate_shard

with logged_to(sm.log[0]):
    instrument_cfg = instrument_config_with_inputs(sm.params.instrument, sm.input)
    # the rule's params leave out the expected image's oversampling, which events never use
    instrument = PnInstrument.from_config(dict(instrument_cfg, expected_oversample=1))
    backend, sixte = sm.params.backend, None
    if backend != "builtin":
        written = sm.input.sixte_instrument if hasattr(sm.input, "sixte_instrument") else None
        backend, sixte = "sixte", {"executable": sm.params.backend["executable"],
                                   "instrument": written or sm.params.backend["instrument_xml"]}
    simulate_shard(sm.input.sky, instrument, sm.params.exposure_s, sm.params.resolution, sm.params.seed,
                   sm.output[0], background=True, tstart=sm.params.tstart, backend=backend, sixte=sixte)
