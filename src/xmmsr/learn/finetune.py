"""Fine-tuning on real pn images: simulated pairs (supervised) mixed with real thinned pairs
(self-supervised), validated on held-out real observations.

Real images are packed into their own HDF5 file (:func:`pack_real`, one group per observation with its
counts and per-pixel exposure, and its split). Every draw thins a crop of a real image binomially into an
input (``p`` of the counts, ``p = min(input_exposure / exposure, max_input_fraction)``) and the independent
remainder; a new thinning each epoch. The real loss is the Poisson likelihood of the remainder's counts
given the prediction: for DN the predicted rate times the remainder's exposure (Noise2Noise for counts);
for SR the 2x prediction forward-modelled to 1x first (the 2x->1x PSF kernel of the consistency check and
2x2 binning). Validation: whole held-out real images, thinned with a fixed seed, scored by the mean
Poisson deviance per pixel against the remainder (as ``xmmsr evaluate-real --image``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .. import __version__, metrics
from ..errors import InputError
from ..instrument.exposure import image_exposure
from ..instrument.geometry import PnGeometry
from ..io import atomic_path
from ..metrics import coverage_mask
from ..thinning import RealImage, ThinningPlan, binomial_split
from .checkpoint import TrainedModel, save_model
from .data import EpochSampler, PairDataset, open_dataset
from .device import training_device
from .losses import poisson_nll
from .predict import read_count_image
from .train import (Restoration, _prepare_checkpoints, choose_precision, load_start_model, plain_generator,
                    resumable_trainer, weights_sum, write_history)

REAL_FORMAT_VERSION = 3  # 2: exposure 0 in chip gaps and on dead pixels (the CCD layout); 3: real CCD edge strips
FINETUNE_HISTORY_FIELDS = ("epoch", "step", "lr", "train_loss", "train_sim_loss", "train_real_loss",
                           "val_real_deviance", "val_real_deviance_start")


def pack_real(images: list[RealImage], output: str | Path, geometry: PnGeometry | None = None) -> None:
    """Write the real images (counts, per-pixel exposure, split) to one HDF5 file, atomically. The exposure
    is :func:`~xmmsr.instrument.exposure.image_exposure`'s, with ``geometry``'s CCD layout (default: the
    default configuration's): 0 in chip gaps and on dead pixels, which fine-tuning then leaves out."""
    if not images:
        raise InputError(None, "real.images", "is empty", "list real pn count images to fine-tune on")
    with atomic_path(output) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["format_version"] = REAL_FORMAT_VERSION
        h5.attrs["software"] = f"xmmsr {__version__}"
        for image in images:
            counts, header, exposure_s = read_count_image(image.path)
            whole = np.rint(counts)
            if np.abs(counts - whole).max() > 1e-6:
                raise InputError(image.path, "pixel values", "are not integer counts",
                                 "give count images (events per pixel)")
            exposure = image_exposure(header, counts.shape, exposure_s, image.exposure_map, geometry, image.path)
            group = h5.create_group(f"images/{image.name}")
            group.create_dataset("counts", data=whole.astype(np.int32), compression="gzip")
            group.create_dataset("exposure", data=exposure.seconds.astype(np.float32), compression="gzip")
            group.attrs.update(split=image.split, source=image.path.name, exposure_source=exposure.source,
                               exposure_s=exposure.reference_s)


def real_data_digest(path: str | Path) -> str:
    """SHA-256 of a packed real-image file's content (format, and every image's name, split, counts and
    per-pixel exposure): what a fine-tuning checkpoint was trained on."""
    digest = hashlib.sha256()
    with h5py.File(path, "r") as h5:
        digest.update(str(h5.attrs.get("format_version")).encode())
        for name, group in sorted(h5["images"].items()):
            digest.update(f"{name}|{group.attrs['split']}|".encode())
            for key in ("counts", "exposure"):
                data = np.ascontiguousarray(group[key][:])
                digest.update(f"{key}{data.dtype.str}{data.shape}".encode())
                digest.update(data.tobytes())
    return digest.hexdigest()


class RealPairs(Dataset):
    """Thinned real pairs of one split: ``input`` and ``remainder`` counts (1, h, w), their per-pixel
    exposures ``exposure_input`` / ``exposure_remainder`` and ``mask``. Keys ``(position, draw_seed)``:
    the draw seed fixes the crop, the augmentation and the thinning. ``crop=None``: whole images."""

    def __init__(self, path: str | Path, split: str, plan: ThinningPlan, crop: int | None = None,
                 augment: bool = False) -> None:
        self.crop, self.augment, self.plan = crop, augment, plan
        self.items: list[dict[str, np.ndarray]] = []
        self.names: list[str] = []
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("format_version") != REAL_FORMAT_VERSION:
                raise InputError(path, "format_version", f"is {h5.attrs.get('format_version')!r}",
                                 "repack the real images with this xmmsr (rule pack_real)")
            for name, group in sorted(h5["images"].items()):
                if group.attrs["split"] != split:
                    continue
                counts, exposure = group["counts"][:], group["exposure"][:].astype(np.float64)
                reference = float(group.attrs["exposure_s"])
                mask = coverage_mask(counts, counts) & (exposure > 0.01 * reference)
                if crop is not None and min(counts.shape) < crop:
                    raise InputError(path, f"images/{name}", f"shape {counts.shape} is smaller than the crop {crop}",
                                     "lower real.finetune.crop")
                self.items.append({"counts": counts, "exposure": exposure, "mask": mask, "reference": reference,
                                   "active": np.argwhere(mask)})
                self.names.append(name)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        position, draw_seed = (key, 0) if np.isscalar(key) else key
        item = self.items[int(position)]
        rng = np.random.default_rng(int(draw_seed))
        counts, exposure, mask = item["counts"], item["exposure"], item["mask"]
        if self.crop is not None:
            cy, cx = item["active"][rng.integers(len(item["active"]))]
            y0 = int(np.clip(cy - self.crop // 2, 0, counts.shape[0] - self.crop))
            x0 = int(np.clip(cx - self.crop // 2, 0, counts.shape[1] - self.crop))
            window = (slice(y0, y0 + self.crop), slice(x0, x0 + self.crop))
            counts, exposure, mask = counts[window], exposure[window], mask[window]
        p = self.plan.fraction(item["reference"])
        a, b = binomial_split(counts, p, rng)
        # outside the footprint (chip gaps, dead pixels) the network sees zeros at the nominal exposure, as in
        # predict_counts and the simulated inputs, not a stray count divided by no exposure
        arrays = {"input": np.where(mask, a, 0), "remainder": b,
                  "exposure_input": np.where(mask, exposure, item["reference"]) * p,
                  "exposure_remainder": exposure * (1 - p), "mask": mask}
        if self.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            for name, arr in arrays.items():
                arr = np.rot90(arr, k)
                arrays[name] = arr[:, ::-1] if flip else arr
        return {name: torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None] for name, arr in arrays.items()}


def forward_to_1x(mu: torch.Tensor, kernel: torch.Tensor | None, upscale: int) -> torch.Tensor:
    """Expected counts per output pixel -> per 1x pixel: convolve with the 2x->1x kernel (zero padding,
    same size), sum s x s blocks. The convolution runs through FFTs: the kernel reaches the PSF's 5'
    (301 x 301 pixels at 2x), where a direct convolution costs seconds per crop."""
    if upscale == 1:
        return mu
    h = kernel.shape[-1] // 2
    padded = F.pad(mu, (h, h, h, h))
    size = padded.shape[-2:]
    spectrum = torch.fft.rfft2(padded, s=size) * torch.fft.rfft2(kernel.to(mu), s=size)
    blurred = torch.fft.irfft2(spectrum, s=size)[..., 2 * h:, 2 * h:]   # the wrap-free part: 'same' size
    return F.avg_pool2d(blurred, upscale) * upscale**2


class FineTuning(Restoration):
    """:class:`Restoration` continued on simulated and real thinned pairs."""

    def __init__(self, start: TrainedModel, loss_weights: dict[str, float], lr: float, weight_decay: float,
                 warmup_steps: int, total_steps: int, min_lr_fraction: float, real_weight: float,
                 kernel: np.ndarray | None) -> None:
        super().__init__(start.architecture, start.normalisation, loss_weights, lr, weight_decay, warmup_steps,
                         total_steps, min_lr_fraction)
        self.generator.load_state_dict(start.generator.state_dict())
        self.target_exposure_s = float(start.target_exposure_s)
        self.real_weight = real_weight
        self.register_buffer("kernel", torch.as_tensor(kernel, dtype=torch.float32) if kernel is not None
                             else torch.zeros(1, 1))
        self._sim_losses: list[float] = []
        self._real_losses: list[float] = []
        self._deviances: list[float] = []

    def remainder_mean(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The prediction turned into the remainder's expected counts per 1x pixel."""
        s = self.arch.upscale
        x = self.norm.forward(batch["input"], batch["exposure_input"], 1)
        mu = self.norm.inverse(self.generator(x).float(), self.target_exposure_s, s)
        return forward_to_1x(mu, self.kernel, s) * batch["exposure_remainder"] / self.target_exposure_s

    def training_step(self, batch: dict[str, dict[str, torch.Tensor]], batch_idx: int) -> torch.Tensor:
        sim_terms, _, _ = self._step(batch["sim"])
        real = batch["real"]
        real_loss = poisson_nll(self.remainder_mean(real), real["remainder"], real["mask"])
        loss = (1.0 - self.real_weight) * sim_terms["loss"] + self.real_weight * real_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite fine-tuning loss at step {self.global_step}; lower real.finetune.lr")
        self._sim_losses.append(float(sim_terms["loss"].detach()))
        self._real_losses.append(float(real_loss.detach()))
        self._train_losses.append(float(loss.detach()))
        self.log("train_loss", loss, prog_bar=True, batch_size=len(real["input"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        with torch.no_grad():
            mu = self.remainder_mean(batch)
        mask = batch["mask"][0, 0].cpu().numpy() > 0
        self._deviances.append(metrics.poisson_deviance(mu[0, 0].cpu().numpy(), batch["remainder"][0, 0].cpu().numpy(),
                                                        mask))

    def on_validation_epoch_end(self) -> None:
        deviance = float(np.mean(self._deviances)) if self._deviances else float("nan")
        self._deviances = []
        self.log("val_real_deviance", deviance)
        if self.trainer.sanity_checking:
            return
        row = {"epoch": self.current_epoch, "step": self.global_step,
               "lr": self.trainer.optimizers[0].param_groups[0]["lr"],
               "train_loss": float(np.mean(self._train_losses)) if self._train_losses else float("nan"),
               "train_sim_loss": float(np.mean(self._sim_losses)) if self._sim_losses else float("nan"),
               "train_real_loss": float(np.mean(self._real_losses)) if self._real_losses else float("nan"),
               "val_real_deviance": deviance}
        self._train_losses, self._sim_losses, self._real_losses = [], [], []
        self.history.append(row)
        if self.trainer.is_global_zero:
            print("epoch {epoch} step {step}: train_loss {train_loss:.4f} (sim {train_sim_loss:.4f}, real "
                  "{train_real_loss:.4f}) held-out real deviance {val_real_deviance:.4f}".format(**row), flush=True)


@dataclass(frozen=True)
class FinetuneRun:
    """Everything one fine-tuning job needs."""

    task: str
    start_model: Path
    dataset: Path
    real_dataset: Path
    train_cfg: dict[str, Any]       # the train section (losses, simulated crops, precision, ...)
    finetune_cfg: dict[str, Any]    # real.finetune
    plan: ThinningPlan
    seed: int
    checkpoint_dir: Path


def _start_deviance(start: TrainedModel, val: RealPairs, kernel: np.ndarray | None) -> float:
    """Held-out real deviance of the starting model (the line to beat)."""
    module = FineTuning(start, {"poisson": 1.0}, 1e-4, 0.0, 1, 1, 1.0, 1.0, kernel)
    values = []
    for i in range(len(val)):
        batch = {k: v[None] for k, v in val[(i, i)].items()}
        with torch.no_grad():
            mu = module.remainder_mean(batch)
        values.append(metrics.poisson_deviance(mu[0, 0].numpy(), batch["remainder"][0, 0].numpy(),
                                               batch["mask"][0, 0].numpy() > 0))
    return float(np.mean(values))


def finetune(run: FinetuneRun, model_path: Path, history_path: Path, kernel: np.ndarray | None = None,
             threads: int = 0, callbacks: Sequence[pl.Callback] = ()) -> TrainedModel:
    """Fine-tune (or resume) one model; write the model file and the history CSV."""
    cfg, ft = run.train_cfg, run.finetune_cfg
    if threads > 0:
        torch.set_num_threads(threads)
    start = load_start_model(run.start_model, run.task)
    with open_dataset(run.dataset) as h5:
        dataset_hash = str(h5.attrs["config_hash"])
    # checkpoints of another start, other settings or other data (simulated or real) are not resumed
    fingerprint = {"task": run.task, "start": str(run.start_model.name), "finetune": ft, "seed": run.seed,
                   "plan": [run.plan.input_exposure_s, run.plan.max_input_fraction],
                   "start_weights": weights_sum(start.generator),
                   "train": {k: v for k, v in cfg.items() if k not in ("num_workers", "threads")},
                   "dataset_config_hash": dataset_hash, "real_data": real_data_digest(run.real_dataset)}
    resume = _prepare_checkpoints(run, fingerprint)  # type: ignore[arg-type]
    accelerator = training_device(cfg["accelerator"])
    precision = choose_precision(cfg["precision"], accelerator)
    pl.seed_everything(run.seed, workers=True, verbose=False)
    total = ft["epochs"] * ft["steps_per_epoch"]
    module = FineTuning(start, dict(cfg["loss"]), ft["lr"], cfg["weight_decay"], ft["warmup_steps"], total,
                        cfg["min_lr_fraction"], ft["real_weight"], kernel)
    sim = PairDataset.training(run.dataset, run.task, cfg)
    real = RealPairs(run.real_dataset, "train", run.plan, crop=ft["crop"], augment=True)
    val = RealPairs(run.real_dataset, "val", run.plan)
    for name, dataset in (("train", real), ("val", val)):
        if len(dataset) == 0:
            raise InputError(run.real_dataset, f"real {name} split", "is empty",
                             f"mark at least one real image with split: {name}")
    draws = ft["steps_per_epoch"] * ft["batch_size"]
    loaders = {"sim": DataLoader(sim, batch_size=ft["batch_size"], drop_last=True,
                                 sampler=EpochSampler(len(sim), draws, run.seed)),
               "real": DataLoader(real, batch_size=ft["batch_size"], drop_last=True,
                                  sampler=EpochSampler(len(real), draws, run.seed + 1))}
    val_loader = DataLoader(val, batch_size=1, sampler=[(i, run.seed + i) for i in range(len(val))])
    start_deviance = _start_deviance(start, val, kernel)
    print(f"fine-tuning {run.task} from {run.start_model.name}: {len(real)} real training images, {len(val)} "
          f"held-out; held-out real deviance at the start {start_deviance:.4f}", flush=True)
    trainer = resumable_trainer(run.checkpoint_dir, accelerator, 1, precision, ft["epochs"], ft["steps_per_epoch"],
                                cfg["gradient_clip"], callbacks, False)
    trainer.fit(module, loaders, val_loader, ckpt_path=resume)
    model = TrainedModel(generator=plain_generator(module.generator, start.architecture), architecture=start.architecture, normalisation=start.normalisation,
                         input_exposure_s=start.input_exposure_s, target_exposure_s=start.target_exposure_s,
                         train_config={**start.train_config, "finetune": ft},
                         provenance={**start.provenance, "finetuned_from": run.start_model.name,
                                     "finetune_real_images": {n: s for s, names in (("train", real.names),
                                                                                    ("val", val.names)) for n in names},
                                     "finetune_steps": int(trainer.global_step), "finetune_seed": run.seed})
    rows = [{**row, "val_real_deviance_start": start_deviance} for row in module.history]
    write_history(rows, history_path, FINETUNE_HISTORY_FIELDS)
    save_model(model_path, model)
    return model
