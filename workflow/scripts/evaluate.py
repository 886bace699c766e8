"""Rule evaluate: one model and the classical baselines on the held-out split."""

from pathlib import Path

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.pipeline import logged_to

with logged_to(sm.log[0]):
    import torch

    from xmmsr.evaluate.run import evaluate_task

    torch.set_num_threads(sm.threads)
    table = evaluate_task(sm.input.dataset, sm.input.model, sm.params.instrument, sm.params.evaluate,
                          Path(sm.output.json).parent, base_dir=Path(sm.scriptdir).resolve().parents[1])
    print(f"{sm.output.json}: {table['sample'].nunique()} images x {table['method'].nunique()} methods")
