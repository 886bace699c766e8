"""Cluster scale and reliability: the Slurm and workflow profiles (through a fake Slurm), the reference
DAG, byte-identical outputs whatever the number of cores, kill-and-resume of shard and training jobs,
damaged shards, and storage errors."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import fake_slurm
import numpy as np
import pytest
import torch
import yaml
from astropy.io import fits
from conftest import REPO, TINY, snakemake
from test_workflow import planned_jobs

from xmmsr.errors import InputError, StorageError, storage_error
from xmmsr.io import atomic_path, open_fits, write_fits_atomic
from xmmsr.cube import read_cube
from xmmsr.io import atomic_directory

WORKFLOW_PROFILE = REPO / "profiles" / "default" / "config.v8+.yaml"
SLURM_PROFILE = REPO / "profiles" / "slurm" / "config.v8+.yaml"
DATA_DIRS = ("sky", "events", "expected", "images", "masks", "dataset")


def rule_names() -> set[str]:
    names = {"all"}
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        names.update(re.findall(r"^rule (\w+):", smk.read_text(), flags=re.M))
    return names


def data_files(workdir: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every data product up to the training set."""
    files = {}
    for name in DATA_DIRS:
        for path in sorted((workdir / "results" / name).rglob("*")):
            if path.is_file():
                files[str(path.relative_to(workdir))] = path.read_bytes()
    return files


def copy_run(source: Path, target: Path) -> Path:
    """A copy of a finished working directory, outputs, times and Snakemake's metadata included."""
    shutil.copytree(source, target, symlinks=True)
    return target


def start(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Snakemake on this checkout's workflow in ``workdir``, in its own process group (to kill it whole)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           *args]
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def kill_when(proc: subprocess.Popen, ready, timeout_s: float = 300.0) -> None:
    """SIGKILL the whole process group of ``proc`` (Snakemake and its jobs) as soon as ``ready()`` holds."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended before the kill point:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the kill point was never reached")
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# --------------------------------------------------------------------------- profiles


def test_rules_carry_their_resources_and_profiles_only_site_names():
    """Memory, run time, GPUs and threads live in the rules (config["resources"]), so that a --set-resources
    of a site profile or the command line for one rule cannot wipe the others; the profiles name sites only."""
    workflow = yaml.safe_load(WORKFLOW_PROFILE.read_text())
    slurm = yaml.safe_load(SLURM_PROFILE.read_text())
    assert "set-resources" not in workflow and "set-threads" not in workflow and "default-resources" not in workflow
    assert "code" not in workflow["rerun-triggers"] and "params" in workflow["rerun-triggers"]
    text = {smk.name: smk.read_text() for smk in (REPO / "workflow" / "rules").glob("*.smk")}
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for rule in ("sources", "simulate", "expected", "bin", "detector_mask", "sixte_instrument", "pack", "train",
                 "evaluate", "evaluate_real"):
        assert any(re.search(rf"^rule {rule}:\n(?:    .*\n|\n)*?        \*\*rule_resources\(\"{rule}\"\)", t, re.M)
                   for t in text.values()), rule
        assert config["resources"][rule]["mem_mb"] > 0 and config["resources"][rule]["runtime"] > 0
    assert config["resources"]["train"]["gpu"] == 1 and config["resources"]["train"]["runtime"] >= 12 * 60
    assert "attempt" in text["common.smk"][text["common.smk"].index("def rule_resources"):][:900]

    assert slurm["executor"] == "slurm" and slurm["retries"] >= 1 and slurm["latency-wait"] >= 30
    assert slurm["rerun-incomplete"] is True and slurm["jobs"] >= 1
    defaults = slurm["default-resources"]
    assert defaults["slurm_account"].startswith("EDIT_ME") and defaults["slurm_partition"].startswith("EDIT_ME")
    assert set(slurm["set-resources"]) == {"train"} and set(slurm["set-resources"]["train"]) == {"slurm_partition"}
    local = re.findall(r"localrules:\s*\n((?:\s+\w+,\n)+)", "".join(text.values()))
    assert "report" in "".join(local)


def _site_profile(directory: Path, retries: int = 0) -> Path:
    """A site's generic Slurm profile, as users have them: executor, account, partition, default resources."""
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(yaml.safe_dump({
        "executor": "slurm", "jobs": 8, "latency-wait": 5, "retries": retries, "rerun-incomplete": True,
        "default-resources": {"slurm_account": fake_slurm.ACCOUNT, "slurm_partition": "cpu", "runtime": 30,
                              "mem_mb": 1000}}))
    return directory


def _fake_slurm_env(tmp_path: Path, **extra: str) -> tuple[Path, dict[str, str]]:
    state = tmp_path / "slurm-state"
    env = dict(os.environ, **fake_slurm.install(tmp_path / "bin", state), **extra)
    env["PATH"] = os.pathsep.join([str(tmp_path / "bin"), str(Path(sys.executable).parent), env["PATH"]])
    return state, env


def _submitted(state: Path) -> dict[str, list[str]]:
    submitted: dict[str, list[str]] = {}
    for args in fake_slurm.sbatch_calls(state):
        rule = re.match(r"rule_(\w+?)(_wildcards_.*)?$", args[args.index("--comment") + 1]).group(1)
        submitted.setdefault(rule, []).append(" ".join(args))
    return submitted


def test_site_slurm_profile_with_a_gpu_partition_override(tiny_run, tmp_path):
    """The tiny run, one shard image, the training set and the DN model redone through a site's generic Slurm
    profile and a fake Slurm, the GPU partition named on the command line: every rule keeps its memory, time
    and GPUs, and the bytes are the local run's."""
    workdir = copy_run(tiny_run, tmp_path / "work")
    for stale in ("events/agn/shard0000/10ks_1x", "images/agn/shard0000/10ks_1x.fits", "dataset/xmmsr_dataset.h5",
                  "models", "checkpoints"):
        path = workdir / "results" / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    profile = _site_profile(tmp_path / "slurm")
    state, env = _fake_slurm_env(tmp_path)
    proc = start(workdir, "results/models/dn/model.pt", "--profile", str(profile),
                 "--set-resources", "train:slurm_partition=a100", "--jobs", "4",
                 "--slurm-init-seconds-before-status-checks", "1", "--configfile", str(TINY), env=env)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out

    submitted = _submitted(state)
    assert sorted((rule, len(calls)) for rule, calls in submitted.items()) == [
        ("bin", 1), ("pack", 1), ("simulate", 1), ("train", 1)]
    for call in submitted["simulate"] + submitted["bin"] + submitted["pack"]:
        assert f"-A {fake_slurm.ACCOUNT}" in call and "-p cpu" in call and "--gpus" not in call
        assert "--ntasks=1" in call and "--cpus-per-task=1" in call
    # the tiny config's shards of 3 sources: the shard rules' time at its floor, 10 % of the reference's
    assert "-t 18" in submitted["simulate"][0] and "--mem 8000" in submitted["simulate"][0]
    assert "-t 720" in submitted["pack"][0] and "--mem 24000" in submitted["pack"][0]
    for call in submitted["train"]:
        assert "--gpus=1" in call and "--cpus-per-gpu=8" in call and "-p a100" in call
        assert "-t 1440" in call and "--mem 64000" in call and f"-A {fake_slurm.ACCOUNT}" in call
    steps = fake_slurm.srun_calls(state)
    assert len(steps) == 4 and all("-n1" in args for args in steps)  # one job step per job

    assert data_files(workdir) == data_files(tiny_run)  # the cluster remade the same bytes
    assert torch.load(workdir / "results/models/dn/model.pt", weights_only=True)["task"] == "dn"


def test_jobs_past_their_memory_or_time_are_resubmitted_bigger(tiny_run, tmp_path):
    """Slurm ends the first simulate job with OUT_OF_MEMORY and the first bin job with TIMEOUT: with retries,
    each is resubmitted with twice the memory and time, and the image comes out as in the local run."""
    workdir = copy_run(tiny_run, tmp_path / "work")
    for stale in ("events/agn/shard0000/10ks_1x", "images/agn/shard0000/10ks_1x.fits"):
        path = workdir / "results" / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    profile = _site_profile(tmp_path / "slurm", retries=1)
    state, env = _fake_slurm_env(tmp_path, FAKE_SLURM_FAIL_FIRST="simulate=OUT_OF_MEMORY,bin=TIMEOUT")
    proc = start(workdir, "results/images/agn/shard0000/10ks_1x.fits", "--profile", str(profile),
                 "--slurm-init-seconds-before-status-checks", "1", "--configfile", str(TINY), env=env)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    submitted = _submitted(state)
    assert [len(submitted["simulate"]), len(submitted["bin"])] == [2, 2]
    for rule, mem, minutes in (("simulate", 8000, 18), ("bin", 8000, 6)):
        first, second = submitted[rule]
        assert f"--mem {mem}" in first and f"-t {minutes}" in first
        assert f"--mem {2 * mem}" in second and f"-t {2 * minutes}" in second
    image = "results/images/agn/shard0000/10ks_1x.fits"
    assert (workdir / image).read_bytes() == (tiny_run / image).read_bytes()


# --------------------------------------------------------------------------- the reference scale


def test_reference_config_dag_builds_quickly_with_hundreds_of_jobs(tmp_path):
    started = time.monotonic()
    result = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config" / "paper.yaml"))
    seconds = time.monotonic() - started
    jobs = planned_jobs(result)
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    shards = sum(-(-paper["sources"][kind]["n"] // paper["shards"]["size"]) for kind in ("extended", "agn",
                                                                                          "background"))
    assert jobs["sources"] == shards and jobs["simulate"] == jobs["bin"] == 4 * shards
    assert jobs["expected"] == 2 * shards and jobs["train"] == 2
    assert 100 <= sum(jobs.values()) < 2000
    assert seconds < 120, f"the reference DAG took {seconds:.0f} s to build"


def test_touching_scripts_or_the_library_reruns_nothing(tiny_run):
    later = time.time() + 10
    touched = [*(REPO / "workflow" / "scripts").glob("*.py"), REPO / "src" / "xmmsr" / "pipeline.py"]
    stamps = {path: path.stat() for path in touched}
    try:
        for path in touched:
            os.utime(path, (later, later))
        result = snakemake(tiny_run, "-n", "--configfile", str(TINY))
    finally:
        for path, stat in stamps.items():
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "Nothing to be done" in result.stdout + result.stderr


# --------------------------------------------------------------------------- reproducibility and kills


def test_one_core_killed_and_resumed_gives_the_bytes_of_two_cores(tiny_run, tmp_path):
    """The AGN shard's images with --cores 1, SIGKILLed in the middle of a shard job and rerun with
    --rerun-incomplete, are byte-identical to the uninterrupted --cores 2 run's (the training set itself is
    remade on the fake cluster by the site-profile test)."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    shard = "agn/shard0000"
    targets = [f"results/images/{shard}/{ks}ks_{r}x.fits" for ks in (2, 10) for r in (1, 2)]
    targets += [f"results/expected/{shard}/{r}x.fits" for r in (1, 2)]
    proc = start(workdir, *targets, "--cores", "1", "--configfile", str(TINY))

    def writing_a_shard() -> list[Path]:
        return [p for p in (workdir / "results" / "events").glob("*/*/.*.tmp")] if (workdir / "results").exists() \
            else []

    kill_when(proc, lambda: bool(writing_a_shard()))
    partial = writing_a_shard()
    for tmp in partial:
        final = tmp.parent / tmp.name[1:].rsplit(".", 2)[0]
        assert not final.exists(), f"{final} looks finished after the kill"
    assert not all((workdir / target).exists() for target in targets)

    snakemake(workdir, "--unlock", "--configfile", str(TINY))  # the lock of the killed run
    snakemake(workdir, *targets, "--cores", "1", "--rerun-incomplete", "--configfile", str(TINY))
    assert not [p for p in (workdir / "results").rglob(".*.tmp")], "stale temporaries were left behind"
    mine, reference = data_files(workdir), data_files(tiny_run)
    assert set(targets) <= set(mine) and any("/events/" in name for name in mine)
    assert {name: mine[name] == reference.get(name) for name in mine} == dict.fromkeys(mine, True)


def test_killed_training_resumes_from_its_checkpoint_to_the_same_weights(tiny_run, tmp_path):
    workdir = copy_run(tiny_run, tmp_path / "work")
    checkpoints = workdir / "results" / "checkpoints" / "dn"
    shutil.rmtree(checkpoints)
    model = workdir / "results" / "models" / "dn" / "model.pt"
    proc = start(workdir, "results/models/dn/model.pt", "--cores", "2", "--forcerun", "train",
                 "--configfile", str(TINY))
    kill_when(proc, lambda: (checkpoints / "epoch0000.ckpt").exists())
    assert not model.exists() and not (checkpoints / "epoch0001.ckpt").exists()

    snakemake(workdir, "--unlock", "--configfile", str(TINY))  # the lock of the killed run
    rerun = snakemake(workdir, "results/models/dn/model.pt", "--cores", "2", "--rerun-incomplete",
                      "--configfile", str(TINY))
    log = (workdir / "results" / "logs" / "train" / "dn.log").read_text()
    assert "resum" in log.lower(), rerun.stdout + log
    resumed = torch.load(model, weights_only=True)
    reference = torch.load(tiny_run / "results" / "models" / "dn" / "model.pt", weights_only=True)
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name
    assert (model.parent / "history.csv").read_bytes() == (tiny_run / "results/models/dn/history.csv").read_bytes()


# --------------------------------------------------------------------------- damaged files and storage errors


def test_a_damaged_shard_stops_pack_with_its_name(tiny_run, tmp_path):
    workdir = copy_run(tiny_run, tmp_path / "work")
    damaged = workdir / "results" / "images" / "agn" / "shard0000" / "10ks_1x.fits"
    with fits.open(damaged) as hdul:
        data_start = hdul.fileinfo(0)["datLoc"]
    raw = bytearray(damaged.read_bytes())
    raw[data_start + 1000] ^= 0x40  # one flipped bit in the counts: still a valid FITS file
    damaged.write_bytes(bytes(raw))

    result = snakemake(workdir, "results/dataset/xmmsr_dataset.h5", "--cores", "1", "--configfile", str(TINY),
                       check=False)
    assert result.returncode != 0
    log = (workdir / "results" / "logs" / "pack.log").read_text()
    assert str(damaged.relative_to(workdir)) in log and "CHECKSUM" in log and "rerun snakemake" in log
    assert not (workdir / "results" / "dataset" / "xmmsr_dataset.h5").exists()
    with pytest.raises(InputError, match="CHECKSUM"):
        read_cube(damaged)


def test_a_truncated_file_is_refused_with_its_name(tiny_run, tmp_path):
    cube = tiny_run / "results" / "images" / "agn" / "shard0000" / "10ks_1x.fits"
    truncated = tmp_path / "cube.fits"
    truncated.write_bytes(cube.read_bytes()[: cube.stat().st_size // 2])
    with pytest.raises(InputError, match=re.escape(str(truncated))):
        open_fits(truncated, "image cube")


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space is left"), (errno.EDQUOT, "quota"),
                                         (errno.EACCES, "permission denied"), (errno.EROFS, "read-only")])
def test_storage_failures_name_the_file_and_the_fix_and_leave_nothing(tmp_path, code, words):
    final = tmp_path / "out" / "cube.fits"
    with pytest.raises(StorageError) as raised:
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half a file")
            raise OSError(code, os.strerror(code), str(tmp))
    message = str(raised.value)
    assert words in message and "Fix:" in message and raised.value.errno == code
    assert not list(final.parent.iterdir())

    with pytest.raises(StorageError, match=words):
        with atomic_directory(tmp_path / "shard0000") as tmp:
            (tmp / "a.fits").write_bytes(b"partial")
            raise OSError(code, os.strerror(code))
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]


def test_a_full_disk_while_writing_fits_or_hdf5_is_explained(tmp_path, monkeypatch):
    def full_disk(self, path, **kwargs):
        Path(path).write_bytes(b"SIMPLE  =                    T")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fits.HDUList, "writeto", full_disk)
    with pytest.raises(StorageError, match="no space is left") as raised:
        write_fits_atomic(fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4)))]), tmp_path / "image.fits")
    assert str(tmp_path / "image.fits") in str(raised.value)
    assert not list(tmp_path.iterdir())

    hdf5_style = OSError("Can't write data (file write failed: errno = 28, error message = 'No space left on device')")
    assert isinstance(storage_error(hdf5_style, tmp_path / "set.h5"), StorageError)
    other = OSError(errno.EINVAL, "bad argument")
    assert storage_error(other, tmp_path) is other  # not a storage problem: left as it is


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / ".cube.fits.abc123.tmp").write_bytes(b"killed mid-write")
    (tmp_path / ".shard0000.xyz.tmp").mkdir()
    (tmp_path / ".other.fits.abc.tmp").write_bytes(b"someone else's")
    with atomic_path(tmp_path / "cube.fits") as tmp:
        tmp.write_bytes(b"done")
    with atomic_directory(tmp_path / "shard0000") as tmp:
        (tmp / "a").write_bytes(b"done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.fits.abc.tmp", "cube.fits", "shard0000"]


def test_training_in_a_one_task_slurm_step_launches_its_own_ranks(monkeypatch):
    from lightning.fabric.plugins.environments import LightningEnvironment

    from xmmsr.learn.train import cluster_plugins

    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    assert cluster_plugins() == []
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "xmmsr-train")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    plugins = cluster_plugins()
    assert len(plugins) == 1 and isinstance(plugins[0], LightningEnvironment)
