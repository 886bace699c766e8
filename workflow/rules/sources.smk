# Sky models: synthetic extended sources, AGN fields and blank fields, one directory per shard.


rule sources:
    input:
        effective_area=EFFECTIVE_AREA,
    output:
        directory(f"{OUT}/sky/{{kind}}/shard{{shard}}"),
    params:
        ids=shard_ids,
        sources=source_params,
        instrument=brightness_params(),
        seed=config["seed"],
    log:
        "logs/sources/{kind}_shard{shard}.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/sources.py"
