"""Rule evaluate_real: DN on real short exposures, scored against independent long exposures."""

from pathlib import Path

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.pipeline import logged_to

with logged_to(sm.log[0]):
    import json

    from xmmsr.evaluate.real import evaluate_real_pairs

    tuned = json.loads(Path(sm.input.simulated).read_text())["provenance"]["tuned_parameters"]
    evaluate_real_pairs(sm.input.model, sm.params.pairs, sm.params.instrument, sm.params.evaluate, sm.output[0],
                        tuned=tuned, base_dir=Path(sm.scriptdir).resolve().parents[1])
