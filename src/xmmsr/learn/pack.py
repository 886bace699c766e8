"""Pack binned images, expected images and masks into one HDF5 training set with splits by source.

Layout of the file (``N`` samples, 1x frames ``H x W`` after padding, 2x frames ``2H x 2W``):

* ``lr`` (N, H, W) int32: counts at the input exposure, 1x
* ``dn_target`` (N, H, W) int32 and ``sr_target`` (N, 2H, 2W) int32: counts at the target exposure
* ``expected_rate_1x`` (N, H, W), ``expected_rate_2x`` (N, 2H, 2W) float32: noise-free count rate
  (counts/s per pixel, background included); multiply by an exposure for expected counts
* ``background_rate_1x`` (N, H, W), ``background_rate_2x`` (N, 2H, 2W) float32: the background alone of each
  sample (fields differ by their background scales)
* ``mask_1x`` (H, W), ``mask_2x`` (2H, 2W) uint8: detector masks (1 = active pixel); the same for every
  sample (one instrument geometry), so stored once
* ``exposure_lr``, ``exposure_target`` (N,) float64 [s]
* ``meta`` (N,) compound: source id, kind, model, split, seeds, augmentation parameters, 1x WCS
* ``splits/train``, ``splits/val``, ``splits/test``: sample indices

Frames are zero-padded (centred) to a multiple of ``pad_multiple``; the 2x padding is exactly twice the
1x padding (HR offset = 2 x LR offset), recorded in the attributes ``lr_offset`` / ``hr_offset``.
Image datasets are chunked one image per chunk and gzip-compressed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from astropy.io import fits

from .. import __version__
from ..config import derive_seed
from ..errors import InputError
from ..io import atomic_path, open_fits
from ..progress import progress
from ..cube import read_cube
from ..instrument.geometry import centred_offset
from ..sky.model import SOURCE_KINDS

SPLITS = ("train", "val", "test")
SPLIT_STREAM = 2  # seed-derivation key of the split assignment
FORMAT_VERSION = 2   # 2: the background planes are per sample (per-field background scales)
META_DTYPE = np.dtype([
    ("source_id", "i4"), ("kind", "S12"), ("model", "S12"), ("split", "S5"),
    ("source_seed", "i8"), ("seed_lr", "i8"), ("seed_dn", "i8"), ("seed_sr", "i8"),
    ("sigma_b", "f8"), ("zoom", "f8"), ("offx_arcsec", "f8"), ("offy_arcsec", "f8"), ("n_agn", "i4"),
    ("ra_pnt", "f8"), ("dec_pnt", "f8"),
    ("crpix1", "f8"), ("crpix2", "f8"), ("crval1", "f8"), ("crval2", "f8"),
    ("cd1_1", "f8"), ("cd1_2", "f8"), ("cd2_1", "f8"), ("cd2_2", "f8"),
])


@dataclass(frozen=True)
class ShardFiles:
    """The files of one shard that enter the training set."""

    kind: str
    sky_dir: Path
    lr: Path
    dn_target: Path
    sr_target: Path
    expected_1x: Path
    expected_2x: Path


def config_hash(cfg: dict[str, Any]) -> str:
    """SHA-256 of a config subset (canonical JSON)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()


def split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Sources per split: rounded fractions, at least one in train; val (n >= 2) and test (n >= 3) get at
    least one source when their fraction is positive."""
    total = sum(fractions[s] for s in SPLITS)
    if total <= 0:
        raise ValueError("pack.split: the split fractions sum to 0; give train/val/test fractions")
    counts = {s: int(round(n * fractions[s] / total)) for s in ("val", "test")}
    for split, n_min in (("val", 2), ("test", 3)):
        if fractions[split] > 0 and n >= n_min:
            counts[split] = max(counts[split], 1)
    while n > 0 and counts["val"] + counts["test"] > n - 1:  # keep one source for training
        counts["test" if counts["test"] >= counts["val"] and counts["test"] > 0 else "val"] -= 1
    counts["train"] = n - counts["val"] - counts["test"]
    return counts


def assign_splits(kind: str, source_ids: Sequence[int], fractions: dict[str, float], seed: int) -> dict[int, str]:
    """Seeded assignment of the sources of one kind to train/val/test (stratified by kind)."""
    ids = sorted(set(int(i) for i in source_ids))
    rng = np.random.default_rng(derive_seed(seed, SPLIT_STREAM, SOURCE_KINDS.index(kind)))
    order = [ids[i] for i in rng.permutation(len(ids))]
    counts = split_counts(len(ids), fractions)
    labels = ["train"] * counts["train"] + ["val"] * counts["val"] + ["test"] * counts["test"]
    return dict(zip(order, labels, strict=True))


def _pad_shape(shape: tuple[int, int], multiple: int) -> tuple[int, int]:
    return tuple(-(-s // multiple) * multiple for s in shape)  # type: ignore[return-value]


def _pad(frames: np.ndarray, shape: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    out = np.zeros(frames.shape[:-2] + shape, dtype=frames.dtype)
    h, w = frames.shape[-2:]
    out[..., offset[0]:offset[0] + h, offset[1]:offset[1] + w] = frames
    return out


def _read_mask(path: Path) -> np.ndarray:
    with open_fits(path, "detector mask") as hdul:
        return (np.asarray(hdul[0].data) > 0).astype(np.uint8)


def _sky_meta(sky_dir: Path, kind: str, source_id: int) -> fits.Header:
    path = sky_dir / f"{kind}_{source_id:06d}.fits"
    if not path.is_file():
        raise InputError(path, "file", "the sky model of a packed source is missing", "rerun the sources rule")
    return fits.getheader(path)


def _source_ids(path: Path) -> list[int]:
    """The source ids of an image cube, from its SOURCES table only (the cube is checked when it is read)."""
    try:
        with fits.open(path) as hdul:
            return [int(i) for i in hdul["SOURCES"].data["SRCID"]]
    except Exception as exc:  # a missing, truncated or damaged header: astropy raises many kinds
        raise InputError(path, "SOURCES.SRCID", f"the image cube's source table cannot be read "
                         f"({exc.__class__.__name__}: {exc})", "delete the file and rerun snakemake to remake it") from exc


def _check_rows(name: str, path: Path, table: fits.FITS_rec, ids: np.ndarray) -> None:
    if not np.array_equal(np.asarray(table["SRCID"]), ids):
        raise InputError(path, "SOURCES.SRCID", f"the {name} cube holds sources {list(table['SRCID'])}, "
                         f"the input cube {list(ids)}", "rerun the bin/expected rules of this shard")


class _Writer:
    """Appends samples to resizable, chunked HDF5 datasets."""

    def __init__(self, h5: h5py.File, lr_shape: tuple[int, int], compression: int) -> None:
        hr_shape = (2 * lr_shape[0], 2 * lr_shape[1])
        opts: dict[str, Any] = {"track_times": False}
        if compression:
            opts.update(compression="gzip", compression_opts=compression, shuffle=True)
        spec = {"lr": ("i4", lr_shape), "dn_target": ("i4", lr_shape), "sr_target": ("i4", hr_shape),
                "expected_rate_1x": ("f4", lr_shape), "expected_rate_2x": ("f4", hr_shape),
                "background_rate_1x": ("f4", lr_shape), "background_rate_2x": ("f4", hr_shape)}
        self.images = {name: h5.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                               chunks=(1, *shape), **opts) for name, (dtype, shape) in spec.items()}
        self.vectors = {name: h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype="f8", chunks=(1024,),
                                                track_times=False) for name in ("exposure_lr", "exposure_target")}
        self.n = 0

    def append(self, images: dict[str, np.ndarray], vectors: dict[str, np.ndarray]) -> None:
        k = len(vectors["exposure_lr"])
        for name, ds in {**self.images, **self.vectors}.items():
            ds.resize(self.n + k, axis=0)
            ds[self.n:self.n + k] = images[name] if name in images else vectors[name]
        self.n += k


def pack_dataset(shards: Sequence[ShardFiles], mask_1x: Path, mask_2x: Path, input_exposure_s: float,
                 target_exposure_s: float, split_fractions: dict[str, float], pad_multiple: int, compression: int,
                 seed: int, dataset_config: dict[str, Any], output: str | Path) -> dict[str, int]:
    """Write the HDF5 training set atomically; returns the number of samples per split."""
    masks = {1: _read_mask(Path(mask_1x)), 2: _read_mask(Path(mask_2x))}
    h, w = masks[1].shape
    if masks[2].shape != (2 * h, 2 * w):
        raise InputError(mask_2x, "shape", f"the 2x mask is {masks[2].shape}, expected {(2 * h, 2 * w)}",
                         "rebuild both detector masks from one geometry")
    lr_shape = _pad_shape((h, w), pad_multiple)
    lr_off = centred_offset(lr_shape, (h, w))
    hr_off = (2 * lr_off[0], 2 * lr_off[1])
    hr_shape = (2 * lr_shape[0], 2 * lr_shape[1])

    ids_by_kind: dict[str, list[int]] = {}
    for shard in shards:
        ids_by_kind.setdefault(shard.kind, []).extend(_source_ids(shard.lr))
    split_of = {kind: assign_splits(kind, ids, split_fractions, seed) for kind, ids in ids_by_kind.items()}

    meta_rows: list[tuple] = []
    with atomic_path(output) as tmp, h5py.File(tmp, "w", track_order=True) as h5:
        writer = _Writer(h5, lr_shape, compression)
        for shard in progress(shards, "pack", "shard"):
            lr, lr_rows, _ = read_cube(shard.lr)
            ids = np.asarray(lr_rows["SRCID"])
            cubes = {"lr": (lr, lr_rows)}
            for name, path in (("dn_target", shard.dn_target), ("sr_target", shard.sr_target)):
                cube, rows, _ = read_cube(path)
                _check_rows(name, path, rows, ids)
                cubes[name] = (cube, rows)
            expected, background = {}, {}
            for res, path in ((1, shard.expected_1x), (2, shard.expected_2x)):
                with open_fits(path, "expected-image cube") as hdul:
                    _check_rows(f"expected {res}x", path, hdul["SOURCES"].data, ids)
                    expected[res] = np.asarray(hdul["EXPECTED"].data, dtype=np.float32)
                    background[res] = np.asarray(hdul["BACKGROUND"].data, dtype=np.float32)
                if background[res].shape != expected[res].shape:
                    raise InputError(path, "BACKGROUND", f"has shape {background[res].shape}, the EXPECTED cube "
                                     f"{expected[res].shape}", "rerun the expected rule (one background plane per source)")
            for name, (cube, _) in cubes.items():
                want = (h, w) if name != "sr_target" else (2 * h, 2 * w)
                if cube.shape[1:] != want:
                    raise InputError(getattr(shard, name), "shape", f"frames are {cube.shape[1:]}, the detector "
                                     f"mask is {want}", "rebuild images and masks with one geometry")
            for name, exposure in (("lr", input_exposure_s), ("dn_target", target_exposure_s),
                                   ("sr_target", target_exposure_s)):
                got = np.asarray(cubes[name][1]["EXPOSURE"], dtype=float)
                if not np.allclose(got, exposure, rtol=1e-6):
                    raise InputError(getattr(shard, name), "SOURCES.EXPOSURE", f"exposures {sorted(set(got))} s, "
                                     f"the config asks for {exposure:g} s", "check pack.*_exposure_ks and rerun")
            images = {"lr": _pad(lr, lr_shape, lr_off), "dn_target": _pad(cubes["dn_target"][0], lr_shape, lr_off),
                      "sr_target": _pad(cubes["sr_target"][0], hr_shape, hr_off),
                      "expected_rate_1x": _pad(expected[1], lr_shape, lr_off),
                      "expected_rate_2x": _pad(expected[2], hr_shape, hr_off),
                      "background_rate_1x": _pad(background[1], lr_shape, lr_off),
                      "background_rate_2x": _pad(background[2], hr_shape, hr_off)}
            writer.append(images, {"exposure_lr": np.asarray(lr_rows["EXPOSURE"], float),
                                   "exposure_target": np.asarray(cubes["dn_target"][1]["EXPOSURE"], float)})
            for i, source_id in enumerate(ids):
                sky = _sky_meta(shard.sky_dir, shard.kind, int(source_id))
                r = lr_rows[i]
                meta_rows.append((
                    int(source_id), shard.kind.encode(), str(sky.get("MODEL", "none")).encode(),
                    split_of[shard.kind][int(source_id)].encode(), int(sky["SEED"]), int(r["SEED"]),
                    int(cubes["dn_target"][1][i]["SEED"]), int(cubes["sr_target"][1][i]["SEED"]),
                    float(sky.get("SIGMA_B", np.nan)), float(sky.get("ZOOM", np.nan)),
                    float(sky.get("OFFX_AS", 0.0)), float(sky.get("OFFY_AS", 0.0)), int(sky.get("NAGN", 0)),
                    float(r["RA_PNT"]), float(r["DEC_PNT"]),
                    float(r["CRPIX1"]) + lr_off[1], float(r["CRPIX2"]) + lr_off[0], float(r["CRVAL1"]),
                    float(r["CRVAL2"]), float(r["CD1_1"]), float(r["CD1_2"]), float(r["CD2_1"]), float(r["CD2_2"])))
        meta = np.array(meta_rows, dtype=META_DTYPE)
        h5.create_dataset("meta", data=meta, track_times=False)
        for res, shape, off in ((1, lr_shape, lr_off), (2, hr_shape, hr_off)):
            h5.create_dataset(f"mask_{res}x", data=_pad(masks[res], shape, off), track_times=False)
        counts = {}
        for split in SPLITS:
            idx = np.flatnonzero(meta["split"] == split.encode()).astype(np.int64)
            h5.create_dataset(f"splits/{split}", data=idx, track_times=False)
            counts[split] = len(idx)
        h5.attrs.update({
            "format": "xmmsr-dataset", "format_version": FORMAT_VERSION, "software": f"xmmsr {__version__}",
            "config_hash": config_hash(dataset_config), "config": json.dumps(dataset_config, sort_keys=True),
            "seed": seed, "input_exposure_s": input_exposure_s, "target_exposure_s": target_exposure_s,
            "frames": "zero-padded, centred; HR offset = 2 x LR offset",
            "lr_frame_shape": (h, w), "lr_offset": lr_off, "hr_offset": hr_off, "pad_multiple": pad_multiple,
            "split_by": "source (kind, source_id), stratified by kind, seeded",
            "units": "counts (lr, targets); counts/s per pixel (expected_rate_*, background_rate_*); s (exposure_*)",
        })
    return counts
