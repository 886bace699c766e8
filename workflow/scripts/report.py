"""Rule report: the evaluation PDF and the figures of snakemake --report."""

from pathlib import Path

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.pipeline import logged_to

with logged_to(sm.log[0]):
    from xmmsr.evaluate.report import write_report
    from xmmsr.io import atomic_directory

    tasks = [name.removeprefix("metrics_") for name in sm.input.keys() if name.startswith("metrics_")]
    metric_dirs = {t: Path(sm.input[f"metrics_{t}"]).parent for t in tasks}
    histories = {t: Path(sm.input[f"history_{t}"]) for t in tasks}
    real = Path(sm.input.real) if "real" in sm.input.keys() else None
    thinned = {t: Path(sm.input[f"real_thinned_{t}"]) for t in tasks if f"real_thinned_{t}" in sm.input.keys()}
    deblend = Path(sm.input.deblend) if "deblend" in sm.input.keys() else None
    deblend_adversarial = Path(sm.input.deblend_adversarial) if "deblend_adversarial" in sm.input.keys() else None
    adversarial = {t: Path(sm.input[f"adversarial_{t}"]).parent for t in tasks if f"adversarial_{t}" in sm.input.keys()}
    with atomic_directory(sm.output.figures) as figures:
        write_report(metric_dirs, histories, sm.params.config, sm.output.pdf, figures, real, thinned, deblend,
                     adversarial, deblend_adversarial)
