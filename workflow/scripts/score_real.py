"""Rule score_real: the model, the fine-tuned model and the baselines on the held-out real images, each
thinned into an input and the independent remainder."""

from pathlib import Path

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.pipeline import logged_to
from xmmsr.thinning import real_images_from_config

with logged_to(sm.log[0]):
    from xmmsr.evaluate.real import score_real_images

    base = Path(sm.scriptdir).resolve().parents[1]
    images = [i for i in real_images_from_config(sm.params.real, base) if i.split != "train"]
    score_real_images({"model": sm.input.model, "finetuned": sm.input.finetuned}, images, sm.params.real,
                      sm.params.instrument, sm.params.evaluate, sm.params.seed, sm.output.scores, base,
                      sm.output.gallery)
