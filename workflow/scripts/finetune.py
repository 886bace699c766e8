"""Rule finetune: a trained model continued on simulated and real thinned pairs (resumes after a kill)."""

from pathlib import Path

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.pipeline import logged_to

with logged_to(sm.log[0]):
    from xmmsr.evaluate.consistency import degradation_kernel
    from xmmsr.instrument.model import PnInstrument
    from xmmsr.learn.finetune import FinetuneRun, finetune
    from xmmsr.thinning import ThinningPlan

    real = sm.params.real
    plan = ThinningPlan(real["input_exposure_ks"] * 1000.0, real["max_input_fraction"])
    train_cfg = {**sm.params.train, "num_workers": 0}
    run = FinetuneRun(sm.wildcards.task, Path(sm.input.start), Path(sm.input.dataset), Path(sm.input.real), train_cfg,
                      real["finetune"], plan, sm.params.seed, Path(sm.params.checkpoint_dir))
    kernel = None
    if sm.wildcards.task == "sr":
        instrument = PnInstrument.from_config(sm.params.instrument,
                                              base_dir=Path(sm.scriptdir).resolve().parents[1])
        kernel = degradation_kernel(instrument, 2)
    finetune(run, Path(sm.output.model), Path(sm.output.history), kernel,
             threads=sm.config["train"]["threads"] or sm.threads)
