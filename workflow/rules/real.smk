# Real data in the loop: real images packed (rule pack_real), the trained models fine-tuned on simulated
# and real thinned pairs (rule finetune), both scored on the held-out real images (rule score_real).


rule pack_real:
    input:
        images=[str(image.path) for image in REAL_IMAGES],
        maps=[str(image.exposure_map) for image in REAL_IMAGES if image.exposure_map],
    output:
        REAL_DATASET,
    log:
        f"{OUT}/logs/pack_real.log",
    conda:
        CONDA_ENV
    params:
        real=config["real"],
        geometry=config["instrument"]["geometry"],
    script:
        "../scripts/pack_real.py"


rule finetune:
    input:
        dataset=DATASET,
        real=REAL_DATASET,
        start=finetune_start,
    output:
        model=f"{OUT}/models/{{task}}/finetuned.pt",
        history=f"{OUT}/models/{{task}}/finetune_history.csv",
    log:
        f"{OUT}/logs/finetune/{{task}}.log",
    conda:
        CONDA_ENV
    threads: 2
    params:
        checkpoint_dir=lambda w: f"{OUT}/checkpoints/finetune_{w.task}",
        train=pixel_train_params(),
        real=config["real"],
        instrument=config["instrument"],
        seed=lambda w: training_seed(w.task) + 1,
    script:
        "../scripts/finetune.py"


rule score_real:
    input:
        model=finetune_start,
        finetuned=f"{OUT}/models/{{task}}/finetuned.pt",
        images=[str(image.path) for image in REAL_IMAGES if image.split != "train"],
    output:
        scores=f"{OUT}/metrics/{{task}}/real_thinned.csv",
        gallery=f"{OUT}/metrics/{{task}}/real_thinned_gallery.npz",
    log:
        f"{OUT}/logs/evaluate/real_thinned_{{task}}.log",
    conda:
        CONDA_ENV
    threads: 2
    params:
        real=config["real"],
        instrument=config["instrument"],
        evaluate={k: v for k, v in config["evaluate"].items() if k != "real_pairs"},
        seed=config["seed"],
    script:
        "../scripts/score_real.py"


rule export_finetuned:
    input:
        f"{OUT}/models/{{task}}/finetuned.pt",
    output:
        f"{OUT}/models/{{task}}/finetuned.onnx",
    log:
        f"{OUT}/logs/finetune/{{task}}_onnx.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/export_onnx.py"


use rule evaluate as evaluate_finetuned with:
    input:
        dataset=DATASET,
        model=f"{OUT}/models/{{task}}/finetuned.pt",
    output:
        per_image=f"{OUT}/metrics/{{task}}/finetuned/per_image.csv",
        summary=f"{OUT}/metrics/{{task}}/finetuned/summary.csv",
        json=f"{OUT}/metrics/{{task}}/finetuned/summary.json",
        gallery=f"{OUT}/metrics/{{task}}/finetuned/gallery.npz",
        sources=f"{OUT}/metrics/{{task}}/finetuned/sources.csv",
        purity=f"{OUT}/metrics/{{task}}/finetuned/purity.csv",
        calibration=f"{OUT}/metrics/{{task}}/finetuned/uncertainty_calibration.json",
    log:
        f"{OUT}/logs/evaluate/{{task}}_finetuned.log",


use rule deblend as deblend_finetuned with:
    input:
        model=f"{OUT}/models/sr/finetuned.pt",
    output:
        f"{OUT}/metrics/sr/finetuned/deblend.csv",
    log:
        f"{OUT}/logs/evaluate/deblend_finetuned.log",


# The release of the fine-tuned models, with a card that names the real observations that trained them:
#   snakemake --cores all release_finetuned --configfile config/pretrained.yaml config/finetune_real.yaml
rule release_finetuned:
    input:
        dataset=DATASET,
        models=expand(f"{OUT}/models/{{task}}/finetuned.pt", task=config["train"]["tasks"]),
        onnx=expand(f"{OUT}/models/{{task}}/finetuned.onnx", task=config["train"]["tasks"]),
        histories=expand(f"{OUT}/models/{{task}}/finetune_history.csv", task=config["train"]["tasks"]),
        # the validation curves of the simulation training this run did before fine-tuning (start: trained)
        training_histories=expand(f"{OUT}/models/{{task}}/history.csv", task=finetuned_from_this_run()),
        summaries=expand(f"{OUT}/metrics/{{task}}/finetuned/summary.csv", task=config["train"]["tasks"]),
        purity=expand(f"{OUT}/metrics/{{task}}/finetuned/purity.csv", task=config["train"]["tasks"]),
        sources=expand(f"{OUT}/metrics/{{task}}/finetuned/sources.csv", task=config["train"]["tasks"]),
        calibrations=expand(
            f"{OUT}/metrics/{{task}}/finetuned/uncertainty_calibration.json", task=config["train"]["tasks"]
        ),
        pixel_summaries=expand(f"{OUT}/metrics/{{task}}/summary.csv", task=adversarial_tasks()),
        adversarial=expand(f"{OUT}/metrics/{{task}}/adversarial/summary.csv", task=adversarial_tasks()),
        real_scores=expand(f"{OUT}/metrics/{{task}}/real_thinned.csv", task=config["train"]["tasks"]),
        deblend=[f"{OUT}/metrics/sr/finetuned/deblend.csv"] if "sr" in config["train"]["tasks"] else [],
    output:
        directory(f"{OUT}/release_finetuned"),
    log:
        f"{OUT}/logs/release_finetuned.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        tasks=config["train"]["tasks"],
        train_logs=expand(f"{OUT}/logs/train/{{task}}.log", task=finetuned_from_this_run()),
        config_name=release_config_name(),
    script:
        "../scripts/release_finetuned.py"
