"""PyTorch access to the HDF5 training set: lazy reading, aligned random crops, flips and rotations.

Randomness is a function of (seed, epoch, draw), not of a stateful generator: the :class:`EpochSampler`
yields ``(sample, draw_seed)`` pairs, so an epoch replays exactly after a resume and with any number of
DataLoader workers or DDP ranks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import InputError
from ..instrument.model import PnInstrument
from . import UPSCALE
from .injection import PairInjection, PairRenderer

CHUNK_CACHE_BYTES = 64 * 2**20  # per dataset and open file: ~20 frames of 832 x 832 float32
CHUNK_CACHE_SLOTS = 10007
TARGETS = {"dn": ("dn_target", "expected_rate_1x", "mask_1x"), "sr": ("sr_target", "expected_rate_2x", "mask_2x")}


def open_dataset(path: str | Path) -> h5py.File:
    """Open the HDF5 training set read-only, with a clear error when it is not one."""
    p = Path(path)
    try:
        h5 = h5py.File(p, "r")
    except OSError as exc:
        raise InputError(p, "file", f"cannot be opened as HDF5 ({exc})", "rerun the pack rule") from exc
    if h5.attrs.get("format") != "xmmsr-dataset":
        h5.close()
        raise InputError(p, "format", "is not an xmmsr training set", "give the HDF5 file written by the pack rule")
    return h5


def source_share(expected_rate: np.ndarray, background_rate: np.ndarray) -> np.ndarray:
    """Per pixel, the fraction of the expected counts that come from sources: (expected - background) /
    expected, 0 where nothing is expected (both in counts/s; the expected rate includes the background)."""
    expected = np.asarray(expected_rate, dtype=np.float64)
    excess = np.clip(expected - np.asarray(background_rate, dtype=np.float64), 0.0, None)
    return np.divide(excess, expected, out=np.zeros_like(expected), where=expected > 0)


class PairDataset(Dataset):
    """Input/target pairs of one split for one task.

    An item is a dict of float32 tensors: ``input`` (1, h, w) counts, ``target`` (1, s*h, s*w) counts,
    ``expected`` (1, s*h, s*w) expected target counts (unless ``with_expected`` is false), ``mask_input`` / ``mask_target`` (1, ., .), and
    scalars ``exposure_input`` / ``exposure_target`` [s], ``index`` (sample) and ``origin`` (crop corner). With ``crop`` the items are
    ``crop`` x ``crop`` 1x pixels centred on a random active detector pixel (targets aligned at 2x for
    SR); a fraction ``source_crops`` of them is centred instead on a pixel drawn with probability equal to
    its *source share*, the fraction of its expected input counts that come from sources rather than the
    background (:func:`source_share`), so that point sources, close pairs and cluster cores are seen in
    proportion to where sources outshine the background, not to their area. With ``augment`` a random
    flip and 90-degree rotation, the same for every array of the item.
    A fraction ``brighten`` of the crops is *brightened*: the sources of its expected images (expected
    minus background, their out-of-time streaks included) are multiplied by a factor drawn log-uniformly
    in [1, ``max_factor``], capped so that the field's source count rate stays at or below the training
    set's ``sources.extended.max_count_rate``, and input and target are drawn afresh as independent
    Poisson counts of the brightened expectations. The background keeps its level, so the network sees
    targets as bright as real pn ones (10^4 times the background) that the simulated set holds few of.
    A fraction ``pairs.fraction`` of the crops gets a close pair of point sources added to its input,
    target and expected images (:mod:`xmmsr.learn.injection`), drawn with the training set's own
    instrument: pairs below and around the PSF's width, which simulated fields seldom hold.
    A fraction ``thin_inputs`` of the crops gets a shallower input: its counts thinned binomially (each
    kept with probability f, :mod:`xmmsr.thinning`), f drawn log-uniformly in [``min_exposure_fraction``, 1],
    and its ``exposure_input`` times f; the target stays. Real observations are shallower than the
    training set's input exposure too, and a network that has seen one input depth only takes the
    noise peaks of a shallower one for sources.
    Keys are sample positions, or ``(position, draw_seed)`` pairs from :class:`EpochSampler`. With
    ``max_items`` only that many samples, evenly spread over the split, are used.
    """

    @classmethod
    def training(cls, path: str | Path, task: str, train_cfg: Mapping[str, Any]) -> PairDataset:
        """The train split as the ``train`` config section crops it (``crop``, ``source_crops``; augmented,
        no expected images; ``brighten``, ``pairs``, ``thin_inputs``). These may be absent: the rules leave
        them out at their defaults, which change nothing, so that runs made before them are not trained
        again."""
        brighten = train_cfg.get("brighten") or {}
        thin = train_cfg.get("thin_inputs") or {}
        return cls(path, task, "train", crop=train_cfg["crop"], augment=True, with_expected=False,
                   source_crops=train_cfg.get("source_crops", 0.0), brighten=brighten.get("fraction", 0.0),
                   max_factor=brighten.get("max_factor", 1.0), pairs=PairInjection.from_config(train_cfg.get("pairs")),
                   thin_inputs=thin.get("fraction", 0.0), min_exposure_fraction=thin.get("min_exposure_fraction", 1.0))

    def __init__(self, path: str | Path, task: str, split: str, crop: int | None = None,
                 augment: bool = False, with_expected: bool = True, max_items: int | None = None,
                 source_crops: float = 0.0, brighten: float = 0.0, max_factor: float = 1.0,
                 pairs: PairInjection | None = None, thin_inputs: float = 0.0,
                 min_exposure_fraction: float = 1.0) -> None:
        if task not in TARGETS:
            raise ValueError(f"unknown task {task!r}; expected one of {sorted(TARGETS)}")
        if not 0.0 <= source_crops <= 1.0:
            raise ValueError(f"source_crops = {source_crops} is not a fraction; use a value in [0, 1]")
        if not 0.0 <= brighten <= 1.0:
            raise ValueError(f"brighten = {brighten} is not a fraction; use a value in [0, 1]")
        if not max_factor >= 1.0:
            raise ValueError(f"brighten max_factor = {max_factor} is below 1; use a factor >= 1 (1: no change)")
        if not 0.0 <= thin_inputs <= 1.0:
            raise ValueError(f"thin_inputs = {thin_inputs} is not a fraction; use a value in [0, 1]")
        if not 0.0 < min_exposure_fraction <= 1.0:
            raise ValueError(f"thin_inputs min_exposure_fraction = {min_exposure_fraction} is not in (0, 1]; "
                             "use e.g. 0.25 (inputs down to a quarter of the set's exposure)")
        self.path, self.task, self.split, self.crop, self.augment = Path(path), task, split, crop, augment
        self.source_crops = float(source_crops) if crop is not None else 0.0
        self.with_expected = with_expected
        self.brighten = float(brighten) if crop is not None else 0.0
        self.log_max_factor = float(np.log(max_factor))
        self.thin_inputs = float(thin_inputs) if crop is not None else 0.0
        self.log_min_exposure_fraction = float(np.log(min_exposure_fraction))
        self.upscale = UPSCALE[task]
        self.pairs = pairs if (pairs is not None and crop is not None) else PairInjection()
        self.pairs.check()
        self._renderer: PairRenderer | None = None
        with open_dataset(self.path) as h5:
            if f"splits/{split}" not in h5:
                raise InputError(self.path, f"splits/{split}", "no such split", "use train, val or test")
            self.indices = np.asarray(h5[f"splits/{split}"][:], dtype=np.int64)
            if max_items is not None and len(self.indices) > max_items:  # evenly spread over the split
                self.indices = self.indices[np.linspace(0, len(self.indices) - 1, max_items).round().astype(int)]
            self.mask_1x = np.asarray(h5["mask_1x"][:], dtype=bool)
            self.masks = {1: self.mask_1x.astype(np.float32),
                          self.upscale: np.asarray(h5[TARGETS[task][2]][:], dtype=np.float32)}
            self.frame_shape = self.mask_1x.shape
            self.exposure_input = np.asarray(h5["exposure_lr"][:], dtype=np.float32)
            self.exposure_target = np.asarray(h5["exposure_target"][:], dtype=np.float32)
            self.input_exposure_s = float(h5.attrs["input_exposure_s"])
            self.target_exposure_s = float(h5.attrs["target_exposure_s"])
            if self.pairs.fraction > 0:
                self._renderer = _pair_renderer(h5, self.pairs)
        if crop is not None and (crop > min(self.frame_shape)):
            raise ValueError(f"train.crop = {crop} exceeds the frame {self.frame_shape}; use a smaller crop or null")
        self._active = np.argwhere(self.mask_1x)  # crop centres are drawn among active pixels
        # per sample of the split: cumulative source share over the active pixels (None: no source), and
        # the largest brightening that keeps the field's source count rate at the set's cap
        self._source_cdf: list[np.ndarray | None] = []
        self.max_brightening = np.ones(len(self.indices))
        if self.source_crops > 0 or self.brighten > 0:
            with open_dataset(self.path) as h5:   # each sample's expected and background read once for both
                cap = float(json.loads(h5.attrs["config"])["sources"]["extended"]["max_count_rate"])
                for i, sample in enumerate(self.indices):
                    expected, background = h5["expected_rate_1x"][sample], h5["background_rate_1x"][sample]
                    if self.source_crops > 0:
                        cdf = np.cumsum(source_share(expected, background)[self.mask_1x], dtype=np.float64)
                        self._source_cdf.append(cdf if cdf[-1] > 0 else None)
                    if self.brighten > 0:
                        rate = float(np.sum(expected - background, dtype=np.float64))
                        self.max_brightening[i] = max(1.0, cap / rate) if rate > 0 else 1.0
        self._h5: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self.indices)

    def _dataset(self, name: str) -> h5py.Dataset:
        if self._h5 is None or self._pid != os.getpid():  # one handle per worker process
            # a chunk is a whole frame: open datasets keep a cache of decompressed frames, so that
            # crops of recently read samples do not decompress them again
            self._h5 = h5py.File(self.path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES, rdcc_nslots=CHUNK_CACHE_SLOTS)
            self._datasets, self._pid = {}, os.getpid()
        if name not in self._datasets:
            self._datasets[name] = self._h5[name]
        return self._datasets[name]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5"], state["_datasets"], state["_pid"] = None, {}, -1
        return state

    def _crop_centre(self, position: int, rng: np.random.Generator) -> np.ndarray:
        """The (y, x) 1x pixel a crop of the sample at ``position`` is centred on."""
        if self.source_crops > 0 and rng.random() < self.source_crops:  # no extra draw when off
            cdf = self._source_cdf[position]
            if cdf is not None:
                return self._active[min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")),
                                        len(cdf) - 1)]
        return self._active[rng.integers(len(self._active))]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        position, draw_seed = (key, 0) if np.isscalar(key) else key
        sample = int(self.indices[int(position)])
        rng = np.random.default_rng(int(draw_seed))
        s = self.upscale
        target_name, expected_name, _ = TARGETS[self.task]
        if self.crop is None:
            y0, x0, size = 0, 0, None
        else:
            size = self.crop
            cy, cx = self._crop_centre(int(position), rng)
            y0 = int(np.clip(cy - size // 2, 0, self.frame_shape[0] - size))
            x0 = int(np.clip(cx - size // 2, 0, self.frame_shape[1] - size))
        def window(scale: int) -> tuple[slice, slice]:
            if size is None:
                return slice(None), slice(None)
            return slice(scale * y0, scale * (y0 + size)), slice(scale * x0, scale * (x0 + size))

        exposure_target = float(self.exposure_target[sample])
        factor = 1.0
        if self.brighten > 0 and rng.random() < self.brighten:  # no extra draw when off
            factor = min(float(np.exp(rng.uniform(0.0, self.log_max_factor))), self.max_brightening[position])
        if factor > 1.0:   # the brightened expected rates, each read and computed once
            rates = {scale: self._brightened_rate(sample, scale, window(scale), factor) for scale in {1, s}}
            arrays = {"input": rng.poisson(rates[1] * float(self.exposure_input[sample])).astype(np.float32),
                      "target": rng.poisson(rates[s] * exposure_target).astype(np.float32)}
        else:
            arrays = {"input": np.asarray(self._dataset("lr")[(sample, *window(1))], dtype=np.float32),
                      "target": np.asarray(self._dataset(target_name)[(sample, *window(s))], dtype=np.float32)}
        arrays.update({"mask_input": self.masks[1][window(1)], "mask_target": self.masks[s][window(s)]})
        if self.with_expected:
            expected = rates[s] if factor > 1.0 else self._dataset(expected_name)[(sample, *window(s))]
            arrays["expected"] = np.asarray(expected, dtype=np.float32) * exposure_target
        paired = self._renderer is not None and rng.random() < self.pairs.fraction   # no extra draw when off
        if paired:
            pair = self._renderer.draw(rng, (y0, x0), size, s)
            ratio = exposure_target / float(self.exposure_input[sample])   # target over input exposure
            counts = {r: pair.counts[r] * self.masks[r][window(r)] for r in pair.counts}   # at the input exposure
            arrays["input"] = arrays["input"] + rng.poisson(counts[1]).astype(np.float32)
            arrays["target"] = arrays["target"] + rng.poisson(counts[s] * ratio).astype(np.float32)
            if self.with_expected:
                arrays["expected"] = arrays["expected"] + (counts[s] * ratio).astype(np.float32)
        exposure_input = float(self.exposure_input[sample])
        if self.thin_inputs > 0 and rng.random() < self.thin_inputs:   # no extra draw when off
            kept = float(np.exp(rng.uniform(self.log_min_exposure_fraction, 0.0)))
            arrays["input"] = rng.binomial(arrays["input"].astype(np.int64), kept).astype(np.float32)
            exposure_input *= kept
        if self.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            for name, a in arrays.items():
                a = np.rot90(a, k)
                arrays[name] = np.ascontiguousarray(a[:, ::-1] if flip else a)
        item = {name: torch.from_numpy(np.ascontiguousarray(a))[None] for name, a in arrays.items()}
        item["exposure_input"] = torch.tensor(exposure_input, dtype=torch.float32)
        item["exposure_target"] = torch.tensor(exposure_target, dtype=torch.float32)
        item["index"] = torch.tensor(sample)
        item["origin"] = torch.tensor([y0, x0])  # 1x pixel of the crop corner (before augmentation)
        item["brightening"] = torch.tensor(factor, dtype=torch.float32)
        item["paired"] = torch.tensor(paired)
        return item

    def _brightened_rate(self, sample: int, scale: int, window: tuple[slice, slice], factor: float) -> np.ndarray:
        """Expected count rate of a window at ``scale`` with its sources (not its background) times ``factor``."""
        expected = np.asarray(self._dataset(f"expected_rate_{scale}x")[(sample, *window)], dtype=np.float64)
        background = np.asarray(self._dataset(f"background_rate_{scale}x")[(sample, *window)], dtype=np.float64)
        return background + factor * np.clip(expected - background, 0.0, None)


def _pair_renderer(h5: h5py.File, pairs: PairInjection) -> PairRenderer:
    """The pair renderer of an open training set: its own instrument and AGN spectrum, its padding."""
    cfg = json.loads(h5.attrs["config"])
    agn = cfg["sources"]["agn"]
    instrument = PnInstrument.from_config(cfg["instrument"])
    return PairRenderer(instrument, tuple(int(v) for v in h5.attrs["lr_offset"]), pairs, float(agn["gamma"]),
                        float(agn["nh"]))


class EpochSampler(Sampler):
    """``draws_per_rank`` (position, draw_seed) pairs per epoch and rank, seeded by (seed, epoch).

    Positions run through concatenated random permutations, so every sample is seen equally often.
    Under DDP each rank takes every ``world_size``-th draw of the same global sequence.
    """

    def __init__(self, n_samples: int, draws_per_rank: int, seed: int) -> None:
        if n_samples < 1:
            raise ValueError("the training split is empty; add sources or raise pack.split.train")
        self.n_samples, self.draws_per_rank, self.seed, self.epoch = n_samples, draws_per_rank, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _global(self, draws: int) -> list[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        reps = -(-draws // self.n_samples)
        positions = np.concatenate([rng.permutation(self.n_samples) for _ in range(reps)])[:draws]
        seeds = rng.integers(0, 2**62, size=draws)
        return list(zip(positions.tolist(), seeds.tolist()))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world = self._rank_world()
        return iter(self._global(self.draws_per_rank * world)[rank::world])

    def __len__(self) -> int:
        return self.draws_per_rank
