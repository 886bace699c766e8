"""The Snakemake workflow: config validation, dry runs, an end-to-end run of the tiny config, reruns."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from conftest import REPO, TINY, snakemake

from xmmsr.config import ConfigError, check_config, check_outdir, default_config, load_config
from xmmsr.errors import InputError
from xmmsr.io import OutdirLock
from xmmsr.cube import cube_wcs, read_cube


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from the job-stats table of a dry run."""
    counts: dict[str, int] = {}
    for line in (result.stdout + result.stderr).splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def write_config(path: Path, overrides: dict) -> Path:
    base = yaml.safe_load(TINY.read_text())
    _merge(base, overrides)
    path.write_text(yaml.safe_dump(base))
    return path


def _merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def test_embedded_config_is_the_schema_defaults():
    assert load_config(REPO / "config.yaml") == default_config()


@pytest.mark.parametrize(
    ("bad", "fragments"),
    [
        ({"simulate": {"backend": "foo"}}, ["simulate.backend", "builtin"]),
        ({"sources": {"agn": {"n": -2}}}, ["sources.agn.n", ">= 0"]),
        ({"simluate": {}}, ["simluate", "allowed keys", "simulate"]),
        ({"instrument": {"psf": {"king": {"alfa": 1.5}}}}, ["alfa", "instrument.psf.king", "alpha"]),
        ({"instrument": {"psf": {"model": "gauss"}}}, ["instrument.psf.model", "ellbeta"]),
        ({"simulate": {"resolutions": [3]}}, ["simulate.resolutions.0", "[1, 2]"]),
        ({"sources": {"agn": {"flux_min": 1e-12, "flux_max": 1e-14}}}, ["flux_min", "flux_max"]),
    ],
)
def test_bad_config_names_the_key_and_the_allowed_values(bad, fragments):
    with pytest.raises(ConfigError) as exc:
        check_config(bad)
    for fragment in fragments:
        assert fragment in str(exc.value)


def test_bad_config_stops_snakemake_before_any_job(tmp_path):
    config = write_config(tmp_path / "bad.yaml", {"instrument": {"psf": {"king": {"alpha": 0.5}}}})
    result = snakemake(tmp_path, "-n", "--configfile", str(config), check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "instrument.psf.king.alpha" in message and "> 1.0" in message
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("outdir", ["", "  ", "/", "/etc", "/usr/local/results", ".", "..", "../.."])
def test_careless_outdirs_are_refused(tmp_path, outdir):
    with pytest.raises(ConfigError, match="outdir"):
        check_outdir(outdir, tmp_path / "work")


def test_reasonable_outdirs_resolve(tmp_path):
    work = tmp_path / "work"
    assert check_outdir("results", work) == (work / "results").resolve()
    assert check_outdir(str(tmp_path / "scratch" / "run1"), work) == (tmp_path / "scratch" / "run1").resolve()
    assert check_outdir("../elsewhere", work) == (tmp_path / "elsewhere").resolve()


def test_a_system_outdir_stops_snakemake_before_any_job(tmp_path):
    config = write_config(tmp_path / "bad.yaml", {"outdir": "/etc/xmmsr"})
    result = snakemake(tmp_path, "-n", "--configfile", str(TINY), str(config), check=False)
    assert result.returncode != 0 and "system directory /etc" in result.stdout + result.stderr


def test_two_runs_cannot_write_one_outdir(tmp_path):
    """A run from another working directory (its own Snakemake lock) finds the outdir's lock held."""
    out = tmp_path / "shared_results"
    lock = OutdirLock(out)   # as a running workflow holds it
    try:
        config = write_config(tmp_path / "out.yaml", {"outdir": str(out)})
        (tmp_path / "other").mkdir()
        result = snakemake(tmp_path / "other", "--cores", "1", "--configfile", str(TINY), str(config), check=False)
        assert result.returncode != 0
        assert "another run is writing there" in result.stdout + result.stderr
        assert not (out / "sky").exists() and not (out / "masks").exists()   # no job ran
    finally:
        lock.release()
    OutdirLock(out).release()   # free again once the holder ends


def test_a_hard_linked_copy_of_a_results_tree_has_its_own_lock(tmp_path):
    original, copy = tmp_path / "results", tmp_path / "copy"
    OutdirLock(original).release()  # a finished run leaves its lock file
    copy.mkdir()
    os.link(original / OutdirLock.NAME, copy / OutdirLock.NAME)  # as cp -al copies it
    held = OutdirLock(original)
    try:
        OutdirLock(copy).release()  # not the original's lock
        assert (copy / OutdirLock.NAME).stat().st_nlink == 1
        with pytest.raises(InputError, match="another run is writing there"):
            OutdirLock(original)  # while the original's is still held
    finally:
        held.release()


def test_dry_run_of_the_default_config(tmp_path):
    result = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"))
    jobs = planned_jobs(result)
    cfg = default_config()
    shards = sum(-(-cfg["sources"][k]["n"] // cfg["shards"]["size"]) for k in ("extended", "agn", "background"))
    assert jobs["sources"] == shards
    assert jobs["simulate"] == jobs["bin"] == shards * 4
    assert jobs["expected"] == shards * 2 and jobs["detector_mask"] == 2
    assert jobs["pack"] == 1 and jobs["train"] == jobs["evaluate"] == 2 and jobs["report"] == 1


def test_lint_is_clean(tmp_path):
    result = snakemake(tmp_path, "--lint", "--configfile", str(REPO / "config.yaml"), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_tiny_config_runs_end_to_end(tiny_run):
    out = tiny_run / "results"
    cfg = load_config(TINY)
    for res, shape in ((1, (411, 403)), (2, (822, 806))):
        with fits.open(out / "masks" / f"detmask_{res}x.fits") as mask:
            assert mask[0].data.shape == shape
        for kind, n in (("extended", 3), ("agn", 1), ("background", 1)):
            rate, rows, header = read_cube(out / "expected" / kind / "shard0000" / f"{res}x.fits")
            assert rate.shape == (n, *shape) and header["BUNIT"] == "count s-1"
            for exposure in cfg["simulate"]["exposures_ks"]:
                counts, table, h = read_cube(out / "images" / kind / "shard0000" / f"{exposure}ks_{res}x.fits")
                assert counts.shape == (n, *shape) and counts.dtype.kind == "i"
                assert h["EXPOSURE"] == exposure * 1000.0
                assert list(table["SRCID"]) == list(rows["SRCID"])
                # the plane WCS puts the optical axis (CRPIX) at the pointing, in counts and expected cubes alike
                for row, exp_row in zip(table, rows):
                    ra, dec = cube_wcs(row).wcs_pix2world([[row["CRPIX1"] - 1, row["CRPIX2"] - 1]], 0)[0]
                    assert (ra, dec) == pytest.approx((row["RA_PNT"], row["DEC_PNT"]), abs=1e-6)
                    assert row["CRPIX1"] == pytest.approx(exp_row["CRPIX1"], abs=1e-3)
                    scale = 4.0 / res / 3600.0  # the image grid: 80 DETX/DETY units of 0.05" (2" at 2x)
                    assert abs(np.linalg.det(cube_wcs(row).pixel_scale_matrix)) == pytest.approx(scale**2, rel=1e-6)
                    assert abs(np.linalg.det(cube_wcs(exp_row).pixel_scale_matrix)) == pytest.approx(scale**2, rel=1e-6)
                for plane, expected in zip(counts, rate * exposure * 1000.0):
                    mean = expected.sum()
                    assert abs(plane.sum() - mean) < 5 * np.sqrt(mean)
    events = sorted((out / "events" / "extended" / "shard0000" / "10ks_2x").glob("*.fits"))
    assert len(events) == 3
    logs = list((tiny_run / "results" / "logs").rglob("*.log"))
    assert logs and all("xmmsr" in p.read_text() for p in logs)


def test_input_and_target_are_independent_realizations(tiny_run):
    out = tiny_run / "results" / "images" / "background" / "shard0000"
    short, _, _ = read_cube(out / "2ks_1x.fits")
    long, _, _ = read_cube(out / "10ks_1x.fits")
    ratio = long.sum() / short.sum()
    assert abs(ratio - 5) < 5 * ratio * np.sqrt(1 / long.sum() + 1 / short.sum())


def test_rerun_does_nothing_and_parameter_changes_rerun_exactly_the_dependents(tiny_run, tmp_path):
    nothing = snakemake(tiny_run, "-n", "--configfile", str(TINY))
    assert "Nothing to be done" in nothing.stdout + nothing.stderr

    psf = write_config(tmp_path / "psf.yaml", {"instrument": {"psf": {"model": "king"}}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--configfile", str(psf)))
    assert "sources" not in jobs and "detector_mask" not in jobs
    assert jobs["simulate"] == 3 * 4 and jobs["expected"] == 3 * 2 and jobs["bin"] == 3 * 4
    assert jobs["pack"] == 1 and jobs["train"] == 2  # a simulation change rebuilds the training set

    lr = write_config(tmp_path / "lr.yaml", {"train": {"lr": 1.0e-3}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--configfile", str(lr)))
    assert set(jobs) == {"train", "evaluate", "deblend", "report", "all"} and jobs["train"] == 2  # dataset untouched

    retrain = write_config(tmp_path / "seed.yaml", {"train": {"seed": 7}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--configfile", str(retrain)))
    assert set(jobs) == {"train", "evaluate", "deblend", "report", "all"} and jobs["train"] == 2  # same set
    run_seed = write_config(tmp_path / "run_seed.yaml", {"train": {"seed": None}})
    assert "Nothing to be done" in "".join(snakemake(tiny_run, "-n", "--configfile", str(run_seed)).stdout)

    deblend = write_config(tmp_path / "deblend.yaml", {"evaluate": {"deblend": {"trials": 3}}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--configfile", str(deblend)))
    assert set(jobs) == {"deblend", "report", "all"}  # nor the models' evaluation

    sr_only = write_config(tmp_path / "sr.yaml", {"model": {"features": 4}, "train": {"tasks": ["sr"]}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--configfile", str(sr_only)))
    assert set(jobs) == {"train", "evaluate", "deblend", "report", "all"} and jobs["train"] == jobs["evaluate"] == 1

    workers = write_config(tmp_path / "workers.yaml", {"train": {"num_workers": 2, "threads": 1}})
    assert "Nothing to be done" in "".join(snakemake(tiny_run, "-n", "--configfile", str(workers)).stdout)

    crops = write_config(tmp_path / "crops.yaml", {"train": {"source_crops": 0.5}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--configfile", str(crops)))
    assert set(jobs) == {"train", "evaluate", "deblend", "report", "all"}  # at 0 it is not a parameter at all
    bright = write_config(tmp_path / "bright.yaml", {"train": {"brighten": {"fraction": 0.5}}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--configfile", str(bright)))
    assert set(jobs) == {"train", "evaluate", "deblend", "report", "all"}
    dark = write_config(tmp_path / "dark.yaml", {"train": {"brighten": {"fraction": 0.0, "max_factor": 5.0}}})
    assert "Nothing to be done" in "".join(snakemake(tiny_run, "-n", "--configfile", str(dark)).stdout)
    thin = write_config(tmp_path / "thin.yaml", {"train": {"thin_inputs": {"fraction": 0.5}}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--configfile", str(thin)))
    assert set(jobs) == {"train", "evaluate", "deblend", "report", "all"}
    deep = write_config(tmp_path / "deep.yaml", {"train": {"thin_inputs": {"fraction": 0.0, "min_exposure_fraction": 0.5}}})
    assert "Nothing to be done" in "".join(snakemake(tiny_run, "-n", "--configfile", str(deep)).stdout)
    no_pairs = write_config(tmp_path / "pairs.yaml", {"sources": {"agn": {"pair_separation_arcsec": [3.0, 9.0]}}})
    assert "Nothing to be done" in "".join(snakemake(tiny_run, "-n", "--configfile", str(no_pairs)).stdout)

    zoom = write_config(tmp_path / "zoom.yaml", {"sources": {"extended": {"zoom": [1.0, 1.5]}}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--configfile", str(zoom)))
    assert jobs["sources"] == 1 and jobs["simulate"] == 4 and jobs["expected"] == 2  # only the extended shard
    assert jobs["pack"] == 1

    more = write_config(tmp_path / "more.yaml", {"sources": {"extended": {"n": 4}}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--configfile", str(more)))
    assert jobs["sources"] == 1 and jobs["bin"] == 4  # one new shard; the full one is untouched

    oversample = write_config(tmp_path / "os.yaml", {"instrument": {"expected_oversample": 4}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--configfile", str(oversample)))
    assert set(jobs) == {"expected", "pack", "train", "evaluate", "deblend", "report", "all"}

    adversarial = write_config(tmp_path / "adv.yaml", {"train": {"loss": {"adversarial": 0.01}}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--configfile", str(adversarial)))
    assert set(jobs) == {"train_adversarial", "evaluate_adversarial", "deblend_adversarial", "report", "all"}
    assert jobs["train_adversarial"] == jobs["evaluate_adversarial"] == 2   # the pixel models stay
    assert jobs["deblend_adversarial"] == 1   # SR's de-blending beside the pixel-loss model's
    dn_only = write_config(tmp_path / "adv_dn.yaml", {"train": {"loss": {"adversarial": 0.01},
                                                                "adversarial": {"tasks": ["dn"]}}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--configfile", str(dn_only)))
    assert jobs["train_adversarial"] == jobs["evaluate_adversarial"] == 1   # train.adversarial.tasks chooses
    assert "deblend_adversarial" not in jobs
    unused = write_config(tmp_path / "unused.yaml", {"train": {"adversarial": {"epochs": 9}}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--configfile", str(unused)))
    assert set(jobs) == {"report", "all"}  # weight 0: nothing trains; the report prints the config

    rl = write_config(tmp_path / "rl.yaml", {"evaluate": {"rl_iterations": 7}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--configfile", str(rl)))
    assert set(jobs) == {"evaluate", "deblend", "report", "all"}  # evaluation settings retrain nothing


def test_killed_job_leaves_no_finished_looking_output(tmp_path):
    from xmmsr.io import atomic_directory

    target = tmp_path / "shard0000"
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as tmp:
            (tmp / "a.fits").write_bytes(b"partial")
            raise KeyboardInterrupt
    assert not target.exists() and not list(tmp_path.iterdir())


def test_rule_scripts_import_the_library_of_the_checkout(monkeypatch, tmp_path):
    from xmmsr.pipeline import use_checkout_library

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere", str(tmp_path.resolve() / "src")]))
    library = use_checkout_library(tmp_path)
    assert library == str(tmp_path.resolve() / "src")
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [library, "/elsewhere"]


def test_logs_live_under_the_run_output_folder(tmp_path):
    """Two configs run in one folder keep their logs apart: every log is under the config's outdir."""
    other = tmp_path / "other.yaml"
    other.write_text("outdir: run_a\n")
    result = snakemake(tmp_path, "-n", "--configfile", str(TINY), str(other))
    logs = [line.split("log:", 1)[1].strip() for line in result.stdout.splitlines() if line.strip().startswith("log:")]
    assert logs and all(path.startswith("run_a/logs/") for path in logs)
