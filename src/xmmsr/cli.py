"""The ``xmmsr`` command line: the stages users run by hand on single files."""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import ConfigError, load_config
from .errors import InputError, TngApiError
from .instrument.model import PnInstrument


def _instrument(config_path: str | None) -> tuple[PnInstrument, dict]:
    config = load_config(config_path)
    base = Path(config_path).parent if config_path else None
    return PnInstrument.from_config(config["instrument"], base_dir=base), config


def cmd_simulate(args: argparse.Namespace) -> None:
    from .instrument.binning import write_image
    from .instrument.events import write_events
    from .instrument.simulator import expected_image, simulate_events
    from .sky.model import read_sky_model

    instrument, config = _instrument(args.config)
    sky = read_sky_model(args.sky)
    exposure = args.exposure
    background = not args.no_background
    backend = args.backend or config["simulate"]["backend"]
    if backend == "sixte":
        events = _simulate_sixte(args, sky, instrument, config, background)
    else:
        events = simulate_events(sky, instrument, exposure, args.resolution, args.seed, background,
                                 config["simulate"]["tstart"])
    if args.expected:
        from astropy.io import fits

        from .instrument.binning import detector_image_wcs

        g = instrument.geometry
        header = detector_image_wcs(g.image_grid(args.resolution), sky.ra_pnt, sky.dec_pnt, instrument.roll_deg,
                                    g.aim_x_arcsec, g.aim_y_arcsec).to_header()
        header["BUNIT"] = ("count", "expected counts (Poisson mean) per pixel")
        header["EXPOSURE"] = (exposure, "[s]")
        header["RESMULT"] = (args.resolution, "resolution multiplier")
        header["BACKGRND"] = (background, "background included")
        write_image(expected_image(sky, instrument, exposure, args.resolution, background).astype("f4"),
                    fits.Header(header), args.expected)
    write_events(events, args.output)
    print(f"{args.output}: {len(events)} events, {exposure:g} s, resolution {args.resolution}x, seed {args.seed}")


def _simulate_sixte(args: argparse.Namespace, sky, instrument: PnInstrument, config: dict, background: bool):
    """``xmmsr simulate --backend sixte``: SIXTE with the given instrument, or one written from the model for
    this run; SIXTE's own output goes to stderr."""
    import tempfile

    from .instrument.sixte import find_sixte, instrument_xml, simulate_events_sixte
    from .instrument.sixte_instrument import write_sixte_instrument

    settings = config["simulate"]["sixte"]
    executable = str(find_sixte(args.sixte_executable or settings["executable"]))
    location = args.sixte_instrument or settings["instrument_xml"]
    with tempfile.TemporaryDirectory(prefix="xmmsr-sixte-") as work:
        if location is None:
            location = write_sixte_instrument(instrument, args.resolution, Path(work) / "instrument",
                                              calib=settings["calib"])
        xml, derive_2x = instrument_xml(location, args.resolution)
        return simulate_events_sixte(sky, instrument, args.exposure, args.resolution, args.seed,
                                     config["simulate"]["tstart"], xml, Path(work) / "run", sys.stderr, background,
                                     executable, derive_2x)


def cmd_extract(args: argparse.Namespace) -> None:
    from .cube import extract_plane
    from .instrument.binning import write_image

    image, header = extract_plane(args.cube, args.source)
    write_image(image, header, args.output)
    print(f"{args.output}: source {args.source} ({header['SRCKIND']}) of {args.cube}, {image.shape[1]} x "
          f"{image.shape[0]} pixels, {header['BUNIT']} per pixel, celestial WCS")


def cmd_sixte_instrument(args: argparse.Namespace) -> None:
    from .instrument.sixte_instrument import write_sixte_instrument

    instrument, _ = _instrument(args.config)
    xml = write_sixte_instrument(instrument, args.resolution, args.output, calib=args.calib, overwrite=args.overwrite)
    source = f"the real ARF and RMF in {args.calib}" if args.calib else "the model's area and PI redistribution"
    print(f"{xml}: SIXTE EPIC-pn instrument at {args.resolution}x (PSF, vignetting and particle background of the "
          f"instrument model, {source})")


def cmd_bin(args: argparse.Namespace) -> None:
    from .instrument.binning import bin_event_file, write_image
    from .io import gti_extensions

    image, header = bin_event_file(args.events)
    write_image(image, header, args.output, gti_extensions(args.events))
    print(f"{args.output}: {int(image.sum())} counts in 0.5-2 keV, {image.shape[1]} x {image.shape[0]} pixels")


def cmd_sky(args: argparse.Namespace) -> None:
    from .pipeline import brightness_reference
    from .sky.generate import generate_source
    from .sky.model import write_sky_model

    instrument, config = _instrument(args.config)
    seed = config["seed"] if args.seed is None else args.seed
    model = generate_source(args.kind, args.id, config["sources"], brightness_reference(instrument), seed)
    write_sky_model(model, args.output)
    print(f"{args.output}: {args.kind} source {args.id}, total flux {model.total_flux:.3g} ph cm-2 s-1")


def cmd_simput(args: argparse.Namespace) -> None:
    from .sky.model import read_sky_model
    from .sky.simput import write_simput

    sky = read_sky_model(args.sky)
    out = write_simput(sky, args.output)
    n_ext = int(sky.image.sum(dtype="f8") > 0)
    print(f"{out}: SIMPUT catalogue of {n_ext} extended and {len(sky.points)} point sources, "
          f"total {sky.total_flux:.3g} ph cm-2 s-1 in 0.5-2 keV")


def cmd_predict(args: argparse.Namespace) -> None:
    from astropy.io import fits

    from .learn.predict import predict_file
    from .learn.checkpoint import shipped_model

    if args.model is None and args.task is None:
        raise InputError(None, "--model/--task", "neither is given",
                         "give --task dn or --task sr for the pretrained models, or --model MODEL.pt")
    if args.model is not None and args.task is not None:
        raise InputError(None, "--model/--task", "both are given", "give one: --task picks a pretrained model")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        out = predict_file(args.model or shipped_model(args.task), args.input, args.output, args.device,
                           args.exposure_map, args.uncertainty, args.draws, args.seed, args.source_gate)
    for w in caught:
        print(f"xmmsr predict: warning: {w.message}", file=sys.stderr)
    h = fits.getheader(out)
    print(f"{out}: {h['MODTASK']} prediction, {h['NAXIS1']} x {h['NAXIS2']} pixels ({h['RESMULT']}x grid), "
          f"expected counts for {h['EXPOSURE']:g} s from a {h['INEXPOS']:g} s image"
          + (f"; 1-sigma uncertainty ({args.draws} bootstrap draws) in {args.uncertainty}" if args.uncertainty else ""))


def cmd_evaluate_real(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    base = Path(args.config).parent if args.config else None
    if args.image is not None:
        _evaluate_real_image(args, config, base)
        return
    from .evaluate.real import evaluate_real_pairs

    if args.short is None or args.long is None or args.model is None:
        raise InputError(None, "--image / --short --long", "neither a deep image nor a complete pair is given",
                         "give --image DEEP.fits (thinned into input and remainder), or --model with --short "
                         "and --long")
    table = evaluate_real_pairs(args.model, [{"name": Path(args.short).stem, "short": args.short, "long": args.long}],
                                config["instrument"], config["evaluate"], args.output,
                                None if args.gaussian_sigma is None else {"gaussian": args.gaussian_sigma}, base)
    scores = table.set_index("method")
    print(f"{args.output}: PSNR vs the long exposure: model {scores.at['model', 'psnr_linear_vs_long']:.2f} dB, input "
          f"{scores.at['input', 'psnr_linear_vs_long']:.2f} dB "
          f"({scores.at['model', 'psnr_gain_vs_input_percent']:+.1f} %)")


def _evaluate_real_image(args: argparse.Namespace, config: dict, base: Path | None) -> None:
    from .evaluate.real import score_thinned
    from .evaluate.run import write_csv
    from .learn.checkpoint import shipped_model

    if (args.model is None) == (args.task is None):
        raise InputError(None, "--model/--task", "give exactly one", "--task dn|sr picks a pretrained model")
    if args.short is not None or args.long is not None:
        raise InputError(None, "--short/--long", "cannot be combined with --image", "give one of the two modes")
    if args.seed is None or args.seed < 0:
        raise InputError(None, "--seed", f"{args.seed} is not a seed >= 0", "give --seed N (the thinning's draw)")
    output = Path(args.output)
    if output.is_dir():
        raise InputError(output, "--output", "is a directory", "give a CSV file name")
    table = score_thinned(args.model or shipped_model(args.task), args.image, args.input_exposure, args.seed,
                          config["instrument"], config["evaluate"], args.exposure_map,
                          None if args.gaussian_sigma is None else {"gaussian": args.gaussian_sigma}, base)
    write_csv(table, output)
    s = table.set_index("method")
    print(f"{output}: deviance per pixel vs the independent remainder: model {s.at['model', 'deviance']:.4f}, "
          f"best Gaussian ({s.at['gaussian', 'parameter']}) {s.at['gaussian', 'deviance']:.4f}, "
          f"input {s.at['input', 'deviance']:.4f}; PSNR model {s.at['model', 'psnr']:.2f} dB, "
          f"Gaussian {s.at['gaussian', 'psnr']:.2f} dB ({s.at['model', 'exposure_source']}); point sources made "
          f"from nothing (upper estimate) model {s.at['model', 'from_nothing']:.1f} of {s.at['model', 'sources']}, "
          f"input {s.at['input', 'from_nothing']:.1f} of {s.at['input', 'sources']}")


def cmd_thin(args: argparse.Namespace) -> None:
    from .thinning import thin_file

    thin_file(args.image, args.fraction, args.seed, args.output_a, args.output_b)
    print(f"{args.output_a}: counts kept with probability {args.fraction:g}; {args.output_b}: the rest "
          f"(independent Poisson images, exposures scaled)")


def cmd_tng_project(args: argparse.Namespace) -> None:
    import numpy as np

    from .sky.model import write_sky_model
    from .sky.tng.cutout import read_cutout
    from .sky.tng.sky import project_cutout, projection_sky_model

    config = load_config(args.config)
    tng, sky = config["sources"]["tng"], config["sources"]["sky"]
    cutout = read_cutout(args.cutout)
    center = None if args.center is None else np.asarray(args.center, dtype=np.float64)
    projection = project_cutout(cutout, args.axis, args.width_kpc, args.redshift, args.npix or tng["npix"], center,
                                tng["emissivity_table"], tng["min_temperature_k"])
    named = re.search(r"(TNG\d+-\d)_snap(\d+)_sub(\d+)", Path(args.cutout).name)
    provenance = {"TNGSIM": args.simulation or (named.group(1) if named else "unknown"),
                  "TNGSNAP": args.snapshot if args.snapshot is not None else (int(named.group(2)) if named else -1),
                  "TNGSUBID": args.subhalo_id if args.subhalo_id is not None else (int(named.group(3)) if named else -1)}
    model = projection_sky_model(projection, sky["ra_deg"], sky["dec_deg"], config["sources"]["agn"]["nh"], provenance)
    write_sky_model(model, args.output)
    print(f"{args.output}: {projection.image.shape[1]} x {projection.image.shape[0]} pixels of "
          f"{projection.pixel_arcsec:.3g}\", total {model.total_flux:.3g} ph cm-2 s-1 (0.5-2 keV), "
          f"L = {projection.luminosity_erg_s:.3g} erg/s, kT = {projection.kt_keV:.3g} keV (observed)")


def cmd_tng_download(args: argparse.Namespace) -> None:
    from .sky.tng.client import download_selection, write_manifest

    config = load_config(args.config)
    tng = config["sources"]["tng"]
    manifest = download_selection(tng)
    out = args.manifest or str(Path(tng["local_dir"] or tng["cutout_dir"]) / "manifest.json")
    write_manifest(out, manifest)
    print(f"{out}: {len(manifest['cutouts'])} cutouts of {tng['simulation']} snapshot {tng['snapshot']} "
          f"({manifest['source']})")


def _center(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not X,Y,Z in ckpc/h") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r} is not X,Y,Z in ckpc/h")
    return values


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value >= 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


NPIX_RANGE = (16, 16384)   # --npix of tng-project: an image of 16384^2 float32 is 1 GiB


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer {what}") from None


def _seed(text: str) -> int:
    value = _integer(text, "seed")
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"seed must be an integer >= 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _integer(text, "identifier")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _npix(text: str) -> int:
    value = _integer(text, "number of pixels")
    if not NPIX_RANGE[0] <= value <= NPIX_RANGE[1]:
        raise argparse.ArgumentTypeError(f"must be {NPIX_RANGE[0]}-{NPIX_RANGE[1]} pixels per side, got {text}")
    return value


def _output_file(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a file name")
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory: give a file name inside it")
    return text


def _draws(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"needs at least 2 draws, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"exposure must be positive seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xmmsr", description="XMM-Newton EPIC-pn de-noising / super-resolution toolkit")
    parser.add_argument("--version", action="version", version=f"xmmsr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="simulate a pn event list from a sky model (built-in simulator or SIXTE)")
    p.add_argument("--sky", required=True, help="sky-model FITS (photon flux image + point sources)")
    p.add_argument("--exposure", required=True, type=_positive_seconds, help="exposure in seconds")
    p.add_argument("--resolution", required=True, type=int, choices=(1, 2), help="1: real pn, 2: the 2x instrument")
    p.add_argument("--seed", required=True, type=_seed, help="random seed of this realization (>= 0)")
    p.add_argument("--no-background", action="store_true", help="leave out particle and cosmic background")
    p.add_argument("--output", required=True, type=_output_file, help="event-list FITS to write")
    p.add_argument("--expected", help="also write the noise-free expected count image (Poisson mean) here")
    p.add_argument("--config", help="pipeline config YAML for the instrument (default: the embedded defaults)")
    p.add_argument("--backend", choices=("builtin", "sixte"),
                   help="simulator (default: the config's simulate.backend, builtin unless set)")
    p.add_argument("--sixte-instrument", metavar="DIR_OR_XML",
                   help="SIXTE instrument: a folder written by 'xmmsr sixte-instrument' or a 1x XML (default: the "
                        "config's, else one written from the instrument model for this run)")
    p.add_argument("--sixte-executable", help="runsixt or sixtesim to run (default: found on PATH or in $SIXTE/bin)")
    _overwrite_option(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("sixte-instrument", help="write a SIXTE EPIC-pn instrument from the instrument model")
    p.add_argument("--resolution", required=True, type=int, choices=(1, 2), help="1: real pn, 2: the 2x instrument")
    p.add_argument("--output", required=True, help="folder to write (XML, PSF, vignetting, ARF, RMF, background)")
    p.add_argument("--calib", help="folder with a real pn ARF (*.arf) and RMF (*.rmf, *.rmf.gz) to use instead of "
                                   "the model's")
    p.add_argument("--config", help="pipeline config YAML for the instrument (default: the embedded defaults)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output folder")
    p.set_defaults(func=cmd_sixte_instrument)

    p = sub.add_parser("bin", help="bin a pn event list (simulated or real) into a 0.5-2 keV count image")
    p.add_argument("events", help="event-list FITS with an EVENTS extension")
    p.add_argument("--output", required=True, type=_output_file, help="count-image FITS to write")
    _overwrite_option(p)
    p.set_defaults(func=cmd_bin)

    p = sub.add_parser("extract", help="write one plane of a pipeline image cube as a ds9-ready image")
    p.add_argument("cube", help="image or expected cube (results/images/..., results/expected/...)")
    p.add_argument("--source", required=True, type=_non_negative_int, help="SRCID of the plane (SOURCES table)")
    p.add_argument("--output", required=True, type=_output_file, help="image FITS to write")
    _overwrite_option(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("sky", help="generate one synthetic sky model as the pipeline does")
    p.add_argument("--kind", required=True, choices=("extended", "agn", "background"))
    p.add_argument("--id", type=_non_negative_int, default=0, help="source identifier (>= 0; selects the random draw)")
    p.add_argument("--seed", type=_seed, help="root seed (>= 0; default: the config's)")
    p.add_argument("--config", help="pipeline config YAML (default: the embedded defaults)")
    p.add_argument("--output", required=True, type=_output_file, help="sky-model FITS to write")
    _overwrite_option(p)
    p.set_defaults(func=cmd_sky)

    p = sub.add_parser("simput", help="convert a sky model into a SIMPUT source catalogue (e.g. for SIXTE)")
    p.add_argument("sky", help="sky-model FITS (photon flux image + point sources)")
    p.add_argument("--output", required=True, type=_output_file, help="SIMPUT FITS file to write")
    _overwrite_option(p)
    p.set_defaults(func=cmd_simput)

    p = sub.add_parser("predict", help="de-noise or super-resolve a 1x pn count image with a trained model")
    p.add_argument("--task", choices=("dn", "sr"), help="use the pretrained model of this task (resources/models)")
    p.add_argument("--model", help="model.pt written by the train rule (instead of --task)")
    p.add_argument("--input", required=True, help="0.5-2 keV count image FITS on the 1x grid, with EXPOSURE")
    p.add_argument("--output", required=True, type=_output_file, help="FITS to write: expected counts at the model's target exposure")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="auto: cuda if available, else mps, else cpu")
    p.add_argument("--exposure-map", help="exposure map of the input (SAS eexpmap, seconds); without it the "
                   "per-CCD ONTIMEnn of the header are used when they differ, else EXPOSURE, and on a DETX/DETY "
                   "image the chip gaps and dead pixels of the pn CCD layout get none")
    p.add_argument("--uncertainty", type=_output_file, help="also write the per-pixel 1-sigma uncertainty to this FITS "
                   "(parametric bootstrap: Poisson inputs drawn from the prediction, predicted again; scaled by the "
                   "model's calibration against simulated truths when it has one, as the shipped models do)")
    p.add_argument("--draws", type=_draws, default=8, help="bootstrap draws of --uncertainty (>= 2, default 8)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the bootstrap draws (default 0)")
    p.add_argument("--source-gate", type=_non_negative, default=0.0, metavar="SIGMA",
                   help="keep a compact source of the prediction only where the input's counts show it at this "
                   "Poisson significance, e.g. 3 (default 0: the network's output unchanged; the evaluation "
                   "scores the gate at evaluate.source_gate_sigma as model_gated)")
    _overwrite_option(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate-real", help="score a model and the baselines on real data: a deep image thinned "
                       "into input and independent remainder (--image), or a short/long pair (--short --long)")
    p.add_argument("--task", choices=("dn", "sr"), help="score the pretrained model of this task (with --image)")
    p.add_argument("--model", help="model.pt written by the train rule")
    p.add_argument("--image", help="deep count image FITS (1x grid, EXPOSURE) to thin into input and remainder")
    p.add_argument("--exposure-map", help="exposure map of --image (SAS eexpmap; default: per-CCD ONTIMEnn and, "
                   "on a DETX/DETY image, the pn CCD layout)")
    p.add_argument("--input-exposure", type=_positive_seconds, default=20000.0,
                   help="exposure (s) of the thinned input (default 20000)")
    p.add_argument("--seed", type=_seed, help="seed of the thinning (>= 0; with --image)")
    p.add_argument("--short", help="short-exposure count image FITS (1x grid, EXPOSURE)")
    p.add_argument("--long", help="independent longer-exposure count image FITS of the same target")
    p.add_argument("--output", required=True, type=_output_file, help="CSV of metrics per method")
    p.add_argument("--gaussian-sigma", type=_non_negative, default=None,
                   help="width (pixels) of the Gaussian baseline (default: 1 for pairs; the best for --image)")
    p.add_argument("--config", help="pipeline config YAML (default: the embedded defaults)")
    _overwrite_option(p)
    p.set_defaults(func=cmd_evaluate_real)

    p = sub.add_parser("thin", help="split a count image binomially into two independent Poisson images")
    p.add_argument("image", help="count image FITS (e.g. SAS evselect or xmmsr bin)")
    p.add_argument("--fraction", required=True, type=float, help="probability that A keeps a count (0 < P < 1)")
    p.add_argument("--seed", required=True, type=_seed, help="random seed (>= 0)")
    p.add_argument("--output-a", required=True, help="FITS for the kept counts (exposure x P)")
    p.add_argument("--output-b", required=True, help="FITS for the rest (exposure x (1 - P))")
    _overwrite_option(p)
    p.set_defaults(func=cmd_thin)

    p = sub.add_parser("tng-project", help="project an IllustrisTNG gas cutout into a 0.5-2 keV sky model")
    p.add_argument("cutout", help="cutout HDF5 (illustris_python layout: Header, PartType0)")
    p.add_argument("--axis", required=True, choices=("x", "y", "z"), help="projection axis")
    p.add_argument("--width-kpc", required=True, type=float, help="width of the image in physical kpc")
    p.add_argument("--redshift", required=True, type=float, help="observation redshift (> 0)")
    p.add_argument("--output", required=True, type=_output_file, help="sky-model FITS to write (unaugmented, photon flux per pixel)")
    p.add_argument("--npix", type=_npix, help=f"pixels per side ({NPIX_RANGE[0]}-{NPIX_RANGE[1]}; default sources.tng.npix, 2048)")
    p.add_argument("--center", type=_center, help="centre X,Y,Z in ckpc/h (default: shrinking sphere of the emission)")
    p.add_argument("--simulation", help="provenance: simulation name (default: from the file name)")
    p.add_argument("--snapshot", type=int, help="provenance: snapshot number (default: from the file name)")
    p.add_argument("--subhalo-id", type=int, help="provenance: subhalo id (default: from the file name)")
    p.add_argument("--config", help="pipeline config YAML (default: the embedded defaults)")
    _overwrite_option(p)
    p.set_defaults(func=cmd_tng_project)

    p = sub.add_parser("tng-download", help="select IllustrisTNG subhalos and download their gas cutouts "
                                            "(key in $TNG_API_KEY)")
    p.add_argument("--config", help="pipeline config YAML with sources.tng (default: the embedded defaults)")
    p.add_argument("--manifest", help="manifest JSON to write (default: CUTOUT_DIR/manifest.json)")
    p.set_defaults(func=cmd_tng_download)
    return parser


# Arguments that name files a command writes, and files it reads (which it must never write over).
OUTPUT_ARGUMENTS = ("output", "expected", "uncertainty", "output_a", "output_b")
INPUT_ARGUMENTS = ("sky", "events", "input", "image", "short", "long", "exposure_map", "model", "cutout", "config",
                   "cube")


def _overwrite_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist (never an input)")


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before anything is computed, output files that exist (unless ``--overwrite``; HEASoft's
    clobber), that are one of the command's inputs (even with ``--overwrite``), or that are named twice."""
    outputs = [(name, Path(v)) for name in OUTPUT_ARGUMENTS if isinstance(v := getattr(args, name, None), str)]
    inputs = [Path(v) for name in INPUT_ARGUMENTS if isinstance(v := getattr(args, name, None), str)]
    seen: dict[Path, str] = {}
    for name, out in outputs:
        flag = "--" + name.replace("_", "-")
        resolved = out.resolve()
        if resolved in seen:
            raise InputError(out, flag, f"is also given as {seen[resolved]}", "give each output its own file")
        seen[resolved] = flag
        for source in inputs:
            if resolved == source.resolve() or (out.exists() and source.exists() and os.path.samefile(out, source)):
                raise InputError(out, flag, "is an input of this command", "write the result to another file")
        if out.is_file() and not getattr(args, "overwrite", False):
            raise InputError(out, flag, "exists", "pass --overwrite to replace it, or choose another file name")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_outputs(args)
        args.func(args)
    except (InputError, ConfigError, TngApiError) as exc:
        message = " ".join(str(exc).split())  # one line, even when a library message spans several
        print(f"xmmsr {args.command}: error: {message}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"xmmsr {args.command}: error: out of memory. Fix: a smaller input, exposure or --npix", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only or missing directory, permissions: one line, a CLI fix
        where = exc.filename or getattr(args, "output", None) or ""
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"xmmsr {args.command}: error: {where}: cannot write or read the file: {reason}. Fix: check that the "
              "path exists and is writable with room to spare, or choose another --output", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
