"""Shared fixtures: the default instrument and small, hand-made sky models."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xmmsr.config import default_config
from xmmsr.instrument.model import PnInstrument
from xmmsr.sky.model import SkyModel, empty_point_table, make_wcs

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny.yaml"
RA0, DEC0 = 150.0, 2.0


@pytest.fixture(scope="session")
def config() -> dict:
    return default_config()


@pytest.fixture(scope="session")
def instrument(config) -> PnInstrument:
    return PnInstrument.from_config(config["instrument"], base_dir=REPO)


def make_instrument(**overrides: dict) -> PnInstrument:
    """The default instrument with some config sections overridden, e.g. psf={"core_radius_arcsec": 1}."""
    cfg = copy.deepcopy(default_config()["instrument"])
    for section, values in overrides.items():
        if isinstance(values, dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    return PnInstrument.from_config(cfg, base_dir=REPO)


def point_sky(flux: float, offset_arcsec: tuple[float, float] = (0.0, 0.0), npix: int = 64,
              gamma: float = 1.9) -> SkyModel:
    """A field with one point source ``offset_arcsec`` (east, north) from the pointing, nothing else."""
    wcs = make_wcs(RA0, DEC0, (npix, npix), 1.0)
    points = empty_point_table()
    points = np.zeros(1, dtype=points.dtype)
    points["RA"] = RA0 + offset_arcsec[0] / 3600.0 / np.cos(np.deg2rad(DEC0))
    points["DEC"] = DEC0 + offset_arcsec[1] / 3600.0
    points["FLUX"], points["GAMMA"], points["NH"] = flux, gamma, 3e20
    return SkyModel(np.zeros((npix, npix), np.float32), wcs, RA0, DEC0, "agn", source_id=1, points=points)


def beta_sky(total_flux: float = 2e-3, npix: int = 600, rc_arcsec: float = 30.0) -> SkyModel:
    """A round beta-model cluster (beta = 2/3) centred on the pointing, 1" pixels, plus one AGN."""
    wcs = make_wcs(RA0, DEC0, (npix, npix), 1.0)
    yy, xx = np.mgrid[:npix, :npix]
    r = np.hypot(xx - (npix - 1) / 2, yy - (npix - 1) / 2)
    image = (1 + (r / rc_arcsec) ** 2) ** (-1.5)
    image = (image / image.sum() * total_flux).astype(np.float32)
    points = np.zeros(1, dtype=empty_point_table().dtype)
    points["RA"], points["DEC"] = RA0 + 0.05, DEC0 - 0.03
    points["FLUX"], points["GAMMA"], points["NH"] = 2e-4, 1.9, 3e20
    return SkyModel(image, wcs, RA0, DEC0, "extended", source_id=7, seed=3, points=points)


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the workflow of this checkout in ``workdir``; raise with its output when it fails."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A working directory where the tiny config ran end to end (simulate -> train)."""
    workdir = tmp_path_factory.mktemp("tiny")
    snakemake(workdir, "--cores", "2", "--configfile", str(TINY))
    return workdir


def write_count_image(path: Path, counts: np.ndarray, exposure: float, ontimes: dict[int, float] | None = None,
                      grid=None) -> Path:
    """A SAS-like count image: EXPOSURE, ONTIMEnn, DETX/DETY physical keywords of ``grid``, one GTI table."""
    from astropy.io import fits

    from xmmsr.instrument.binning import physical_keywords

    header = fits.Header()
    header["EXPOSURE"] = exposure
    for ccd in range(1, 13):
        header[f"ONTIME{ccd:02d}"] = (ontimes or {}).get(ccd, exposure)
    if grid is not None:
        for key, value in physical_keywords(grid).items():
            header[key] = value
    gti = fits.BinTableHDU.from_columns([fits.Column("START", "D", array=[0.0]),
                                         fits.Column("STOP", "D", array=[exposure])], name="STDGTI01")
    fits.HDUList([fits.PrimaryHDU(counts.astype(np.int32), header=header), gti]).writeto(path)
    return path
