"""The SIXTE backend against the real SIXTE (runsixt 2.7 or sixtesim 3), where it is installed.

SIXTE is found as the backend finds it (PATH, $SIXTE/bin); .ci/run sources ../shared/sixte/env.sh through
.ci/sixte-env.sh when that prebuilt SIXTE is there. Without a working SIXTE every test here is skipped, with
the reason in pytest's summary (``-rs``).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from astropy.io import fits
from conftest import REPO, TINY, point_sky, snakemake

from xmmsr.cli import main
from xmmsr.errors import InputError
from xmmsr.instrument.sixte import find_sixte, sixte_environment, sixte_version
from xmmsr.sky.model import write_sky_model


def _sixte_missing() -> str | None:
    """Why the real SIXTE cannot run here, or None when it can."""
    try:
        exe = find_sixte()
    except InputError as exc:
        return f"SIXTE is not installed ({' '.join(str(exc).split())[:160]})"
    tool = exe.parent / "sixteversion"
    try:
        run = subprocess.run([str(tool)], capture_output=True, text=True, timeout=60, env=sixte_environment(None))
    except OSError as exc:
        return f"{tool} cannot be started ({exc})"
    if run.returncode != 0:
        return f"{tool} fails ({(run.stdout + run.stderr).strip()[:200]})"
    for lib in sorted((exe.parent.parent / "lib").glob("libsixt.so.*")):
        found = re.search(rb"(/[\w/.+-]*/share/sixte)\x00", lib.read_bytes())
        if found and not Path(found.group(1).decode()).is_dir():
            return (f"SIXTE's compiled-in data folder {found.group(1).decode()} is missing (the installation was "
                    "moved; .ci/sixte-env.sh links it where it may)")
        break
    return None


MISSING = _sixte_missing()
CALIB = REPO.parent / "shared" / "data" / "calib"
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


@pytest.fixture(scope="module")
def instruments(tmp_path_factory) -> dict[int, Path]:
    """SIXTE's EPIC-pn at 1x and 2x, written through the CLI from the default instrument model."""
    root = tmp_path_factory.mktemp("sixte_real")
    for r in (1, 2):
        assert main(["sixte-instrument", "--resolution", str(r), "--output", str(root / f"pn{r}")]) == 0
    return {r: root / f"pn{r}" for r in (1, 2)}


def _simulate(tmp_path: Path, sky_path: Path, resolution: int, backend: str, instrument: Path | None,
              exposure: float = 2000.0, extra: tuple[str, ...] = ()) -> fits.FITS_rec:
    out = tmp_path / f"{sky_path.stem}_{backend}_{resolution}x.fits"
    args = ["simulate", "--sky", str(sky_path), "--exposure", str(exposure), "--resolution", str(resolution),
            "--seed", "3", "--output", str(out), "--backend", backend, *extra]
    if instrument is not None:
        args += ["--sixte-instrument", str(instrument)]
    assert main(args) == 0
    return fits.getdata(out, "EVENTS")


def _good(events: fits.FITS_rec) -> np.ndarray:
    return (events["PI"] >= 500) & (events["PI"] <= 2000) & (events["FLAG"] == 0) & (events["PATTERN"] <= 4)


def test_version_is_detected():
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", sixte_version(find_sixte()))


@pytest.mark.parametrize("resolution", [1, 2])
def test_one_source_through_the_cli(instruments, tmp_path, capsys, resolution):
    sky = tmp_path / "point.fits"
    write_sky_model(point_sky(2e-3), sky)
    sixte = _simulate(tmp_path, sky, resolution, "sixte", instruments[resolution], extra=("--no-background",))
    log = capsys.readouterr().err
    assert "rollangle=270.0" in log and "Warning" not in log     # SIXTE's own output, on stderr
    builtin = _simulate(tmp_path, sky, resolution, "builtin", None, extra=("--no-background",))
    header = fits.getheader(tmp_path / f"point_sixte_{resolution}x.fits", "EVENTS")
    assert header["BACKEND"] == "sixte" and header["RESMULT"] == resolution and header["SIXTEVER"]
    n_sixte, n_builtin = int(_good(sixte).sum()), int(_good(builtin).sum())
    assert n_builtin > 1500 and 0.85 < n_sixte / n_builtin < 1.15
    # the source sits where the built-in puts it (DETX/DETY, 0.05" units) ...
    for col in ("DETX", "DETY"):
        assert abs(np.median(sixte[col]) - np.median(builtin[col])) < 2.0 / 0.05
    # ... and SIXTE's readout streak runs along DETY, as the pn's does
    dx, dy = (sixte[c].astype(float) - np.median(sixte[c]) for c in ("DETX", "DETY"))
    far = np.hypot(dx, dy) > 120.0 / 0.05
    along_y = np.sum(far & (np.abs(dx) < 8.0 / 0.05))
    along_x = np.sum(far & (np.abs(dy) < 8.0 / 0.05))
    assert along_y > 3 * max(along_x, 1)


@pytest.mark.parametrize("resolution", [1, 2])
def test_blank_field_through_the_cli(instruments, tmp_path, resolution):
    """A field without sources (SIXTE refuses an empty catalogue): background only, at the built-in's level."""
    sky_model = dataclasses.replace(point_sky(1e-3), kind="background")
    sky_model.points = sky_model.points[:0]
    sky = tmp_path / "blank.fits"
    write_sky_model(sky_model, sky)
    sixte = _simulate(tmp_path, sky, resolution, "sixte", instruments[resolution], exposure=5000.0)
    builtin = _simulate(tmp_path, sky, resolution, "builtin", None, exposure=5000.0)
    n_sixte, n_builtin = int(_good(sixte).sum()), int(_good(builtin).sum())
    assert n_builtin > 4000 and 0.9 < n_sixte / n_builtin < 1.1
    assert set(np.unique(fits.getdata(tmp_path / f"blank_sixte_{resolution}x.fits", "EVENTS")["CCDNR"])) == \
        set(range(1, 13))


@pytest.mark.skipif(not CALIB.is_dir(), reason=f"the real pn calibration files ({CALIB}) are absent")
def test_instrument_with_the_real_arf_and_rmf(tmp_path, capsys):
    """--calib: the real ARF (0.05-16 keV) and RMF; the sky's spectra cover the ARF (no SIXTE warning)."""
    assert main(["sixte-instrument", "--resolution", "1", "--output", str(tmp_path / "pn"), "--calib", str(CALIB)]) == 0
    sky = tmp_path / "point.fits"
    write_sky_model(point_sky(2e-3), sky)
    sixte = _simulate(tmp_path, sky, 1, "sixte", tmp_path / "pn")
    assert "Warning" not in capsys.readouterr().err
    builtin = _simulate(tmp_path, sky, 1, "builtin", None)
    assert 0.85 < _good(sixte).sum() / _good(builtin).sum() < 1.15


def test_tiny_workflow_to_the_training_set_with_sixte(tmp_path):
    """The tiny workflow, sources to the training set, with simulate.backend: sixte (the instrument written
    by the workflow's sixte_instrument rule). Training, evaluation and report read the training set only,
    whatever simulated it: the built-in tiny run covers them."""
    config = yaml.safe_load(TINY.read_text())
    config["simulate"].update({"backend": "sixte", "exposures_ks": [1, 2]})
    config["pack"] = {"input_exposure_ks": 1, "target_exposure_ks": 2}
    path = tmp_path / "sixte.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "run"
    work.mkdir()
    snakemake(work, "results/dataset/xmmsr_dataset.h5", "--cores", "2", "--configfile", str(path))
    with h5py.File(work / "results" / "dataset" / "xmmsr_dataset.h5") as h5:
        assert len(h5["meta"]) > 0 and int(np.sum(h5["lr"][:])) > 0 and int(np.sum(h5["sr_target"][:])) > 0
    assert (work / "results" / "sixte" / "pn_2x" / "pn_2x.xml").is_file()
    events = sorted((work / "results" / "events").rglob("*.fits"))
    assert events and all(fits.getheader(e, "EVENTS")["BACKEND"] == "sixte" for e in events)
    log = (work / "results" / "logs" / "simulate" / "background_shard0000_2ks_2x.log").read_text()
    assert "runsixt" in log or "sixtesim" in log
