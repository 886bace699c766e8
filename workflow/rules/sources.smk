# Sky models: synthetic or IllustrisTNG extended sources, AGN fields and blank fields, one directory per shard.


rule sources:
    input:
        **INSTRUMENT_FILES,
        tng=tng_manifest_input,
        images=image_truth_input,
    output:
        directory(f"{OUT}/sky/{{kind}}/shard{{shard}}"),
    log:
        f"{OUT}/logs/sources/{{kind}}_shard{{shard}}.log",
    conda:
        CONDA_ENV
    resources:
        **rule_resources("sources"),
    params:
        ids=shard_ids,
        sources=source_params,
        instrument=brightness_params(),
        seed=config["seed"],
    script:
        "../scripts/sources.py"


# IllustrisTNG cutouts (sources.kind tng or mixed): select the subhalos, download the missing or invalid cutouts
# into sources.tng.cutout_dir (at most max_concurrent_downloads at once; the API key from the environment
# variable TNG_API_KEY), or list the user's cutouts of sources.tng.local_dir; write the manifest. A localrule:
# login nodes have network, compute nodes often don't.
rule tng_download:
    output:
        TNG_MANIFEST,
    log:
        f"{OUT}/logs/sources/tng_download.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        tng=tng_download_params(),
    script:
        "../scripts/tng_download.py"
