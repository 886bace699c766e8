# xmmsr: simulated XMM-Newton EPIC-pn training data for de-noising and 2x super-resolution.
# Stages: sources -> simulate (events) -> bin (0.5-2 keV images) -> pack (HDF5) -> train (DN, SR models)
# -> evaluate (metrics beside baselines) -> report (PDF); expected images and detector masks beside them.
# Run: snakemake --cores all   (the embedded default config is config.yaml)

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/sources.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/bin.smk"
include: "workflow/rules/learn.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/real.smk"


rule all:
    default_target: True
    input:
        all_targets(),
