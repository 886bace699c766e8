# Evaluation: the models beside classical baselines on held-out sources, and the PDF report.


rule evaluate:
    input:
        dataset=DATASET,
        model=f"{OUT}/models/{{task}}/model.pt",
    output:
        per_image=f"{OUT}/metrics/{{task}}/per_image.csv",
        summary=f"{OUT}/metrics/{{task}}/summary.csv",
        json=f"{OUT}/metrics/{{task}}/summary.json",
        gallery=f"{OUT}/metrics/{{task}}/gallery.npz",
        sources=f"{OUT}/metrics/{{task}}/sources.csv",
        purity=f"{OUT}/metrics/{{task}}/purity.csv",
        calibration=f"{OUT}/metrics/{{task}}/uncertainty_calibration.json",
    log:
        f"{OUT}/logs/evaluate/{{task}}.log",
    conda:
        CONDA_ENV
    threads: rule_threads("evaluate")
    resources:
        **rule_resources("evaluate"),
    params:
        instrument=config["instrument"],
        evaluate={k: v for k, v in config["evaluate"].items() if k not in ("real_pairs", "deblend")},
    script:
        "../scripts/evaluate.py"


use rule evaluate as evaluate_adversarial with:
    input:
        dataset=DATASET,
        model=f"{OUT}/models/{{task}}/adversarial.pt",
    output:
        per_image=f"{OUT}/metrics/{{task}}/adversarial/per_image.csv",
        summary=f"{OUT}/metrics/{{task}}/adversarial/summary.csv",
        json=f"{OUT}/metrics/{{task}}/adversarial/summary.json",
        gallery=f"{OUT}/metrics/{{task}}/adversarial/gallery.npz",
        sources=f"{OUT}/metrics/{{task}}/adversarial/sources.csv",
        purity=f"{OUT}/metrics/{{task}}/adversarial/purity.csv",
        calibration=f"{OUT}/metrics/{{task}}/adversarial/uncertainty_calibration.json",
    log:
        f"{OUT}/logs/evaluate/{{task}}_adversarial.log",


rule evaluate_real:
    input:
        model=f"{OUT}/models/dn/model.pt",
        simulated=f"{OUT}/metrics/dn/summary.json",  # the Gaussian-baseline width chosen on simulations
        images=real_pair_files(),
    output:
        f"{OUT}/metrics/real/real_pairs.csv",
    log:
        f"{OUT}/logs/evaluate/real.log",
    conda:
        CONDA_ENV
    resources:
        **rule_resources("evaluate_real"),
    params:
        pairs=config["evaluate"]["real_pairs"],
        instrument=config["instrument"],
        evaluate={k: v for k, v in config["evaluate"].items() if k not in ("real_pairs", "deblend")},
    script:
        "../scripts/evaluate_real.py"


rule deblend:
    input:
        model=f"{OUT}/models/sr/model.pt",
    output:
        f"{OUT}/metrics/sr/deblend.csv",
    log:
        f"{OUT}/logs/evaluate/deblend.log",
    conda:
        CONDA_ENV
    params:
        deblend=config["evaluate"]["deblend"],
        instrument=config["instrument"],
        exposures_s=[config["pack"]["input_exposure_ks"] * 1000.0, config["pack"]["target_exposure_ks"] * 1000.0],
        nsigma=config["evaluate"]["detection_nsigma"],
        rl_iterations=config["evaluate"]["rl_iterations"],
        seed=deblend_seed(),
    script:
        "../scripts/deblend.py"


use rule deblend as deblend_adversarial with:
    input:
        model=f"{OUT}/models/sr/adversarial.pt",
    output:
        f"{OUT}/metrics/sr/adversarial/deblend.csv",
    log:
        f"{OUT}/logs/evaluate/deblend_adversarial.log",


# The report is cheap and runs where Snakemake itself runs (no cluster job).
localrules:
    report,


rule report:
    input:
        unpack(report_inputs),
    output:
        pdf=report(f"{OUT}/report/evaluation.pdf", caption="../report/evaluation.rst", category="Evaluation"),
        figures=report(
            directory(f"{OUT}/report/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Evaluation",
        ),
    log:
        f"{OUT}/logs/report.log",
    conda:
        CONDA_ENV
    params:
        config=report_config(),
    script:
        "../scripts/report.py"


# The release of a run: its models as {task}.pt/.onnx and a MODEL_CARD.md written from its outputs (the
# shipped models in resources/models are the release of config/pretrained.yaml). Not part of `all`:
#   snakemake --cores all release --configfile config/pretrained.yaml
rule release:
    input:
        dataset=DATASET,
        models=expand(f"{OUT}/models/{{task}}/model.pt", task=config["train"]["tasks"]),
        onnx=expand(f"{OUT}/models/{{task}}/model.onnx", task=config["train"]["tasks"]),
        histories=expand(f"{OUT}/models/{{task}}/history.csv", task=config["train"]["tasks"]),
        summaries=expand(f"{OUT}/metrics/{{task}}/summary.csv", task=config["train"]["tasks"]),
        purity=expand(f"{OUT}/metrics/{{task}}/purity.csv", task=config["train"]["tasks"]),
        sources=expand(f"{OUT}/metrics/{{task}}/sources.csv", task=config["train"]["tasks"]),
        calibrations=expand(f"{OUT}/metrics/{{task}}/uncertainty_calibration.json", task=config["train"]["tasks"]),
        adversarial=expand(f"{OUT}/metrics/{{task}}/adversarial/summary.csv", task=adversarial_tasks()),
        deblend=[f"{OUT}/metrics/sr/deblend.csv"] if "sr" in config["train"]["tasks"] else [],
    output:
        directory(f"{OUT}/release"),
    log:
        f"{OUT}/logs/release.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        tasks=config["train"]["tasks"],
        # the training logs hold the measured throughput (the card's training time); not inputs, since
        # logs are not products
        train_logs=expand(f"{OUT}/logs/train/{{task}}.log", task=config["train"]["tasks"]),
        config_name=release_config_name(),
    script:
        "../scripts/release.py"
