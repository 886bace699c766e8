# Real data in the loop: real images packed (rule pack_real), the trained models fine-tuned on simulated
# and real thinned pairs (rule finetune), both scored on the held-out real images (rule score_real).


rule pack_real:
    input:
        images=[str(image.path) for image in REAL_IMAGES],
        maps=[str(image.exposure_map) for image in REAL_IMAGES if image.exposure_map],
    output:
        REAL_DATASET,
    params:
        real=config["real"],
    log:
        "logs/pack_real.log",
    conda:
        CONDA_ENV
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
    params:
        checkpoint_dir=lambda w: f"{OUT}/checkpoints/finetune_{w.task}",
        train={k: v for k, v in config["train"].items() if k not in ("num_workers", "threads", "tasks")},
        real=config["real"],
        instrument=config["instrument"],
        seed=lambda w: training_seed(w.task) + 1,
    threads: 2
    log:
        "logs/finetune/{task}.log",
    conda:
        CONDA_ENV
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
    params:
        real=config["real"],
        instrument=config["instrument"],
        evaluate={k: v for k, v in config["evaluate"].items() if k != "real_pairs"},
        seed=config["seed"],
    threads: 2
    log:
        "logs/evaluate/real_thinned_{task}.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/score_real.py"
