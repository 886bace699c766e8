"""Training of the DN and SR generators with Lightning: AdamW + warm-up/cosine schedule, gradient
clipping, AMP and ``torch.compile`` on CUDA, DDP over the GPUs of a node (also inside a one-task Slurm job),
resumable checkpoints every epoch (``steps_per_epoch`` optimizer steps), per-epoch validation history.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import metrics
from ..io import atomic_path
from ..errors import InputError
from .checkpoint import TrainedModel, load_model, save_model
from .data import EpochSampler, PairDataset, open_dataset
from .device import training_device
from .losses import loss_terms, masked_mean
from .model import Architecture, build_generator, count_parameters
from .normalise import Normalisation

HISTORY_FIELDS = ("epoch", "step", "lr", "train_loss", "val_loss", "val_l1", "val_psnr", "val_psnr_input",
                  "val_poisson_deviance", "val_poisson_deviance_input")
FINGERPRINT = "fingerprint.json"


def choose_precision(requested: str, accelerator: str) -> str:
    """``auto`` -> bf16 (or fp16) mixed precision on CUDA, full fp32 elsewhere."""
    if requested != "auto":
        return requested
    if accelerator == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def validation_metrics(pred: torch.Tensor, baseline_norm: torch.Tensor, target: torch.Tensor, mu: torch.Tensor,
                       baseline: torch.Tensor, counts: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Batch means of the evaluation metrics (:mod:`xmmsr.evaluate.metrics`) of the model and the input:
    masked PSNR in normalised space (data range of the target) and Poisson deviance on counts."""
    arrays = [t.detach().float().cpu().numpy()[:, 0] for t in (pred, baseline_norm, target, mu, baseline, counts, mask)]
    rows = []
    for p, b, t, m, bc, k, msk in zip(*arrays):
        valid = msk > 0
        rng = metrics.data_range(t, valid)
        rows.append({"val_psnr": metrics.masked_psnr(p, t, valid, rng),
                     "val_psnr_input": metrics.masked_psnr(b, t, valid, rng),
                     "val_poisson_deviance": metrics.poisson_deviance(m, k, valid),
                     "val_poisson_deviance_input": metrics.poisson_deviance(bc, k, valid)})
    return {name: float(np.mean([r[name] for r in rows])) for name in rows[0]}


class Restoration(pl.LightningModule):
    """The generator with its loss, optimizer, schedule and validation metrics."""

    def __init__(self, arch: Architecture, normalisation: Normalisation, loss_weights: dict[str, float],
                 lr: float, weight_decay: float, warmup_steps: int, total_steps: int, min_lr_fraction: float,
                 compile_model: bool = False) -> None:
        super().__init__()
        self.arch, self.norm, self.loss_weights = arch, normalisation, loss_weights
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps, self.min_lr_fraction = warmup_steps, total_steps, min_lr_fraction
        self.generator = build_generator(arch)
        if compile_model:
            self.generator.compile()
        self.history: list[dict[str, float]] = []
        self._val: dict[str, list[float]] = {}
        self._train_losses: list[float] = []
        self._tic = self._epoch_tic = time.perf_counter()
        self._epoch_samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x)

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        s = self.arch.upscale
        x = self.norm.forward(batch["input"], batch["exposure_input"], 1)
        target = self.norm.forward(batch["target"], batch["exposure_target"], s)
        pred = self.generator(x).float()
        mu = self.norm.inverse(pred, batch["exposure_target"], s)
        terms = loss_terms(self.loss_weights, pred, target, mu, batch["target"], batch["mask_target"])
        return terms, pred, target

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        terms, _, _ = self._step(batch)
        if not torch.isfinite(terms["loss"]):
            values = {k: float(v) for k, v in terms.items()}
            raise FloatingPointError(f"non-finite training loss at step {self.global_step} ({values}); lower "
                                     "train.lr, raise train.gradient_clip protection (smaller value) or the "
                                     "normalisation scale")
        for name, value in terms.items():
            self.log(f"train_{name}", value, prog_bar=name == "loss", batch_size=len(batch["input"]))
        self._train_losses.append(float(terms["loss"].detach()))
        elapsed = time.perf_counter() - self._tic
        self._tic = time.perf_counter()
        n = batch["input"].shape[0]
        self._epoch_samples += n
        self.log("samples_per_s", n / max(elapsed, 1e-9), prog_bar=True, batch_size=n)
        return terms["loss"]

    def on_train_epoch_start(self) -> None:
        self._tic = self._epoch_tic = time.perf_counter()
        self._epoch_samples = 0

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        terms, pred, target = self._step(batch)
        s = self.arch.upscale
        mask = batch["mask_target"]
        baseline = batch["input"] * (batch["exposure_target"] / batch["exposure_input"]).view(-1, 1, 1, 1) / s**2
        if s > 1:
            baseline = torch.repeat_interleave(torch.repeat_interleave(baseline, s, dim=-1), s, dim=-2)
        mu = self.norm.inverse(pred, batch["exposure_target"], s)
        baseline_norm = self.norm.forward(baseline, batch["exposure_target"], s)
        values = {"val_loss": float(terms["loss"]), "val_l1": float(masked_mean((pred - target).abs(), mask))}
        values.update(validation_metrics(pred, baseline_norm, target, mu, baseline, batch["target"], mask))
        for name, value in values.items():
            self.log(name, value, prog_bar=name in ("val_loss", "val_psnr"), sync_dist=True, batch_size=len(pred))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        metrics = self.trainer.callback_metrics
        row = {"epoch": self.current_epoch, "step": self.batches_done,
               "lr": self.trainer.optimizers[0].param_groups[0]["lr"],
               "train_loss": sum(self._train_losses) / max(len(self._train_losses), 1)}
        row.update({k: float(metrics[k]) for k in HISTORY_FIELDS if k in metrics and k not in row})
        self._train_losses = []
        self.history.append(row)
        if self.trainer.is_global_zero:  # throughput goes to the log only: no wall-clock time in outputs
            rate = self._epoch_samples / max(time.perf_counter() - self._epoch_tic, 1e-9)
            print("epoch {epoch} step {step}: train_loss {train_loss:.4f} val_loss {val_loss:.4f} "
                  "val_psnr {val_psnr:.2f} dB (input {val_psnr_input:.2f} dB)".format(**row)
                  + f", {rate:.1f} samples/s (incl. validation)", flush=True)

    @property
    def batches_done(self) -> int:
        """Optimizer steps of the generator so far."""
        return int(self.global_step)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.generator.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``min_lr_fraction`` at ``total_steps``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_fraction + (1 - self.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["xmmsr_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("xmmsr_history", []))


@dataclass(frozen=True)
class TrainingRun:
    """Everything one training job needs (built from the config by :func:`run_from_config`)."""

    task: str
    dataset: Path
    arch: Architecture
    normalisation: Normalisation
    train_cfg: dict[str, Any]
    seed: int
    checkpoint_dir: Path


def _fingerprint(run: TrainingRun, dataset_hash: str) -> dict[str, Any]:
    return {"task": run.task, "architecture": run.arch.to_dict(), "normalisation": run.normalisation.to_dict(),
            "train": {k: v for k, v in run.train_cfg.items() if k not in ("num_workers", "threads")},
            "seed": run.seed, "dataset_config_hash": dataset_hash}


def _prepare_checkpoints(run: TrainingRun, fingerprint: dict[str, Any]) -> Path | None:
    """The checkpoint to resume from, if one of this very run exists; stale checkpoints are removed."""
    ckpt_dir = run.checkpoint_dir
    stamp = ckpt_dir / FINGERPRINT
    if ckpt_dir.exists():
        try:
            same = json.loads(stamp.read_text()) == json.loads(json.dumps(fingerprint))
        except (OSError, ValueError):
            same = False
        if not same:
            print(f"checkpoints in {ckpt_dir} belong to another configuration: starting afresh", flush=True)
            shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(stamp) as tmp:
        tmp.write_text(json.dumps(fingerprint, sort_keys=True, indent=1))
    candidates = sorted(ckpt_dir.glob("epoch*.ckpt"), reverse=True)
    for path in ([ckpt_dir / "last.ckpt"] if (ckpt_dir / "last.ckpt").exists() else []) + candidates:
        try:
            torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception as exc:  # a checkpoint cut short by a kill: fall back to the previous one
            print(f"skipping unreadable checkpoint {path.name}: {exc.__class__.__name__}", flush=True)
            continue
        print(f"resuming from {path}", flush=True)
        return path
    return None


def train(run: TrainingRun, model_path: Path, history_path: Path, onnx_path: Path | None = None,
          threads: int = 0, callbacks: Sequence[pl.Callback] = ()) -> TrainedModel:
    """Train (or resume) one model; write the final model file, its ONNX export and the history CSV."""
    cfg = run.train_cfg
    if threads > 0:
        torch.set_num_threads(threads)
    with open_dataset(run.dataset) as h5:
        dataset_hash = str(h5.attrs["config_hash"])
        provenance = {"dataset": str(run.dataset.name), "dataset_config_hash": dataset_hash,
                      "dataset_software": str(h5.attrs["software"]), "seed": run.seed}
        input_exposure_s = float(h5.attrs["input_exposure_s"])
        target_exposure_s = float(h5.attrs["target_exposure_s"])
    resume = _prepare_checkpoints(run, _fingerprint(run, dataset_hash))

    accelerator = training_device(cfg["accelerator"])
    precision = choose_precision(cfg["precision"], accelerator)
    compile_model = cfg["compile"] == "on" or (cfg["compile"] == "auto" and accelerator == "cuda")
    pl.seed_everything(run.seed, workers=True, verbose=False)
    total_steps = cfg["epochs"] * cfg["steps_per_epoch"]
    module = Restoration(run.arch, run.normalisation, dict(cfg["loss"]), cfg["lr"], cfg["weight_decay"],
                         cfg["warmup_steps"], total_steps, cfg["min_lr_fraction"], compile_model)
    print(f"task {run.task}: {count_parameters(module.generator):,} parameters, accelerator {accelerator}, "
          f"precision {precision}, compile {compile_model}, {total_steps} steps", flush=True)

    train_set = PairDataset.training(run.dataset, run.task, cfg)
    val_set = PairDataset(run.dataset, run.task, "val")
    if len(val_set) == 0:
        raise ValueError(f"{run.dataset}: the val split is empty; raise pack.split.val or add sources")
    sampler = EpochSampler(len(train_set), cfg["steps_per_epoch"] * cfg["batch_size"], run.seed)
    workers = cfg["num_workers"]
    loader_opts: dict[str, Any] = {"num_workers": workers, "persistent_workers": workers > 0,
                                   "pin_memory": accelerator == "cuda"}
    train_loader = DataLoader(train_set, batch_size=cfg["batch_size"], sampler=sampler, drop_last=True, **loader_opts)
    val_loader = DataLoader(val_set, batch_size=1, shuffle=False, **loader_opts)

    trainer = resumable_trainer(run.checkpoint_dir, accelerator, cfg["devices"], precision, cfg["epochs"],
                                cfg["steps_per_epoch"], cfg["gradient_clip"], callbacks, sys.stderr.isatty())
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume)

    model = TrainedModel(generator=plain_generator(module.generator, run.arch), architecture=run.arch, normalisation=run.normalisation,
                         input_exposure_s=input_exposure_s, target_exposure_s=target_exposure_s,
                         train_config={"train": cfg, "model": {k: v for k, v in run.arch.to_dict().items()
                                                              if k not in ("task", "in_channels")}},
                         provenance={**provenance, "epochs": cfg["epochs"], "steps": int(trainer.global_step),
                                     "samples_seen": int(trainer.global_step) * cfg["batch_size"],
                                     "accelerator": accelerator, "devices": int(trainer.num_devices),
                                     "precision": precision})
    if trainer.is_global_zero:
        write_history(module.history, history_path)
        save_model(model_path, model)
        if onnx_path is not None:
            from .predict import export_onnx

            export_onnx(model, onnx_path)
    return model


def resumable_trainer(checkpoint_dir: Path, accelerator: str, devices: int, precision: str, epochs: int,
                      steps_per_epoch: int, gradient_clip: float | None, callbacks: Sequence[pl.Callback],
                      progress_bar: bool) -> pl.Trainer:
    """The Lightning trainer of training and fine-tuning: epochs of ``steps_per_epoch`` steps, a checkpoint
    after each (``epoch{NNNN}.ckpt`` and ``last.ckpt`` in ``checkpoint_dir``, what :func:`_prepare_checkpoints`
    resumes from), deterministic on the CPU, the cluster environment of :func:`cluster_plugins`."""
    checkpointing = pl.callbacks.ModelCheckpoint(
        dirpath=checkpoint_dir, filename="epoch{epoch:04d}", auto_insert_metric_name=False, save_last=True,
        monitor="step", mode="max", save_top_k=2, every_n_epochs=1, save_on_train_epoch_end=True)
    return pl.Trainer(
        accelerator=accelerator, devices=devices, precision=precision, max_epochs=epochs,
        limit_train_batches=steps_per_epoch, gradient_clip_val=gradient_clip or None,
        num_sanity_val_steps=0, deterministic=accelerator == "cpu", use_distributed_sampler=False,
        callbacks=[checkpointing, *callbacks], enable_progress_bar=progress_bar, enable_model_summary=False,
        logger=pl.loggers.CSVLogger(checkpoint_dir, name="logs", version=0), log_every_n_steps=1,
        default_root_dir=checkpoint_dir, plugins=cluster_plugins())


def cluster_plugins() -> list[Any]:
    """Lightning's cluster environment for this process.

    Snakemake runs a Slurm job as a single task (``srun -n1``); Lightning would take that task for the
    whole world and never start the other DDP ranks of a multi-GPU job, and its auto-requeue would
    resubmit the job behind Snakemake's back. In a one-task Slurm step Lightning therefore launches the
    ranks itself, and a job that times out is resubmitted by Snakemake (``retries``) and resumes from
    its last checkpoint. Multi-task steps (``srun -n N`` by hand) keep Slurm's environment, without
    auto-requeue.
    """
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    if not SLURMEnvironment.detect():
        return []
    if os.environ.get("SLURM_NTASKS", "1") == "1":
        return [LightningEnvironment()]
    return [SLURMEnvironment(auto_requeue=False)]


def plain_generator(trained: torch.nn.Module, arch: Architecture) -> torch.nn.Module:
    """A plain CPU copy of a trained generator (no torch.compile wrapper, no DDP), in eval mode."""
    generator = build_generator(arch)
    generator.load_state_dict({k: v.detach().cpu() for k, v in trained.state_dict().items()})
    return generator.eval()


def load_start_model(path: Path, task: str) -> TrainedModel:
    """The model a continued training (fine-tuning, adversarial) starts from, refused if of another task."""
    start = load_model(path)
    if start.task != task:
        raise InputError(path, "task", f"is {start.task!r}, not {task!r}", "start from a model of the task")
    return start


def weights_sum(generator: torch.nn.Module) -> float:
    """The sum of every weight (float64): identifies a starting model in a checkpoint fingerprint."""
    return float(sum(float(p.detach().double().sum()) for p in generator.parameters()))


def write_history(rows: list[dict[str, float]], path: Path, fields: Sequence[str] = HISTORY_FIELDS) -> None:
    """Per-epoch history as CSV with the columns ``fields`` (atomic)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def run_from_config(config: dict[str, Any], task: str, dataset: str | Path, checkpoint_dir: str | Path,
                    seed: int) -> TrainingRun:
    """A :class:`TrainingRun` from the validated config."""
    return TrainingRun(task=task, dataset=Path(dataset), arch=Architecture.from_config(task, config["model"]),
                       normalisation=Normalisation(**config["train"]["normalisation"]),
                       train_cfg=config["train"], seed=seed, checkpoint_dir=Path(checkpoint_dir))
