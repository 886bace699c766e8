"""Rule bin: 0.5-2 keV count-image cube of one shard."""

import sys
from pathlib import Path

sm = snakemake  # noqa: F821 (injected by snakemake)
sys.path.insert(0, str(Path(sm.scriptdir).resolve().parents[1] / "src"))  # the library of this checkout

from xmmsr.pipeline import bin_shard, logged_to

with logged_to(sm.log[0]):
    bin_shard(sm.input[0], sm.output[0])
