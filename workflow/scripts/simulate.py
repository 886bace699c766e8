"""Rule simulate: event lists of one shard at one exposure and resolution (built-in simulator or SIXTE)."""

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.config import check_config
from xmmsr.instrument.model import instrument_config_with_inputs
from xmmsr.instrument.model import PnInstrument
from xmmsr.pipeline import logged_to, simulate_shard

with logged_to(sm.log[0]):
    cfg = check_config({"instrument": instrument_config_with_inputs(sm.params.instrument, sm.input)})
    instrument = PnInstrument.from_config(cfg["instrument"])
    backend, sixte = (sm.params.backend, None) if sm.params.backend == "builtin" else ("sixte", sm.params.backend)
    simulate_shard(sm.input.sky, instrument, sm.params.exposure_s, sm.params.resolution, sm.params.seed,
                   sm.output[0], background=True, tstart=sm.params.tstart, backend=backend, sixte=sixte)
