"""Rule pack: the HDF5 training set with train/val/test splits by source."""

from pathlib import Path

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.learn.pack import ShardFiles, pack_dataset
from xmmsr.pipeline import logged_to

with logged_to(sm.log[0]):
    names = ("lr", "dn_target", "sr_target", "expected_1x", "expected_2x")
    shards = [ShardFiles(kind, Path(sky), *(Path(sm.input[name][i]) for name in names))
              for i, (kind, sky) in enumerate(zip(sm.params.kinds, sm.input.sky, strict=True))]
    pack = sm.params.pack
    counts = pack_dataset(shards, Path(sm.input.mask_1x), Path(sm.input.mask_2x), pack["input_exposure_ks"] * 1e3,
                          pack["target_exposure_ks"] * 1e3, pack["split"], pack["pad_multiple"], pack["compression"],
                          sm.params.seed, sm.params.dataset_config, sm.output[0])
    print(f"{sm.output[0]}: samples per split {counts}")
