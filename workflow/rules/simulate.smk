# EPIC-pn simulation (built-in simulator or SIXTE): event lists per shard, exposure and resolution;
# expected images per shard (built-in model).


rule simulate:
    input:
        unpack(simulate_inputs),
    output:
        events_dir("{kind}", "{shard}", "{exposure}", "{res}"),
    log:
        f"{OUT}/logs/simulate/{{kind}}_shard{{shard}}_{{exposure}}ks_{{res}}x.log",
    conda:
        CONDA_ENV
    resources:
        **rule_resources("simulate"),
    params:
        instrument=simulation_params(),
        exposure_s=lambda w: float(w.exposure) * 1000.0,
        resolution=lambda w: int(w.res),
        seed=config["seed"],
        tstart=config["simulate"]["tstart"],
        # "builtin", or the SIXTE settings (so builtin runs keep their params when SIXTE settings change)
        backend=simulation_backend(),
    script:
        "../scripts/simulate.py"


# SIXTE's EPIC-pn instrument (XML, PSF, vignetting, ARF, RMF, particle background) written from the
# instrument model, for backend sixte without an instrument_xml of the user's.
rule sixte_instrument:
    input:
        **INSTRUMENT_FILES,
    output:
        directory(f"{OUT}/sixte/pn_{{res}}x"),
    log:
        f"{OUT}/logs/sixte_instrument/{{res}}x.log",
    conda:
        CONDA_ENV
    resources:
        **rule_resources("sixte_instrument"),
    params:
        instrument=config["instrument"],
        resolution=lambda w: int(w.res),
        calib=config["simulate"]["sixte"]["calib"],
    script:
        "../scripts/sixte_instrument.py"


rule expected:
    input:
        **INSTRUMENT_FILES,
        sky=f"{OUT}/sky/{{kind}}/shard{{shard}}",
    output:
        f"{OUT}/expected/{{kind}}/shard{{shard}}/{{res}}x.fits",
    log:
        f"{OUT}/logs/expected/{{kind}}_shard{{shard}}_{{res}}x.log",
    conda:
        CONDA_ENV
    resources:
        **rule_resources("expected"),
    params:
        instrument=config["instrument"],
        resolution=lambda w: int(w.res),
    script:
        "../scripts/expected.py"
