"""Rule deblend: how often SR, Richardson-Lucy, a PSF fit, the input and the 2x truth resolve close AGN pairs."""

from pathlib import Path

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.pipeline import logged_to

with logged_to(sm.log[0]):
    from xmmsr.evaluate.deblend import deblending
    from xmmsr.evaluate.run import write_csv
    from xmmsr.instrument.model import PnInstrument
    from xmmsr.learn.checkpoint import load_model

    cfg = sm.params.deblend
    instrument = PnInstrument.from_config(sm.params.instrument, base_dir=Path(sm.scriptdir).resolve().parents[1])
    table = deblending(load_model(sm.input.model), instrument, *sm.params.exposures_s, cfg["counts"],
                       cfg["separations_fwhm"], cfg["flux_ratios"], cfg["trials"], sm.params.seed, sm.params.nsigma,
                       sm.params.rl_iterations)
    write_csv(table, sm.output[0])
    print(table.to_string(index=False), flush=True)
