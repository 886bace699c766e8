"""Rule bin: 0.5-2 keV count-image cube of one shard."""

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.pipeline import bin_shard, logged_to

with logged_to(sm.log[0]):
    bin_shard(sm.input[0], sm.output[0])
