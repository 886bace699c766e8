"""Rule release_finetuned: the fine-tuned models and their model card (real observations named)."""

from pathlib import Path

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.pipeline import logged_to

with logged_to(sm.log[0]):
    from xmmsr.evaluate.release import TaskRun, write_release
    from xmmsr.io import atomic_directory

    deblend = Path(sm.input.deblend[0]) if sm.input.deblend else None
    # the adversarial model continues the simulation-trained one: both summaries, by task (metrics/{task}/...)
    adversarial = {Path(a).parents[1].name: (Path(p), Path(a))
                   for p, a in zip(sm.input.pixel_summaries, sm.input.adversarial)}
    # the simulation training's validation curve and time, when this run trained the models it fine-tuned
    histories = {Path(h).parent.name: Path(h) for h in sm.input.training_histories}   # models/{task}/history.csv
    train_logs = {Path(log).stem: Path(log) for log in sm.params.train_logs}           # logs/train/{task}.log
    runs = [TaskRun(task, Path(model), Path(onnx), history=histories.get(task), train_log=train_logs.get(task),
                    summary_csv=Path(summary),
                    finetune_history=Path(history), real_scores=Path(scores),
                    deblend=deblend if task == "sr" else None, purity=Path(purity), adversarial=adversarial.get(task),
                    calibration=Path(calibration), sources=Path(sources))
            for task, model, onnx, history, summary, scores, purity, calibration, sources in zip(
                sm.params.tasks, sm.input.models, sm.input.onnx, sm.input.histories, sm.input.summaries,
                sm.input.real_scores, sm.input.purity, sm.input.calibrations, sm.input.sources)]
    with atomic_directory(sm.output[0]) as tmp:
        card = write_release(runs, Path(sm.input.dataset), sm.params.config_name, tmp)
    print(f"{sm.output[0]}: fine-tuned {', '.join(sm.params.tasks)} models and {card.name}")
