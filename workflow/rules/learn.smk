# Learning: the HDF5 training set (rule pack) and the DN/SR models (rule train).

TASKS = config["train"]["tasks"]
DATASET = f"{OUT}/dataset/xmmsr_dataset.h5"


def pack_inputs(wildcards):
    """Per shard of every kind: input and target image cubes, expected cubes, sky models; and masks."""
    pack = config["pack"]
    lr, tgt = f"{pack['input_exposure_ks']:g}", f"{pack['target_exposure_ks']:g}"
    items = [(kind, shard) for kind in KINDS for shard in shards(kind)]
    return {
        "lr": [f"{OUT}/images/{k}/shard{s}/{lr}ks_1x.fits" for k, s in items],
        "dn_target": [f"{OUT}/images/{k}/shard{s}/{tgt}ks_1x.fits" for k, s in items],
        "sr_target": [f"{OUT}/images/{k}/shard{s}/{tgt}ks_2x.fits" for k, s in items],
        "expected_1x": [f"{OUT}/expected/{k}/shard{s}/1x.fits" for k, s in items],
        "expected_2x": [f"{OUT}/expected/{k}/shard{s}/2x.fits" for k, s in items],
        "sky": [f"{OUT}/sky/{k}/shard{s}" for k, s in items],
        "mask_1x": f"{OUT}/masks/detmask_1x.fits",
        "mask_2x": f"{OUT}/masks/detmask_2x.fits",
    }


def dataset_config():
    """The config sections that determine the training set (hashed into the HDF5 attributes)."""
    return {k: config[k] for k in ("seed", "sources", "instrument", "simulate", "pack")}


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
