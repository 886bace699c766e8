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
    params:
        instrument=config["instrument"],
        evaluate={k: v for k, v in config["evaluate"].items() if k != "real_pairs"},
    threads: 2
    log:
        "logs/evaluate/{task}.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/evaluate.py"


rule evaluate_real:
    input:
        model=f"{OUT}/models/dn/model.pt",
        simulated=f"{OUT}/metrics/dn/summary.json",  # the Gaussian-baseline width chosen on simulations
        images=real_pair_files(),
    output:
        f"{OUT}/metrics/real/real_pairs.csv",
    params:
        pairs=config["evaluate"]["real_pairs"],
        instrument=config["instrument"],
        evaluate={k: v for k, v in config["evaluate"].items() if k != "real_pairs"},
    log:
        "logs/evaluate/real.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/evaluate_real.py"


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
    params:
        config=report_config(),
    log:
        "logs/report.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/report.py"
