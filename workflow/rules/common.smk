# Helpers shared by the rules: config validation (schema defaults filled), shard lists, paths, params.

import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir).resolve() / "src"))  # the library of this checkout

from snakemake.exceptions import WorkflowError
from xmmsr.config import ConfigError, check_config, check_outdir, resolve_resource
from xmmsr.instrument.model import instrument_files
from xmmsr.thinning import real_images_from_config
from xmmsr.learn import TASKS as ALL_TASKS
from xmmsr.pipeline import (
    n_shards,
    shard_source_ids,
    training_seed as _training_seed,
    deblend_seed as _deblend_seed,
    use_checkout_library,
)

use_checkout_library(workflow.basedir)  # every rule script (conda environments too) imports this checkout's library
from xmmsr.sky.model import SOURCE_KINDS

try:
    check_config(config, "config")  # defaults filled, keys sorted: params compare equal whatever the file order
except ConfigError as exc:
    raise WorkflowError(f"Invalid configuration. {exc}") from None


try:
    OUT = str(check_outdir(config["outdir"], Path.cwd()))
except ConfigError as exc:
    raise WorkflowError(f"Invalid configuration. {exc}") from None
if not Path(config["outdir"]).is_absolute():
    OUT = config["outdir"]  # relative outputs stay relative: the same DAG from any working directory


onstart:
    # a lock in the output directory itself: runs from other working directories cannot share it
    from xmmsr.io import OutdirLock
    from xmmsr.errors import InputError

    try:
        workflow._xmmsr_outdir_lock = OutdirLock(OUT)
    except (InputError, OSError) as exc:
        raise WorkflowError(str(exc)) from None


CONDA_ENV = "../../envs/xmmsr.yaml"
KINDS = [k for k in SOURCE_KINDS if config["sources"][k]["n"] > 0]
EXPOSURES_KS = [f"{e:g}" for e in config["simulate"]["exposures_ks"]]
RESOLUTIONS = [str(r) for r in config["simulate"]["resolutions"]]
DATASET = f"{OUT}/dataset/xmmsr_dataset.h5"
REAL_DATASET = f"{OUT}/dataset/xmmsr_real.h5"
REAL_IMAGES = real_images_from_config(config["real"], workflow.basedir)
INSTRUMENT_FILES = {k: str(v) for k, v in instrument_files(config["instrument"], workflow.basedir).items()}


wildcard_constraints:
    kind="|".join(SOURCE_KINDS),
    shard=r"\d{4}",
    exposure=r"\d+(\.\d+)?",
    task="|".join(ALL_TASKS),
    res="[12]",


def shards(kind):
    """Shard labels (zero-padded) of a source kind."""
    return [f"{s:04d}" for s in range(n_shards(config["sources"][kind]["n"], config["shards"]["size"]))]


def shard_ids(wildcards):
    """Source identifiers of the shard of a job."""
    kind_cfg = config["sources"][wildcards.kind]
    return list(shard_source_ids(kind_cfg["n"], config["shards"]["size"], int(wildcards.shard)))


TNG_SOURCES = config["sources"]["kind"] in ("tng", "mixed")
IMAGE_SOURCES = config["sources"]["kind"] == "images"
TNG_MANIFEST = f"{OUT}/sky/tng_manifest.json"
# sources.tng keys that only shape the download (the manifest), not the projection of a cutout
TNG_DOWNLOAD_KEYS = (
    "api_url",
    "selection",
    "gas_fields",
    "cutout_dir",
    "local_dir",
    "max_concurrent_downloads",
    "retries",
    "backoff_s",
    "timeout_s",
    "max_cutout_mb",
    "download_deadline_s",
)


def source_params(wildcards):
    """Only the parts of the sources config that shape this kind's sky models (not the counts n).

    The origin of extended sources (sources.kind, sources.tng) is added only when it is not synthetic, so
    that synthetic runs keep their parameters (and outputs) whatever the TNG settings."""
    wanted = {"extended": ["sky", "extended", "agn"], "agn": ["sky", "agn"], "background": ["sky"]}
    if not config["sources"]["extended"]["include_agn"]:
        wanted["extended"] = ["sky", "extended"]
    params = {key: {k: v for k, v in config["sources"][key].items() if k != "n"} for key in wanted[wildcards.kind]}
    if "agn" in params:
        params["agn"] = _without_unused_pairs(params["agn"])
    for key in ("field_background", "field_exposure"):  # observing conditions of every field
        params[key] = config["sources"][key]
    if IMAGE_SOURCES and wildcards.kind == "extended":
        params["kind"] = "images"
        params["images"] = {
            **config["sources"]["images"],
            "dir": str(Path(config["sources"]["images"]["dir"]).resolve()),
        }
        params["image_files"] = [p.name for p in image_truth_files()]  # a new or removed file reruns the shards
    if TNG_SOURCES and wildcards.kind == "extended":
        params["kind"] = config["sources"]["kind"]
        params["tng"] = {k: v for k, v in config["sources"]["tng"].items() if k not in TNG_DOWNLOAD_KEYS}
        params["tng_manifest"] = TNG_MANIFEST  # also an input (tng_manifest_input); the script is unchanged
    return params


def image_truth_files():
    """The real-sky truth files of sources.images.dir (sources.kind images)."""
    from xmmsr.errors import InputError
    from xmmsr.sky.images import image_files

    folder = config["sources"]["images"]["dir"]
    if not folder:
        raise WorkflowError(
            "sources.kind is images but sources.images.dir is not set: point it at a folder of "
            "FITS images with a celestial WCS"
        )
    try:
        return image_files(folder)
    except InputError as exc:
        raise WorkflowError(str(exc)) from None


def image_truth_input(wildcards):
    """The truth images, inputs of the extended shards when sources.kind is images (changes rerun them)."""
    return [str(p) for p in image_truth_files()] if IMAGE_SOURCES and wildcards.kind == "extended" else []


def tng_manifest_input(wildcards):
    """The TNG cutout manifest, an input of the extended shards when sources.kind is tng or mixed."""
    return [TNG_MANIFEST] if TNG_SOURCES and wildcards.kind == "extended" else []


def tng_download_params():
    """The sources.tng settings of the download (the key is read from TNG_API_KEY by the job, never a param)."""
    tng = config["sources"]["tng"]
    return {k: tng[k] for k in ("simulation", "snapshot", *TNG_DOWNLOAD_KEYS)}


def sources_config():
    """The sources section as it determines the data: without kind/tng for synthetic runs, and without the
    AGN pair settings when no pairs are drawn (fields as before those settings existed: the same params
    and dataset hash, so that earlier runs are not simulated again)."""
    if TNG_SOURCES:
        sources = {k: v for k, v in config["sources"].items() if k != "images"}
    elif IMAGE_SOURCES:
        sources = {k: v for k, v in config["sources"].items() if k != "tng"}
    else:
        sources = {k: v for k, v in config["sources"].items() if k not in ("kind", "tng", "images")}
    sources["agn"] = _without_unused_pairs(sources["agn"])
    return sources


def _without_unused_pairs(agn):
    """The AGN settings without the close-pair ones when no pairs are drawn (pair_fraction 0)."""
    if agn["pair_fraction"] > 0:
        return agn
    return {k: v for k, v in agn.items() if not k.startswith("pair_")}


def brightness_params():
    """The instrument quantities that define the background level used by sigma_b."""
    inst = config["instrument"]
    return {k: inst[k] for k in ("background", "pattern_fractions", "energy_resolution_fwhm_ev")}


def simulation_params():
    """Instrument parameters of the event simulation (the expected-image sampling does not matter)."""
    return {k: v for k, v in config["instrument"].items() if k != "expected_oversample"}


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
    return {
        k: sources_config() if k == "sources" else config[k]
        for k in ("seed", "sources", "instrument", "simulate", "pack")
    }


def real_pair_files():
    """The real images listed in evaluate.real_pairs (short and long of each pair)."""
    return [p[key] for p in config["evaluate"]["real_pairs"] for key in ("short", "long")]


def report_inputs(wildcards):
    """Metrics and training histories of every task; real-pair scores when real pairs are configured."""
    tasks = config["train"]["tasks"]
    inputs = {f"metrics_{t}": f"{OUT}/metrics/{t}/summary.json" for t in tasks}
    inputs.update({f"history_{t}": f"{OUT}/models/{t}/history.csv" for t in tasks})
    if config["evaluate"]["real_pairs"] and "dn" in tasks:
        inputs["real"] = f"{OUT}/metrics/real/real_pairs.csv"
    if "sr" in tasks:
        inputs["deblend"] = f"{OUT}/metrics/sr/deblend.csv"
        if "sr" in adversarial_tasks():
            inputs["deblend_adversarial"] = f"{OUT}/metrics/sr/adversarial/deblend.csv"
    inputs.update({f"adversarial_{t}": f"{OUT}/metrics/{t}/adversarial/summary.json" for t in adversarial_tasks()})
    if REAL_IMAGES:
        inputs.update({f"real_thinned_{t}": f"{OUT}/metrics/{t}/real_thinned.csv" for t in tasks})
        inputs.update({f"real_gallery_{t}": f"{OUT}/metrics/{t}/real_thinned_gallery.npz" for t in tasks})
    return inputs


def report_config():
    """The config sections the report prints."""
    shown = {
        k: sources_config() if k == "sources" else config[k]
        for k in ("seed", "sources", "instrument", "simulate", "pack", "model", "evaluate")
    }
    shown["train"] = _without_noop_defaults(
        {k: v for k, v in config["train"].items() if k not in ("num_workers", "threads")}
    )
    return shown


def _without_noop_defaults(train):
    """The train section without the settings that are at a default which changes nothing (source_crops 0:
    every crop uniform; brighten, pairs and thin_inputs fraction 0: no crop brightened, given a pair or
    thinned; as before the settings existed; seed null: the run's seed), so that runs made before them do
    not retrain."""
    return {
        k: v
        for k, v in train.items()
        if not (
            (k == "source_crops" and v == 0)
            or (k in ("brighten", "pairs", "thin_inputs") and v.get("fraction", 0) == 0)
            or (k == "seed" and v is None)
        )
    }


def pixel_train_params():
    """The train section as the pixel-loss training and the fine-tuning see it: without the settings of
    the adversarial model, so that changing those retrains nothing else."""
    train = {
        k: v for k, v in config["train"].items() if k not in ("num_workers", "threads", "tasks", "adversarial", "seed")
    }
    train["loss"] = {k: v for k, v in train["loss"].items() if k != "adversarial"}
    return _without_noop_defaults(train)


def adversarial_tasks():
    """The tasks with an adversarial model (train.loss.adversarial > 0; those of train.adversarial.tasks), else none."""
    if config["train"]["loss"]["adversarial"] <= 0:
        return []
    return [task for task in config["train"]["tasks"] if task in config["train"]["adversarial"]["tasks"]]


def adversarial_train_params():
    """The train section as the adversarial continuation of one task sees it (which tasks have one is not
    its concern: choosing them must not retrain the others)."""
    train = {k: v for k, v in config["train"].items() if k not in ("num_workers", "threads", "tasks", "seed")}
    train["adversarial"] = {k: v for k, v in train["adversarial"].items() if k != "tasks"}
    return _without_noop_defaults(train)


def deblend_seed():
    """Seed of the de-blending draws, derived from the root seed."""
    return _deblend_seed(config["seed"])


def training_seed(task):
    """Seed of the training of one task, derived from train.seed or else the root seed."""
    root = config["train"].get("seed")
    return _training_seed(config["seed"] if root is None else root, task)


SHARD_RULES = ("sources", "simulate", "expected", "bin")


def rule_resources(rule):
    """A rule's `resources:` from config["resources"]: memory and run time times the attempt (resubmitted bigger
    after a failure), the shard rules' run time scaled by the shard size (sized for 1000 sources), GPUs as given."""
    r = config["resources"][rule]
    scale = max(0.1, config["shards"]["size"] / 1000) if rule in SHARD_RULES else 1.0
    mem_mb, runtime = int(r["mem_mb"]), max(1, int(round(r["runtime"] * scale)))
    resources = {
        "mem_mb": lambda wildcards, attempt: mem_mb * attempt,
        "runtime": lambda wildcards, attempt: runtime * attempt,
    }
    resources.update({key: r[key] for key in ("gpu", "cpus_per_gpu") if key in r})
    return resources


def rule_threads(rule, default=1):
    """A rule's `threads:` from config["resources"] (capped at --cores on a local run)."""
    return config["resources"][rule].get("threads", default)


def simulation_backend():
    """The simulate rule's backend parameter: "builtin", or {"name": "sixte", executable, instrument_xml, calib}."""
    sim = config["simulate"]
    return sim["backend"] if sim["backend"] == "builtin" else {"name": sim["backend"], **sim["sixte"]}


def sixte_instrument_written():
    """Whether the workflow writes SIXTE's instrument from the instrument model (backend sixte, no XML given)."""
    sim = config["simulate"]
    return sim["backend"] == "sixte" and not sim["sixte"]["instrument_xml"]


def simulate_inputs(wildcards):
    """The simulate rule's inputs: the shard's sky models, the calibration files and, when the workflow
    writes it, SIXTE's instrument at the job's resolution."""
    inputs = {"sky": f"{OUT}/sky/{wildcards.kind}/shard{wildcards.shard}", **INSTRUMENT_FILES}
    if sixte_instrument_written():
        inputs["sixte_instrument"] = f"{OUT}/sixte/pn_{wildcards.res}x"
    return inputs


def events_dir(kind, shard, exposure, res):
    path = f"{OUT}/events/{kind}/shard{shard}/{exposure}ks_{res}x"
    return directory(path) if config["simulate"]["keep_events"] else temp(directory(path))


def all_targets():
    images = [
        f"{OUT}/images/{kind}/shard{shard}/{e}ks_{r}x.fits"
        for kind in KINDS
        for shard in shards(kind)
        for e in EXPOSURES_KS
        for r in RESOLUTIONS
    ]
    expected = [
        f"{OUT}/expected/{kind}/shard{shard}/{r}x.fits" for kind in KINDS for shard in shards(kind) for r in RESOLUTIONS
    ]
    masks = [f"{OUT}/masks/detmask_{r}x.fits" for r in RESOLUTIONS]
    models = [
        f"{OUT}/models/{task}/{name}"
        for task in config["train"]["tasks"]
        for name in ("model.pt", "model.onnx", "history.csv")
    ]
    report_pdf = [f"{OUT}/report/evaluation.pdf"]
    real = [f"{OUT}/metrics/{task}/real_thinned.csv" for task in config["train"]["tasks"]] if REAL_IMAGES else []
    return images + expected + masks + models + report_pdf + real


def finetune_start(wildcards):
    """The model a fine-tuning starts from: this run's trained one, or the shipped pretrained one."""
    if config["real"]["finetune"]["start"] == "shipped":
        from xmmsr.learn.checkpoint import shipped_model

        return str(shipped_model(wildcards.task))
    return f"{OUT}/models/{wildcards.task}/model.pt"


def finetuned_from_this_run():
    """The tasks whose fine-tuning starts from a model this run trained (none when it starts from the shipped)."""
    return config["train"]["tasks"] if config["real"]["finetune"]["start"] == "trained" else []


def release_config_name():
    """The config files of this run as the model card names them (relative to the workflow, else by name)."""
    names = []
    for path in workflow.overwrite_configfiles or ["config.yaml"]:
        p = Path(path).resolve()
        try:
            names.append(str(p.relative_to(Path(workflow.basedir).resolve())))
        except ValueError:
            names.append(p.name)
    return " + ".join(["config.yaml", *[n for n in names if n != "config.yaml"]])
