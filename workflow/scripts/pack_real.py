"""Rule pack_real: the configured real images (counts, per-pixel exposure, split) in one HDF5 file."""

from pathlib import Path

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.pipeline import logged_to
from xmmsr.thinning import real_images_from_config

with logged_to(sm.log[0]):
    from xmmsr.instrument.model import geometry_from_config
    from xmmsr.learn.finetune import pack_real

    base = Path(sm.scriptdir).resolve().parents[1]
    pack_real(real_images_from_config(sm.params.real, base), sm.output[0],
              geometry_from_config(sm.params.geometry, base))
