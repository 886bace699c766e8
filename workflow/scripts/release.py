"""Rule release: the run's models and their model card."""

from pathlib import Path

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.pipeline import logged_to

with logged_to(sm.log[0]):
    from xmmsr.evaluate.release import TaskRun, write_release
    from xmmsr.io import atomic_directory

    deblend = Path(sm.input.deblend[0]) if sm.input.deblend else None
    adversarial = {Path(f).parents[1].name: Path(f) for f in sm.input.adversarial}   # metrics/{task}/adversarial/
    runs = [TaskRun(task, Path(model), Path(onnx), Path(history), Path(summary), Path(log),
                    deblend=deblend if task == "sr" else None, purity=Path(purity),
                    adversarial=(Path(summary), adversarial[task]) if task in adversarial else None,
                    calibration=Path(calibration), sources=Path(sources))
            for task, model, onnx, history, summary, log, purity, calibration, sources in zip(
                sm.params.tasks, sm.input.models, sm.input.onnx, sm.input.histories, sm.input.summaries,
                sm.params.train_logs, sm.input.purity, sm.input.calibrations, sm.input.sources)]
    with atomic_directory(sm.output[0]) as tmp:
        card = write_release(runs, Path(sm.input.dataset), sm.params.config_name, tmp)
    print(f"{sm.output[0]}: {', '.join(sm.params.tasks)} models and {card.name}")
