# Learning: the HDF5 training set (rule pack) and the DN/SR models (rule train).


rule pack:
    input:
        unpack(pack_inputs),
    output:
        DATASET,
    log:
        f"{OUT}/logs/pack.log",
    conda:
        CONDA_ENV
    resources:
        **rule_resources("pack"),
    params:
        kinds=[kind for kind in KINDS for _ in shards(kind)],
        pack=config["pack"],
        seed=config["seed"],
        dataset_config=dataset_config(),
    script:
        "../scripts/pack.py"


rule train:
    input:
        DATASET,
    output:
        model=f"{OUT}/models/{{task}}/model.pt",
        onnx=f"{OUT}/models/{{task}}/model.onnx",
        history=f"{OUT}/models/{{task}}/history.csv",
    log:
        f"{OUT}/logs/train/{{task}}.log",
    conda:
        CONDA_ENV
    threads: rule_threads("train")
    resources:
        **rule_resources("train"),
    params:
        # Checkpoints are not declared outputs: they survive a killed job, and a rerun resumes from them.
        checkpoint_dir=lambda w: f"{OUT}/checkpoints/{w.task}",
        model=config["model"],
        train=pixel_train_params(),
        seed=lambda w: training_seed(w.task),
    script:
        "../scripts/train.py"


# The adversarial model (train.loss.adversarial > 0): the pixel-loss model continued with ESRGAN's
# relativistic average GAN term; evaluated beside it (rule evaluate_adversarial) and compared in the report.
rule train_adversarial:
    input:
        dataset=DATASET,
        start=f"{OUT}/models/{{task}}/model.pt",
    output:
        model=f"{OUT}/models/{{task}}/adversarial.pt",
        history=f"{OUT}/models/{{task}}/adversarial_history.csv",
    log:
        f"{OUT}/logs/train/{{task}}_adversarial.log",
    conda:
        CONDA_ENV
    threads: 2
    params:
        checkpoint_dir=lambda w: f"{OUT}/checkpoints/adversarial_{w.task}",
        train=adversarial_train_params(),
        seed=lambda w: training_seed(w.task) + 2,
    script:
        "../scripts/train_adversarial.py"
