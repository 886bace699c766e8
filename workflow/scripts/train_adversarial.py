"""Rule train_adversarial: the pixel-loss model continued with the relativistic adversarial term (resumes)."""

from pathlib import Path

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.pipeline import logged_to

with logged_to(sm.log[0]):
    from xmmsr.learn.adversarial import AdversarialRun, train_adversarial

    run = AdversarialRun(sm.wildcards.task, Path(sm.input.start), Path(sm.input.dataset), sm.params.train,
                         sm.params.seed, Path(sm.params.checkpoint_dir))
    train_adversarial(run, Path(sm.output.model), Path(sm.output.history),
                      threads=sm.config["train"]["threads"] or sm.threads)
