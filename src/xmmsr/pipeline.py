"""Shard-level stage functions called by the workflow scripts (one job = one shard of sources).

Layout under the output directory:

* ``sky/{kind}/shard{NNNN}/`` – one sky-model FITS per source (``{kind}_{id:06d}.fits``)
* ``events/{kind}/shard{NNNN}/{E}ks_{R}x/`` – one event list per source
* ``images/{kind}/shard{NNNN}/{E}ks_{R}x.fits`` – count-image cube of the shard (+ SOURCES table)
* ``expected/{kind}/shard{NNNN}/{R}x.fits`` – noise-free expected count-rate cube (+ background rate)
* ``masks/detmask_{R}x.fits`` – detector mask per resolution
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from . import __version__
from .config import derive_seed
from .errors import InputError
from .instrument.binning import bin_event_file, detector_image_wcs
from .instrument.events import write_events
from .instrument.model import PnInstrument
from .cube import cube_header, wcs_row, write_cube
from .instrument.simulator import expected_image_and_background, simulate_events
from .io import atomic_directory
from .learn import TASKS
from .progress import progress
from .sky.generate import BrightnessReference, generate_source
from .sky.model import SOURCE_KINDS, read_sky_model, write_sky_model

SIMULATION_STREAM = 1  # seed-derivation key separating simulation seeds from source seeds
TRAINING_STREAM = 3  # seed-derivation key of the training seeds (2 is the split assignment)
DEBLEND_STREAM = 19  # seed-derivation key of the de-blending draws (7-17 are the sky generation's)


def use_checkout_library(workflow_dir: str | Path) -> str:
    """Put the library of the checkout at ``workflow_dir`` first on the ``PYTHONPATH`` that the rule scripts
    inherit (also in conda environments, which do not install xmmsr); returns the path."""
    library = str(Path(workflow_dir).resolve() / "src")
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != library]
    os.environ["PYTHONPATH"] = os.pathsep.join([library, *rest])
    return library


def shard_source_ids(n_sources: int, shard_size: int, shard: int) -> range:
    """Source identifiers of one shard."""
    return range(shard * shard_size, min((shard + 1) * shard_size, n_sources))


def n_shards(n_sources: int, shard_size: int) -> int:
    """Number of shards needed for ``n_sources``."""
    return -(-n_sources // shard_size)


def simulation_seed(root_seed: int, kind: str, source_id: int, exposure_s: float, resolution: int) -> int:
    """Seed of one realization: independent between exposures, resolutions and sources."""
    return derive_seed(root_seed, SIMULATION_STREAM, SOURCE_KINDS.index(kind), source_id,
                       int(round(exposure_s)), resolution)


def training_seed(root_seed: int, task: str) -> int:
    """Seed of the training of one task (weights initialisation, crops, augmentation)."""
    return derive_seed(root_seed, TRAINING_STREAM, TASKS.index(task)) % 2**31


def deblend_seed(root_seed: int) -> int:
    """Seed of the de-blending evaluation's Poisson draws."""
    return derive_seed(root_seed, DEBLEND_STREAM)


def brightness_reference(instrument: PnInstrument) -> BrightnessReference:
    """Background level and effective area used to set source brightness (sigma_b)."""
    area = instrument.require_response().spectral("bremss", 3.0, 3e20).band_area_cm2
    return BrightnessReference(background_rate_arcsec2=instrument.background_rate_arcsec2(), effective_area_cm2=area)


@contextmanager
def logged_to(log_path: str | Path) -> Iterator[None]:
    """Send stdout/stderr of a workflow job to its log file; a failure is logged with its traceback."""
    import contextlib
    import traceback

    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"xmmsr {__version__}", flush=True)
        try:
            yield
        except BaseException:
            traceback.print_exc(file=log)
            raise


def _progress(items: Sequence[Any], what: str) -> Any:
    """Progress per source: a bar on a terminal, lines with rate and time left in a job's log."""
    return progress(items, what, "src")


def make_sky_shard(kind: str, source_ids: Sequence[int], sources_cfg: dict[str, Any], instrument: PnInstrument,
                   root_seed: int, out_dir: str | Path, tng_manifest: str | Path | None = None) -> list[Path]:
    """Generate the sky models of one shard into ``out_dir`` (atomically, all or nothing); ``tng_manifest``
    (default: ``sources_cfg["tng_manifest"]``, set by the workflow) lists the IllustrisTNG cutouts when
    ``sources.kind`` is tng or mixed."""
    brightness = brightness_reference(instrument)
    cutouts = None
    tng_manifest = tng_manifest if tng_manifest is not None else sources_cfg.get("tng_manifest")
    if tng_manifest is not None:
        from .sky.tng.client import read_manifest

        cutouts = read_manifest(tng_manifest)
    written = []
    with atomic_directory(out_dir) as tmp:
        for source_id in _progress(list(source_ids), f"sky {kind}"):
            model = generate_source(kind, int(source_id), sources_cfg, brightness, root_seed, cutouts)
            name = f"{kind}_{int(source_id):06d}.fits"
            write_sky_model(model, tmp / name)
            written.append(Path(out_dir) / name)
    return written


def sky_files(sky_dir: str | Path) -> list[Path]:
    """The sky-model files of a shard, in source order."""
    files = sorted(Path(sky_dir).glob("*.fits"))
    if not files:
        raise InputError(sky_dir, "sky-model shard", "contains no sky-model FITS files",
                         "rerun the sources rule for this shard")
    return files


def simulate_shard(sky_dir: str | Path, instrument: PnInstrument, exposure_s: float, resolution: int,
                   root_seed: int, out_dir: str | Path, background: bool = True, tstart: float = 0.0,
                   backend: str = "builtin", sixte: dict[str, Any] | None = None) -> None:
    """Simulate one event list per sky model of the shard into ``out_dir`` (atomically).

    ``backend`` is ``builtin`` or ``sixte``; ``sixte`` holds ``executable`` (None: PATH) and ``instrument``
    (an instrument folder or XML, see :func:`xmmsr.instrument.sixte.instrument_xml`). SIXTE's output goes to
    stdout, i.e. the job's log."""
    if backend == "sixte":
        from .instrument.sixte import find_sixte, instrument_xml, simulate_events_sixte

        settings = sixte or {}
        executable = str(find_sixte(settings.get("executable")))
        xml, derive_2x = instrument_xml(settings["instrument"], resolution)
    with atomic_directory(out_dir) as tmp:
        for path in _progress(sky_files(sky_dir), f"simulate {exposure_s / 1000:g} ks {resolution}x"):
            sky = read_sky_model(path)
            seed = simulation_seed(root_seed, sky.kind, sky.source_id, exposure_s, resolution)
            if backend == "sixte":
                with tempfile.TemporaryDirectory(prefix=".sixte.", dir=tmp.parent) as work:
                    sys.stdout.flush()
                    events = simulate_events_sixte(sky, instrument, exposure_s, resolution, seed, tstart, xml,
                                                   Path(work), sys.stdout, background, executable, derive_2x)
            else:
                events = simulate_events(sky, instrument, exposure_s, resolution, seed, background, tstart)
            write_events(events, tmp / path.name)


def bin_shard(events_dir: str | Path, output: str | Path) -> None:
    """Bin every event list of a shard into one count-image cube (int32, plane per source)."""
    files = sorted(Path(events_dir).glob("*.fits"))
    if not files:
        raise InputError(events_dir, "event-list shard", "contains no event lists", "rerun the simulate rule")
    planes, rows = [], []
    header = None
    for path in _progress(files, "bin"):
        image, header = bin_event_file(path)
        planes.append(image)
        rows.append({"SRCID": header["SRCID"], "SRCKIND": header["SRCKIND"], "SEED": header["SEED"],
                     "SRCSEED": header["SRCSEED"], "NEVENTS": header["NEVENTS"], "EXPOSURE": header["EXPOSURE"],
                     "RA_PNT": header["RA_PNT"], "DEC_PNT": header["DEC_PNT"], "PA_PNT": header["PA_PNT"],
                     **wcs_row(WCS(header))})
    assert header is not None
    write_cube(np.stack(planes), cube_header(header["SRCKIND"], header["RESMULT"], "count", header["EXPOSURE"]), rows,
               output)


def expected_shard(sky_dir: str | Path, instrument: PnInstrument, resolution: int, output: str | Path) -> None:
    """Noise-free expected count rate (counts/s, background included) per source, plus the background alone
    (per source: every field has its own background scales)."""
    rows = []
    kind = "background"
    g = instrument.geometry
    paths = sky_files(sky_dir)
    # the cubes filled in place: a list of planes stacked at the end held every plane twice
    planes = np.empty((len(paths), *g.image_grid(resolution).shape), dtype=np.float32)
    bkg = np.empty_like(planes)
    for i, path in enumerate(_progress(paths, f"expected {resolution}x")):
        sky = read_sky_model(path)
        kind = sky.kind
        planes[i], bkg[i] = expected_image_and_background(sky, instrument, 1.0, resolution)
        w = detector_image_wcs(g.image_grid(resolution), sky.ra_pnt, sky.dec_pnt, instrument.roll_deg,
                               g.aim_x_arcsec, g.aim_y_arcsec)
        rows.append({"SRCID": sky.source_id, "SRCKIND": sky.kind, "SEED": 0, "SRCSEED": sky.seed, "NEVENTS": 0,
                     "EXPOSURE": 1.0, "RA_PNT": sky.ra_pnt, "DEC_PNT": sky.dec_pnt, "PA_PNT": instrument.roll_deg,
                     **wcs_row(w)})
    header = cube_header(kind, resolution, "count s-1", None)
    header["EXTNAME"] = "EXPECTED"
    header["COMMENT"] = "Multiply by an exposure (s) for expected counts; subtract BACKGROUND for the sources alone."
    bkg_hdu = fits.ImageHDU(bkg, name="BACKGROUND")
    bkg_hdu.header["BUNIT"] = "count s-1"
    write_cube(planes, header, rows, output, [bkg_hdu])
