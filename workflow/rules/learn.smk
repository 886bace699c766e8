# Learning: the HDF5 training set (rule pack) and the DN/SR models (rule train).


rule pack:
    input:
        unpack(pack_inputs),
    output:
        DATASET,
    params:
        kinds=[kind for kind in KINDS for _ in shards(kind)],
        pack=config["pack"],
        seed=config["seed"],
        dataset_config=dataset_config(),
    log:
        "logs/pack.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/pack.py"


rule train:
    input:
        DATASET,
    output:
        model=f"{OUT}/models/{{task}}/model.pt",
        onnx=f"{OUT}/models/{{task}}/model.onnx",
        history=f"{OUT}/models/{{task}}/history.csv",
    params:
        # Checkpoints are not declared outputs: they survive a killed job, and a rerun resumes from them.
        checkpoint_dir=lambda w: f"{OUT}/checkpoints/{w.task}",
        model=config["model"],
        train={k: v for k, v in config["train"].items() if k not in ("num_workers", "threads", "tasks")},
        seed=lambda w: training_seed(w.task),
    threads: 2
    log:
        "logs/train/{task}.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/train.py"
