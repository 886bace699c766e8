# Binning: 0.5-2 keV count-image cubes per shard; detector masks per resolution.


rule bin:
    input:
        f"{OUT}/events/{{kind}}/shard{{shard}}/{{exposure}}ks_{{res}}x",
    output:
        f"{OUT}/images/{{kind}}/shard{{shard}}/{{exposure}}ks_{{res}}x.fits",
    log:
        f"{OUT}/logs/bin/{{kind}}_shard{{shard}}_{{exposure}}ks_{{res}}x.log",
    conda:
        CONDA_ENV
    resources:
        **rule_resources("bin"),
    script:
        "../scripts/bin.py"


rule detector_mask:
    output:
        f"{OUT}/masks/detmask_{{res}}x.fits",
    log:
        f"{OUT}/logs/masks/detmask_{{res}}x.log",
    conda:
        CONDA_ENV
    resources:
        **rule_resources("detector_mask"),
    params:
        geometry=config["instrument"]["geometry"],
        resolution=lambda w: int(w.res),
    script:
        "../scripts/detector_mask.py"
