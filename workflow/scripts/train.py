"""Rule train: one DN or SR model (resumes from the checkpoints of a killed run)."""

from pathlib import Path

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.pipeline import logged_to

with logged_to(sm.log[0]):
    from xmmsr.learn.train import run_from_config, train  # imported here so Lightning's log goes to the job log

    config = {"model": sm.params.model, "train": {**sm.params.train, "num_workers": sm.config["train"]["num_workers"]}}
    run = run_from_config(config, sm.wildcards.task, sm.input[0], sm.params.checkpoint_dir, sm.params.seed)
    threads = sm.config["train"]["threads"] or sm.threads
    train(run, Path(sm.output.model), Path(sm.output.history), Path(sm.output.onnx), threads=threads)
